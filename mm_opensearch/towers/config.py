"""The declarative description of a two-tower model: which backbones, which heads, which fusion.

This is exactly what ``config.json`` of a model artifact holds (plus versions and provenance), so a
model can be rebuilt from it on another machine: the backbones come from installed packages or a
local folder, the trained heads from ``model.safetensors``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "FusionType",
    "ImagePreprocess",
    "TextBackboneSpec",
    "ImageBackboneSpec",
    "ModelConfig",
]

FusionType = Literal["weighted_sum", "concat_mlp", "gated", "cross_attention"]


class ImagePreprocess(BaseModel):
    """Resize (shorter side), centre crop and normalisation an image backbone was trained with."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    resize: int = Field(gt=0, description="Shorter side after resizing, in pixels.")
    crop: int = Field(gt=0, description="Side of the square centre crop, in pixels.")
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"


class TextBackboneSpec(BaseModel):
    """A text backbone: ``minilm``, ``tiny-text`` or the path of a local Hugging Face folder."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "minilm"
    max_length: int | None = Field(
        default=None, gt=0, description="Token limit; None = what the backbone's own config says."
    )
    seed: int = Field(default=0, description="Initialisation seed of the random tiny backbone.")
    trainable_layers: int = Field(
        default=0, ge=0, le=24,
        description="Top transformer layers fine-tuned by training (query backbone only; their weights travel "
        "in the artifact). 0 = frozen.",
    )


class ImageBackboneSpec(BaseModel):
    """An image backbone: ``efficientnet-lite0``, ``efficientnet-lite2``, ``mobilenet-v2``, ``tiny-image`` or a local HF folder."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "efficientnet-lite0"
    token_grid: int = Field(
        default=3, ge=1, le=8, description="Patch tokens kept per image: token_grid x token_grid."
    )
    preprocess: ImagePreprocess | None = Field(
        default=None, description="None = the backbone's own preprocessing (recorded on save)."
    )
    seed: int = Field(default=0, description="Initialisation seed of the random tiny backbone.")
    colour_descriptor: bool = Field(
        default=False,
        description="Append the CIELAB colour and pattern descriptor of the product (towers/colour.py) to the "
        "pooled image vector; feature-map backbones only.",
    )
    stage_statistics: bool = Field(
        default=False,
        description="Append the product's mean and spread on the backbone's mid-level feature maps (strides 8 "
        "and 16), which keep colour and texture the last map loses; EfficientNet-Lite only.",
    )


class ModelConfig(BaseModel):
    """Backbones, head sizes and fusion of a :class:`~mm_opensearch.towers.model.MultimodalModel`."""

    model_config = ConfigDict(extra="forbid")

    text_backbone: TextBackboneSpec = Field(default_factory=TextBackboneSpec)
    image_backbone: ImageBackboneSpec = Field(default_factory=ImageBackboneSpec)
    query_backbone: TextBackboneSpec | None = Field(
        default=None, description="None = queries share the product text backbone (and its cache)."
    )
    dim: int = Field(default=256, gt=0, description="Dimension of every output vector.")
    fusion: FusionType = "gated"
    head_hidden_dim: int = Field(default=512, ge=0, description="0 = linear projection heads.")
    head_dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    modality_dropout: float = Field(
        default=0.15, ge=0.0, le=1.0, description="Train mode: chance of dropping one modality of a row."
    )
    attention_heads: int = Field(default=4, ge=1, description="Heads of the cross_attention fusion.")
    seed: int = Field(default=0, description="Initialisation seed of the heads.")
    provenance: dict[str, Any] = Field(
        default_factory=dict, description="How the weights were trained (data, command, commit)."
    )
    hybrid: dict[str, Any] = Field(
        default_factory=dict, description="Hybrid fusion defaults chosen by `mm-opensearch eval --tune`."
    )

    @classmethod
    def tiny(cls, **overrides: Any) -> ModelConfig:
        """A random-init model small enough for unit tests (no pretrained weights involved)."""
        base: dict[str, Any] = {
            "text_backbone": TextBackboneSpec(name="tiny-text"),
            "image_backbone": ImageBackboneSpec(name="tiny-image", token_grid=2),
            "dim": 24,
            "head_hidden_dim": 32,
            "attention_heads": 2,
        }
        base.update(overrides)
        return cls(**base)
