"""The product tower on ONNX Runtime: export of the tiny towers, vectors vs PyTorch, cache keys, decode pool."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mm_opensearch.config import Settings
from mm_opensearch.towers import ModelConfig, MultimodalModel, ProductInput
from mm_opensearch.towers.fusion import FUSIONS
from mm_opensearch.towers.onnx_product import (
    FLOAT_MIN_COSINE,
    INT8_MIN_COSINE,
    build_onnx_product_tower,
    product_graph_key,
)


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(cache_dir=tmp_path / "cache", torch_threads=None, **overrides)


def _model(settings: Settings, **overrides: object) -> MultimodalModel:
    return MultimodalModel.from_config(ModelConfig.tiny(**overrides), settings=settings, device="cpu",
                                       use_feature_cache=False)


@pytest.fixture
def catalog(tmp_path: Path) -> list[ProductInput]:
    products = []
    rng = np.random.default_rng(0)
    for j in range(6):
        path = tmp_path / f"p{j}.jpg"
        Image.fromarray(rng.integers(0, 255, (40 + 4 * j, 36, 3), dtype=np.uint8)).save(path, quality=90)
        products.append(ProductInput(f"p{j}", f"product {j} cotton shirt size {j}" if j != 4 else None, str(path)))
    products.append(ProductInput("text-only", "blue denim jeans", None))
    products.append(ProductInput("broken", "a shirt", str(tmp_path / "missing.jpg")))
    return products


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_onnx_product_vectors_match_pytorch_on_fixed_images_and_texts(tmp_path, catalog, fusion) -> None:
    torch_out = _model(_settings(tmp_path), fusion=fusion).encode_products(
        catalog, image_roots=[tmp_path], with_modalities=True)
    model = _model(_settings(tmp_path, product_runtime="onnx"), fusion=fusion)
    assert model.product_tower().runtime == "onnx"  # exported, not silently PyTorch
    onnx_out = model.encode_products(catalog, image_roots=[tmp_path], with_modalities=True)
    ok = torch_out.has_vector
    assert onnx_out.errors == torch_out.errors and onnx_out.errors[-1] and (onnx_out.has_vector == ok).all()
    assert _cosines(onnx_out.fused[ok], torch_out.fused[ok]).min() >= FLOAT_MIN_COSINE
    rows = torch_out.has_image
    assert _cosines(onnx_out.image[rows], torch_out.image[rows]).min() >= FLOAT_MIN_COSINE
    assert not onnx_out.has_image[-1] and onnx_out.has_text[-1]  # the broken image fell back to its text


def test_int8_product_tower_is_opt_in_and_cosine_close(tmp_path, catalog) -> None:
    torch_out = _model(_settings(tmp_path)).encode_products(catalog, image_roots=[tmp_path])
    model = _model(_settings(tmp_path, product_runtime="onnx-int8"))
    assert model.product_tower().runtime == "onnx-int8"
    out = model.encode_products(catalog, image_roots=[tmp_path])
    ok = torch_out.has_vector
    assert _cosines(out.fused[ok], torch_out.fused[ok]).min() >= INT8_MIN_COSINE
    assert any(p.name.endswith("-int8.onnx") for p in (tmp_path / "cache" / "onnx").iterdir())


def test_graphs_are_exported_once_per_model_and_reused(tmp_path) -> None:
    settings = _settings(tmp_path, product_runtime="onnx")
    model = _model(settings)
    assert model.product_tower() is model.product_tower()
    files = sorted((tmp_path / "cache" / "onnx").glob("product-*.onnx"))
    assert [f.name.rsplit("-", 1)[1] for f in files] == ["heads.onnx", "image.onnx", "text.onnx"]
    stamps = [f.stat().st_mtime_ns for f in files]
    assert build_onnx_product_tower(_model(settings)) is not None  # a new process: the cache is read
    assert [f.stat().st_mtime_ns for f in files] == stamps
    other = _model(settings, seed=1)  # other heads: another model id, other graphs
    other.product_tower()
    assert len(list((tmp_path / "cache" / "onnx").glob("product-*.onnx"))) == 6


def test_a_damaged_cached_graph_is_exported_again(tmp_path) -> None:
    settings = _settings(tmp_path, product_runtime="onnx")
    _model(settings).product_tower()
    image_graph = next((tmp_path / "cache" / "onnx").glob("product-*-image.onnx"))
    image_graph.write_bytes(b"not a graph")
    assert _model(settings).product_tower().runtime == "onnx"
    assert image_graph.stat().st_size > 100


def test_graph_key_changes_with_model_id_extractor_and_opset() -> None:
    key = product_graph_key("mmos-aaaa", "minilm-1+efficientnet-lite0-2")
    assert product_graph_key("mmos-aaaa", "minilm-1+efficientnet-lite0-2") == key
    assert product_graph_key("mmos-bbbb", "minilm-1+efficientnet-lite0-2") != key
    assert product_graph_key("mmos-aaaa", "minilm-1+efficientnet-lite0-colour-3") != key
    assert product_graph_key("mmos-aaaa", "minilm-1+efficientnet-lite0-2", opset=18) != key


def test_a_tower_that_fails_its_check_leaves_pytorch_in_charge(tmp_path, monkeypatch, caplog) -> None:
    from mm_opensearch.towers import onnx_product

    monkeypatch.setattr(onnx_product, "FLOAT_MIN_COSINE", 1.01)  # no export can pass this
    model = _model(_settings(tmp_path, product_runtime="onnx"))
    with caplog.at_level(logging.WARNING, logger="mm_opensearch.towers.onnx_product"):
        assert model.product_tower().runtime == "torch"
    assert "encoding with PyTorch" in caplog.text


def test_decode_processes_give_the_vectors_and_errors_of_decode_threads(tmp_path, catalog) -> None:
    threads = _model(_settings(tmp_path)).encode_products(catalog, image_roots=[tmp_path])
    model = _model(_settings(tmp_path, decode_processes=2))
    try:
        processes = model.encode_products(catalog, image_roots=[tmp_path])
        assert model.decode_pool is not None and model.decode_pool._pool is not None  # the children decoded
    finally:
        model.decode_pool.close()
    assert processes.errors == threads.errors
    np.testing.assert_allclose(processes.fused, threads.fused, atol=1e-6)


def test_each_runtime_fills_a_feature_cache_of_its_own(tmp_path, catalog) -> None:
    """ONNX rows differ from PyTorch's in the last bits: a shared cache would depend on who came first."""
    settings = _settings(tmp_path)
    torch_model = MultimodalModel.from_config(ModelConfig.tiny(), settings=settings, device="cpu")
    torch_model.encode_products(catalog, image_roots=[tmp_path])
    onnx_model = MultimodalModel.from_config(ModelConfig.tiny(), settings=_settings(tmp_path, product_runtime="onnx"),
                                             device="cpu")
    tower = onnx_model.product_tower()
    assert tower.runtime == "onnx"
    onnx_model.encode_products(catalog, image_roots=[tmp_path])
    caches = {p.name for p in (settings.cache_dir / "features").iterdir()}
    text_id, image_id = torch_model.text_backbone.backbone_id, torch_model.image_backbone.backbone_id
    assert {text_id, image_id, f"{text_id}-onnx", f"{image_id}-onnx"} <= caches
    assert tower.text.cache_id == f"{text_id}-onnx"
