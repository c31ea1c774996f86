"""The untrained text encoder as a tower: the ``dense_text_zeroshot`` baseline.

It embeds queries and product texts with the raw backbone (mean-pooled MiniLM), so evaluation can
index and search it through the same indexing and hybrid modules as the trained towers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mm_opensearch.towers import EncoderInput, MultimodalModel
from mm_opensearch.towers.model import ProductEncoding

__all__ = ["ZeroShotTextTower"]


def _normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)).astype(np.float32)


class ZeroShotTextTower:
    """Backbone text features, L2-normalised, for both products and queries (no trained head)."""

    def __init__(self, model: MultimodalModel) -> None:
        self._model = model
        self.model_id = f"zeroshot-{model.text_backbone.backbone_id}"
        self.dim = model.text_backbone.dim

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return _normalize(self._model.query_text_features(list(texts)))

    def encode_products(
        self, products: Sequence[EncoderInput], *, with_modalities: bool = False, image_roots: Sequence[Path] = ()
    ) -> ProductEncoding:
        """Text only: ``image_roots`` is accepted as every tower's is, and no image is read."""
        has_text = np.array([bool(p.text) for p in products])
        fused = np.full((len(products), self.dim), np.nan, dtype=np.float32)
        if has_text.any():
            fused[has_text] = _normalize(self._model.product_text_features([p.text for p in products if p.text]))
        errors = [None if ok else "no_text: the zero-shot text baseline needs product text" for ok in has_text]
        return ProductEncoding(ids=[p.id for p in products], fused=fused, text=None, image=None, errors=errors,
                               has_text=has_text, has_image=np.zeros(len(products), dtype=bool))
