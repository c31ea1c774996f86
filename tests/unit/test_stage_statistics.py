"""Mid-level stage statistics of EfficientNet-Lite: the product's mean and spread at strides 8 and 16."""

from __future__ import annotations

import pytest
import torch

from mm_opensearch.errors import ConfigError
from mm_opensearch.towers.backbones import build_image_backbone
from mm_opensearch.towers.config import ImageBackboneSpec


def _photo(garment: tuple[int, int, int], backdrop: int = 255) -> torch.Tensor:
    """A garment of one colour on a flat backdrop, uint8 (1, 3, 224, 224)."""
    image = torch.full((1, 3, 224, 224), backdrop, dtype=torch.uint8)
    for channel, value in enumerate(garment):
        image[:, channel, 50:190, 60:170] = value
    return image


def _stages(name: str = "efficientnet-lite0", **options: bool):
    return build_image_backbone(ImageBackboneSpec(name=name, stage_statistics=True, **options))


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite2"])
def test_stage_statistics_are_deterministic_and_of_the_declared_size(name: str) -> None:
    backbone = _stages(name)
    part = backbone.stages
    assert part is not None
    first = part.features(_photo((200, 30, 30)))
    again = _stages(name).stages.features(_photo((200, 30, 30)))
    assert first.pooled.shape == (1, part.dim)
    assert backbone.dim == 1280 + part.dim
    assert torch.equal(first.pooled, again.pooled)
    assert torch.isfinite(first.pooled).all()
    if name == "efficientnet-lite0":  # [mean, spread] of the 40-channel and of the 112-channel map
        assert part.dim == 2 * (40 + 112)
        assert (first.pooled[:, 40:80] >= 0).all() and (first.pooled[:, 192:] >= 0).all()


def test_the_backdrop_weighs_less_than_the_garment() -> None:
    part = _stages().stages
    red_on_white = part.features(_photo((200, 30, 30))).pooled
    red_on_grey = part.features(_photo((200, 30, 30), backdrop=225)).pooled
    blue_on_white = part.features(_photo((30, 40, 200))).pooled
    same_garment = torch.nn.functional.cosine_similarity(red_on_white, red_on_grey).item()
    other_colour = torch.nn.functional.cosine_similarity(red_on_white, blue_on_white).item()
    assert same_garment > other_colour


def test_the_composite_is_its_cached_parts_side_by_side() -> None:
    composite = _stages(colour_descriptor=True)
    parts = composite.cached_parts()
    assert parts is not None and len(parts) == 3
    image = _photo((30, 120, 60))
    whole = composite.features(image).pooled
    pieces = torch.cat([part.features(image).pooled for part in parts], dim=1)
    assert torch.allclose(whole, pieces, atol=1e-5)


def test_turning_stages_on_reuses_the_cnn_and_descriptor_caches_under_a_new_id() -> None:
    colour_only = build_image_backbone(ImageBackboneSpec(colour_descriptor=True))
    with_stages = _stages(colour_descriptor=True)
    assert with_stages.backbone_id != colour_only.backbone_id
    old_parts = [p.backbone_id for p in colour_only.cached_parts()]
    new_parts = [p.backbone_id for p in with_stages.cached_parts()]
    assert new_parts[:2] == old_parts
    assert new_parts[2] not in old_parts
    lite2 = _stages("efficientnet-lite2").stages
    assert lite2.backbone_id != with_stages.stages.backbone_id


def test_a_backbone_without_stages_says_which_option_to_turn_off() -> None:
    with pytest.raises(ConfigError, match="no mid-level stages"):
        build_image_backbone(ImageBackboneSpec(name="tiny-image", stage_statistics=True))
