"""The on-disk feature cache: round trip, only misses computed, shared across processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mm_opensearch.config import Settings
from mm_opensearch.towers import FeatureCache, ModelConfig, MultimodalModel, ProductInput
from mm_opensearch.towers.feature_cache import as_cached_precision, get_or_compute


def test_put_then_get_round_trips_shapes_and_float16_values(tmp_path) -> None:
    cache = FeatureCache(tmp_path, "backbone-x")
    rng = np.random.default_rng(0)
    items = {"a": rng.normal(size=(1, 8)).astype(np.float32), "b": rng.normal(size=(5, 8)).astype(np.float32)}
    cache.put_many(items)
    got = cache.get_many(["a", "b", "absent"])
    assert set(got) == {"a", "b"} and got["b"].shape == (5, 8) and got["a"].dtype == np.float32
    for key, value in items.items():
        assert np.array_equal(got[key], as_cached_precision(value))
    assert cache.path == tmp_path / "features" / "backbone-x" / "features-v2.sqlite"
    assert len(cache) == 2


def test_only_misses_are_computed_and_results_do_not_depend_on_hits(tmp_path) -> None:
    cache = FeatureCache(tmp_path, "backbone-x")
    asked: list[list[str]] = []

    def compute(keys):
        asked.append(list(keys))
        yield {key: np.full((1, 3), float(len(key)) + 0.1234567, dtype=np.float32) for key in keys}

    cold = get_or_compute(["aa", "b", "aa"], cache, compute)
    warm = get_or_compute(["b", "ccc", "aa"], cache, compute)
    assert asked == [["aa", "b"], ["ccc"]]
    assert np.array_equal(cold["aa"], warm["aa"]) and np.array_equal(cold["b"], warm["b"])
    uncached = get_or_compute(["aa"], None, compute)
    assert np.array_equal(uncached["aa"], warm["aa"])  # same rounding with or without a cache


def test_keys_a_compute_leaves_out_are_absent_and_not_stored(tmp_path) -> None:
    cache = FeatureCache(tmp_path, "backbone-x")
    found = get_or_compute(["ok", "failed"], cache, lambda keys: iter([{"ok": np.ones((1, 2))}]))
    assert set(found) == {"ok"} and set(cache.get_many(["ok", "failed"])) == {"ok"}


def test_another_process_sees_and_extends_the_same_cache(tmp_path) -> None:
    FeatureCache(tmp_path, "shared").put_many({"from-parent": np.ones((1, 4))})
    script = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from mm_opensearch.towers.feature_cache import FeatureCache\n"
        "c = FeatureCache(Path(sys.argv[1]), 'shared')\n"
        "assert 'from-parent' in c.get_many(['from-parent'])\n"
        "c.put_many({'from-child': np.zeros((2, 4))})\n"
    )
    repo = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, cwd=repo, env={"PYTHONPATH": str(repo)})
    assert FeatureCache(tmp_path, "shared").get_many(["from-child"])["from-child"].shape == (2, 4)


def test_encoding_twice_runs_the_backbones_only_for_new_inputs(tmp_path, monkeypatch) -> None:
    settings = Settings(cache_dir=tmp_path / "cache")
    image = tmp_path / "red.jpg"
    Image.new("RGB", (40, 40), (200, 0, 0)).save(image)
    copy = tmp_path / "copy-of-red.jpg"
    copy.write_bytes(image.read_bytes())
    model = MultimodalModel.from_config(ModelConfig.tiny(), settings=settings)
    seen: dict[str, int] = {"text": 0, "image": 0}
    text_features, image_features = model.text_backbone.fixed_shape_features, model.image_backbone.features

    def count_text(texts):
        seen["text"] += len(texts)
        return text_features(texts)

    def count_image(batch):
        seen["image"] += int(batch.flatten(1).any(dim=1).sum())  # not the black rows that fill a fixed shape
        return image_features(batch)

    monkeypatch.setattr(model.text_backbone, "fixed_shape_features", count_text)
    monkeypatch.setattr(model.image_backbone, "features", count_image)
    first = model.encode_products([ProductInput("1", "red shirt", str(image))], image_roots=[tmp_path])
    assert seen == {"text": 1, "image": 1}
    second = model.encode_products(
        [ProductInput("1", "red shirt", str(image)), ProductInput("2", "red shirt", f"file://{copy}"),
         ProductInput("3", "blue shirt", None)], image_roots=[tmp_path]
    )
    assert seen == {"text": 2, "image": 1}  # same bytes under another path: a hit
    # (allclose: the heads ran on batches of another size, BLAS may sum in another order)
    np.testing.assert_allclose(first.fused[0], second.fused[0], atol=1e-6)
    np.testing.assert_allclose(second.fused[0], second.fused[1], atol=1e-6)
    text_dir = settings.cache_dir / "features" / model.text_backbone.backbone_id
    assert (text_dir / "features-v2.sqlite").is_file()


@pytest.mark.parametrize("use_cache", [True, False])
def test_vectors_do_not_depend_on_the_cache_being_on(tmp_path, use_cache) -> None:
    image = tmp_path / "red.jpg"
    Image.new("RGB", (40, 40), (200, 0, 0)).save(image)
    products = [ProductInput("1", "red shirt", str(image))]
    cached = MultimodalModel.from_config(ModelConfig.tiny(), settings=Settings(cache_dir=tmp_path / "c"))
    cached.encode_products(products, image_roots=[tmp_path])  # fill the cache
    other = MultimodalModel.from_config(
        ModelConfig.tiny(), settings=Settings(cache_dir=tmp_path / "c"), use_feature_cache=use_cache
    )
    assert np.array_equal(cached.encode_products(products, image_roots=[tmp_path]).fused,
                          other.encode_products(products, image_roots=[tmp_path]).fused)
