"""Training data: the features of every product and query, the labelled pairs, the dev slice."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mm_opensearch.catalog import Product
from mm_opensearch.judgments import JudgedQuery

__all__ = ["FeatureTable", "TrainingData", "build_training_data", "feature_table", "split_dev"]


@dataclass
class FeatureTable:
    """Backbone features of products (rows) with per-modality presence masks."""

    ids: list[str]
    text: torch.Tensor  # (n, text_dim)
    image: torch.Tensor  # (n, image_dim)
    tokens: torch.Tensor  # (n, k, image_dim)
    has_text: torch.Tensor  # (n,) bool
    has_image: torch.Tensor  # (n,) bool

    def rows(self, index: torch.Tensor, *, text_only: bool = False) -> tuple[torch.Tensor, ...]:
        has_image = torch.zeros_like(self.has_image[index]) if text_only else self.has_image[index]
        return self.text[index], self.image[index], self.tokens[index], self.has_text[index], has_image


@dataclass
class TrainingData:
    products: FeatureTable
    query_ids: list[str]
    query_features: torch.Tensor  # (m, query_dim)
    pairs: torch.Tensor  # (p, 2): query row, product row of a grade-2 label
    relevant: list[set[int]]  # per query row: product rows labelled relevant (any grade)
    query_texts: list[str] = field(default_factory=list)  # what a fine-tuned query encoder reads


def split_dev(queries: Sequence[JudgedQuery], fraction: float, seed: int) -> tuple[list[JudgedQuery], list[JudgedQuery]]:
    """Carve a dev slice out of the training queries (seeded), so early stopping never reads val."""
    order = np.random.default_rng(seed).permutation(len(queries))
    n_dev = max(1, round(len(queries) * fraction)) if fraction > 0 else 0
    dev = {int(i) for i in order[:n_dev]}
    return [q for i, q in enumerate(queries) if i not in dev], [q for i, q in enumerate(queries) if i in dev]


def build_training_data(
    products: FeatureTable,
    queries: Sequence[JudgedQuery],
    qrels: Mapping[str, Mapping[str, int]],
    encode_queries: Callable[[list[str]], np.ndarray],
    *,
    min_positive_grade: int = 2,
) -> TrainingData:
    """Pairs (query, product) of the labels whose product is in ``products``."""
    row_of = {pid: i for i, pid in enumerate(products.ids)}
    kept = [q for q in queries if any(pid in row_of for pid in qrels.get(q.id, {}))]
    features = torch.as_tensor(encode_queries([q.text for q in kept]), dtype=torch.float32)
    pairs: list[tuple[int, int]] = []
    relevant: list[set[int]] = []
    for qrow, query in enumerate(kept):
        labels = {row_of[p]: g for p, g in qrels.get(query.id, {}).items() if p in row_of}
        relevant.append({r for r, g in labels.items() if g > 0})
        pairs += [(qrow, r) for r, g in labels.items() if g >= min_positive_grade]
    return TrainingData(
        products=products,
        query_ids=[q.id for q in kept],
        query_features=features,
        pairs=torch.as_tensor(pairs, dtype=torch.long).reshape(-1, 2),
        relevant=relevant,
        query_texts=[q.text for q in kept],
    )


def feature_table(  # noqa: ANN001 - model is a MultimodalModel
    model, products: Sequence[Product], *, image_roots: Sequence[Path] = ()
) -> FeatureTable:
    """Cached backbone features of ``products``, as the tower sees them when it encodes.

    Local image paths load only inside ``image_roots`` (the catalog's folder, ``MMOS_IMAGE_ROOTS``).
    """
    features = model.product_features(products, image_roots=image_roots)
    return FeatureTable(
        ids=[p.id for p in products],
        text=torch.from_numpy(features.text),
        image=torch.from_numpy(features.image),
        tokens=torch.from_numpy(features.tokens),
        has_text=torch.from_numpy(features.has_text),
        has_image=torch.from_numpy(features.has_image),
    )
