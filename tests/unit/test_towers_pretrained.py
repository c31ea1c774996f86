"""The default backbones with their real weights, on a handful of catalog products (slow)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from mm_opensearch.config import Settings
from mm_opensearch.towers import ModelConfig, MultimodalModel, ProductInput
from mm_opensearch.towers.backbones import minilm_folder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> MultimodalModel:
    settings = Settings(cache_dir=tmp_path_factory.mktemp("cache"), torch_threads=None)
    return MultimodalModel.from_config(ModelConfig(), settings=settings, device="cpu")


def test_minilm_features_equal_sentence_transformers_output(model) -> None:
    from sentence_transformers import SentenceTransformer

    sentences = ["Palm Tree girls white printed skirt", "men black leather formal shoes"]
    reference = SentenceTransformer(str(minilm_folder()), device="cpu").encode(sentences)
    ours = model.text_backbone.features(sentences).numpy()
    assert ours.shape == (2, 384)
    np.testing.assert_allclose(ours, reference, atol=1e-4)


def test_minilm_in_bfloat16_gives_the_float32_features_to_rounding(model) -> None:
    import torch

    sentences = ["Palm Tree girls white printed skirt", "men black leather formal shoes", "kurta"]
    full = model.text_backbone.features(sentences).numpy()
    half = model.text_backbone.with_dtype(torch.bfloat16).features(sentences).numpy()
    assert model.text_backbone.dtype == torch.float32  # the copy did not cast the original
    cosine = (full * half).sum(axis=1) / np.linalg.norm(full, axis=1) / np.linalg.norm(half, axis=1)
    assert cosine.min() > 0.999


def test_five_catalog_products_encode_with_the_default_backbones(model, myntra_dir: Path) -> None:
    products = []
    with gzip.open(myntra_dir / "products.jsonl.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            products.append(ProductInput(row["id"], f"{row['title']} {row['brand']}", str(myntra_dir / row["image"])))
            if len(products) == 5:
                break
    out = model.encode_products(products, with_modalities=True)
    assert out.errors == [None] * 5 and out.has_image.all()
    assert out.fused.shape == (5, 256) and np.isfinite(out.fused).all()
    np.testing.assert_allclose(np.linalg.norm(out.fused, axis=1), 1.0, atol=1e-5)
    image = model.image_features([products[0].image])
    assert image.pooled.shape == (1, 1280) and image.tokens.shape == (1, 9, 1280)
    assert float(np.abs(image.pooled).sum()) > 0
    # a second pass is answered by the feature cache and gives the same vectors
    np.testing.assert_array_equal(model.encode_products(products).fused, out.fused)
