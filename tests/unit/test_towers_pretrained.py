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


def _torch_query_vectors(model: MultimodalModel, texts: list[str]) -> np.ndarray:
    with model.evaluating():
        return model.query_vectors_from_features(model.query_backbone.features(texts)).numpy()


def test_the_query_tower_under_onnx_runtime_gives_the_torch_vectors(model) -> None:
    import torch

    from mm_opensearch.towers.onnx_text import OnnxTextEncoder

    queries = ["Palm Tree girls white printed skirt", "men black leather formal shoes", "kurta"]
    encoder = model.query_encoder()
    assert isinstance(encoder, OnnxTextEncoder) and model.model_id in encoder.path.name
    np.testing.assert_allclose(model.encode_queries(queries), _torch_query_vectors(model, queries), atol=1e-5)
    assert model.query_encoder() is encoder  # built once per model id

    exported = encoder.path.stat().st_mtime_ns
    model.query_runtime.reset()  # a new process: the cached export is reused, not made again
    assert model.query_encoder().path.stat().st_mtime_ns == exported

    encoder.path.write_bytes(b"not an onnx graph")  # a damaged cache file is exported again
    model.query_runtime.reset()
    assert isinstance(model.query_encoder(), OnnxTextEncoder) and encoder.path.stat().st_size > 1_000_000

    before = model.encode_queries(queries)
    bias = model.heads["query"].head.net[-1].bias
    with torch.no_grad():  # new head weights are a new model: never served from the old graph or cache
        bias.add_(0.01)
    try:
        after = model.encode_queries(queries)
        assert model.query_encoder().path != encoder.path
        assert not np.allclose(after, before, atol=1e-4)
        np.testing.assert_allclose(after, _torch_query_vectors(model, queries), atol=1e-5)
    finally:
        with torch.no_grad():
            bias.sub_(0.01)


def test_a_failed_export_leaves_query_encoding_to_torch(model, tmp_path, monkeypatch, caplog) -> None:
    import torch

    from mm_opensearch.towers.onnx_text import OnnxTextEncoder, QueryTowerGraph

    def refuse(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    graph = QueryTowerGraph(model.query_backbone.module(), model.heads["query"])
    built = OnnxTextEncoder.build(graph, model.query_backbone, path=tmp_path / "tower.onnx", dim=model.dim,
                                  reference=lambda texts: torch.from_numpy(_torch_query_vectors(model, texts)))
    assert built is None
    assert "unsupported operator" in caplog.text and "encoding with PyTorch" in caplog.text
    assert not list(tmp_path.rglob("*.onnx*"))  # no half-written export left behind


def test_the_int8_runtime_encodes_close_to_torch_and_falls_back_when_it_is_not(
    model, tmp_path, monkeypatch, caplog
) -> None:
    import torch

    from mm_opensearch.towers import onnx_text
    from mm_opensearch.towers.onnx_text import OnnxTextEncoder, QueryTowerGraph

    queries = ["Palm Tree girls white printed skirt", "men black leather formal shoes", "kurta", "blue jeans"]
    graph = QueryTowerGraph(model.query_backbone.module(), model.heads["query"])
    reference = lambda texts: torch.from_numpy(_torch_query_vectors(model, texts))  # noqa: E731
    with model.evaluating():
        int8 = OnnxTextEncoder.build(graph, model.query_backbone, path=tmp_path / "tower.onnx", dim=model.dim,
                                     reference=reference, quantized=True)
        assert int8 is not None and int8.path.name == "tower-int8.onnx"
        assert int8.path.stat().st_size < 0.75 * (tmp_path / "tower.onnx").stat().st_size  # int8 weights
        got, expected = int8.features(queries).numpy(), _torch_query_vectors(model, queries)
        assert not np.allclose(got, expected, atol=1e-4)  # a quantized graph, not the float one
        assert (np.sum(got * expected, axis=1) > 0.97).all()  # yet close: the vectors are unit length

        monkeypatch.setattr(onnx_text, "_INT8_MIN_COSINE", 1.01)  # a graph that quantized badly
        assert OnnxTextEncoder.build(graph, model.query_backbone, path=tmp_path / "tower.onnx", dim=model.dim,
                                     reference=reference, quantized=True) is None
    assert "cosine-close to PyTorch" in caplog.text and "encoding with PyTorch" in caplog.text


def test_five_catalog_products_encode_with_the_default_backbones(model, myntra_dir: Path) -> None:
    products = []
    with gzip.open(myntra_dir / "products.jsonl.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            products.append(ProductInput(row["id"], f"{row['title']} {row['brand']}", str(myntra_dir / row["image"])))
            if len(products) == 5:
                break
    out = model.encode_products(products, with_modalities=True, image_roots=[myntra_dir])
    assert out.errors == [None] * 5 and out.has_image.all()
    assert out.fused.shape == (5, 256) and np.isfinite(out.fused).all()
    np.testing.assert_allclose(np.linalg.norm(out.fused, axis=1), 1.0, atol=1e-5)
    image = model.image_features([products[0].image], image_roots=[myntra_dir])
    assert image.pooled.shape == (1, 1280) and image.tokens.shape == (1, 9, 1280)
    assert float(np.abs(image.pooled).sum()) > 0
    # a second pass is answered by the feature cache and gives the same vectors
    np.testing.assert_array_equal(model.encode_products(products, image_roots=[myntra_dir]).fused, out.fused)


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in (Path(__file__).parents[2] / "models").glob("*/config.json")))
def test_every_committed_model_loads_with_the_id_its_config_records(folder: str, tmp_path: Path) -> None:
    # Indices record model ids: an option added to the config must not change the id of a model
    # trained before it (it did once: every committed model failed to load).
    path = Path(__file__).parents[2] / "models" / folder
    recorded = json.loads((path / "config.json").read_text())["model_id"]
    loaded = MultimodalModel.load(path, settings=Settings(cache_dir=tmp_path / "cache"), use_feature_cache=False)
    assert loaded.model_id == recorded
