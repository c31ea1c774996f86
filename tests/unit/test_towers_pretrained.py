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


def test_minilm_under_onnx_runtime_gives_the_torch_features(model) -> None:
    from mm_opensearch.towers.onnx_text import OnnxTextEncoder

    sentences = ["Palm Tree girls white printed skirt", "men black leather formal shoes", "kurta"]
    encoder = model.query_encoder()
    assert isinstance(encoder, OnnxTextEncoder)
    np.testing.assert_allclose(encoder.features(sentences).numpy(), model.text_backbone.features(sentences).numpy(), atol=1e-5)
    exported = encoder.path.stat().st_mtime_ns
    again = OnnxTextEncoder.for_backbone(model.text_backbone, model.settings.cache_dir)
    assert again is not None and again.path.stat().st_mtime_ns == exported  # reused, not re-exported

    encoder.path.write_bytes(b"not an onnx graph")  # a damaged cache file is exported again
    repaired = OnnxTextEncoder.for_backbone(model.text_backbone, model.settings.cache_dir)
    assert repaired is not None and repaired.path.stat().st_size > 1_000_000


def test_a_failed_export_leaves_query_encoding_to_torch(model, tmp_path, monkeypatch, caplog) -> None:
    import torch

    from mm_opensearch.towers.onnx_text import OnnxTextEncoder

    def refuse(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    assert OnnxTextEncoder.for_backbone(model.text_backbone, tmp_path) is None
    assert "unsupported operator" in caplog.text and "encoding with PyTorch" in caplog.text
    assert not list(tmp_path.rglob("*.onnx*"))  # no half-written export left behind


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
