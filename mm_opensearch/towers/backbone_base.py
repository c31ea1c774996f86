"""What every backbone offers: a stable id, an output dimension, and batched frozen features.

Backbones are frozen feature extractors. Their ``backbone_id`` names the exact weights and input
processing (a hash of both), so it can key the on-disk feature cache and be recorded in a model
artifact: if an installed package ever ships other weights, the id changes, the cache misses and
the artifact refuses to load instead of producing vectors of another space. Pretrained weights are
read lazily, on the first ``features`` call, so commands that find every feature in the cache
(training, re-indexing) never pay for loading them.
"""

from __future__ import annotations

import hashlib
import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from mm_opensearch.towers.config import ImagePreprocess
from mm_opensearch.towers.preprocess import normalize_batch

__all__ = [
    "FIXED_ROWS",
    "ArtifactWeights",
    "ImageFeatures",
    "Backbone",
    "TextEncoder",
    "TextBackbone",
    "ImageBackbone",
    "backbone_id",
    "files_digest",
    "state_digest",
    "pool_tokens",
]


# Rows of every backbone call whose features are cached. Float kernels choose blocking and thread
# splits by shape, so only at one shape is a row a function of its own input alone (measured on
# MiniLM and Lite0: bit-identical rows for any batch companions, at 1 or 2 threads, from 16 rows;
# at 8 or fewer, the thread count changes the last bits).
FIXED_ROWS = 16


@dataclass(frozen=True)
class ImageFeatures:
    """Backbone output for a batch of images: a pooled vector and a few spatial tokens per image."""

    pooled: torch.Tensor  # (n, dim) float32, CPU
    tokens: torch.Tensor  # (n, num_tokens, dim) float32, CPU


def backbone_id(name: str, parts: dict[str, Any]) -> str:
    """``<name>-<12 hex>``: readable, and different whenever weights or processing differ."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return f"{name}-{hashlib.sha256(canonical.encode()).hexdigest()[:12]}"


def files_digest(paths: Sequence[Path]) -> str:
    """sha256 over the names and bytes of weight/config files (memoised per size and mtime)."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        stat = path.stat()
        digest.update(path.name.encode())
        digest.update(_file_sha256(str(path), stat.st_size, stat.st_mtime_ns).encode())
    return digest.hexdigest()


@lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    del size, mtime_ns  # part of the memo key only: a rewritten file is hashed again
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names, dtypes, shapes and bytes, independent of file layout."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def pool_tokens(feature_map: torch.Tensor, grid: int) -> torch.Tensor:
    """(n, dim, h, w) -> (n, grid*grid, dim): a coarse grid keeps the cache small yet spatial."""
    pooled = nn.functional.adaptive_avg_pool2d(feature_map, grid)
    return pooled.flatten(2).transpose(1, 2)


class Backbone(ABC):
    """Device placement, lazy loading and mixed precision shared by text and image backbones."""

    name: str
    dim: int

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.cuda_dtype = torch.bfloat16  # MMOS_CUDA_PRECISION, set by the model
        self._module: nn.Module | None = None
        self._lock = threading.Lock()

    @property
    @abstractmethod
    def backbone_id(self) -> str:
        """Stable id of these weights and this input processing (keys the feature cache)."""

    @property
    def cache_id(self) -> str:
        """Key of this backbone's feature cache: its id, plus device and precision off the CPU.

        One cache holds rows of one computation only: a GPU's bf16 rows differ from the CPU's
        float32 ones well beyond float16 rounding, and would change what a later training reads.
        """
        if self.device.type == "cpu":
            return self.backbone_id
        return f"{self.backbone_id}-{self.device.type}-{str(self.cuda_dtype).removeprefix('torch.')}"

    @abstractmethod
    def _load_module(self) -> nn.Module:
        """Build the network with its weights (called once, on first use)."""

    def module(self) -> nn.Module:
        """The network in eval mode on ``self.device``, loaded on first use."""
        with self._lock:
            if self._module is None:
                module = self._load_module().eval()
                self._module = self._place(module)
            return self._module

    def _place(self, module: nn.Module) -> nn.Module:
        return module.to(self.device)

    def to(self, device: torch.device | str) -> Backbone:
        """Move to ``device`` (now if loaded, else when loaded)."""
        self.device = torch.device(device)
        if self._module is not None:
            self._module = self._place(self._module)
        return self

    def saved_state(self) -> dict[str, torch.Tensor]:
        """Weights that must travel inside a model artifact (only random-init backbones have any)."""
        return {}

    def load_saved_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`saved_state` returned; package backbones have nothing to restore."""
        if state:
            msg = f"backbone '{self.name}' keeps no weights in the artifact, got {sorted(state)[:3]}"
            raise ValueError(msg)

    @contextmanager
    def _inference(self) -> Iterator[None]:
        """inference_mode everywhere; half-precision autocast on CUDA (``cuda_dtype``), float32 on CPUs."""
        autocast = (
            torch.autocast("cuda", dtype=self.cuda_dtype)
            if self.device.type == "cuda" and self.cuda_dtype != torch.float32
            else nullcontext()
        )
        with torch.inference_mode(), autocast:
            yield


class ArtifactWeights:
    """Mixin of the random-init backbones (tests): their weights travel inside the model artifact."""

    _id: str | None  # the cached backbone id, stale once other weights are loaded
    module: Callable[[], nn.Module]  # Backbone.module, later in the MRO

    def saved_state(self) -> dict[str, torch.Tensor]:
        return dict(self.module().state_dict())

    def load_saved_state(self, state: dict[str, torch.Tensor]) -> None:
        self.module().load_state_dict(state)
        self._id = None


class TextEncoder(Protocol):
    """Anything that turns strings into vectors: a text backbone, or a whole query tower."""

    dim: int

    def features(self, texts: Sequence[str]) -> torch.Tensor:
        """(n, dim) float32 CPU tensor for a batch of non-empty strings."""
        ...


class TextBackbone(Backbone):
    """Maps strings to one ``dim``-d float32 vector each."""

    max_length: int
    trainable_layers: int = 0

    @abstractmethod
    def features(self, texts: Sequence[str]) -> torch.Tensor:
        """(n, dim) float32 CPU tensor for a batch of non-empty strings."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The weights fine-tuning may change (``trainable_layers``); none for a frozen backbone."""
        return []

    def fixed_shape_features(self, texts: Sequence[str]) -> torch.Tensor:
        """:meth:`features` whose every row depends on its own text only: what the feature cache stores.

        Here: calls of exactly :data:`FIXED_ROWS` texts, the last filled with repeats. Backbones that
        pad texts to the batch's longest (transformers) also fix the padded length.
        """
        texts = list(texts)
        if not texts:
            return torch.zeros((0, self.dim), dtype=torch.float32)
        filled = texts + [texts[-1]] * ((-len(texts)) % FIXED_ROWS)
        out = torch.cat([self.features(filled[i : i + FIXED_ROWS]) for i in range(0, len(filled), FIXED_ROWS)])
        return out[: len(texts)]

    def training_features(self, texts: Sequence[str]) -> torch.Tensor:
        """:meth:`features` with autograd on, for fine-tuning :meth:`trainable_parameters`."""
        msg = f"text backbone '{self.name}' cannot be fine-tuned"
        raise NotImplementedError(msg)


class ImageBackbone(Backbone):
    """Maps preprocessed uint8 image batches to pooled vectors and spatial tokens."""

    preprocess: ImagePreprocess
    num_tokens: int

    @property
    def token_dim(self) -> int:
        """Width of each spatial token: ``dim`` unless the pooled vector carries more than the feature map."""
        return self.dim

    def cached_parts(self) -> tuple[ImageBackbone, ...] | None:
        """Extractors whose pooled vectors this one concatenates, each cached under its own id (or None).

        A CNN with the colour descriptor is the CNN plus the descriptor: cached apart, turning the
        descriptor on reuses the CNN features already computed, and the descriptor's are shared by
        every CNN with the same crop.
        """
        return None

    def _place(self, module: nn.Module) -> nn.Module:
        module = module.to(self.device)
        if self.device.type == "cuda":
            module = module.to(memory_format=torch.channels_last)
        return module

    def _prepare(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 batch -> normalised float tensor on the device (channels_last on CUDA)."""
        pixels = normalize_batch(batch.to(self.device, non_blocking=True), self.preprocess)
        if self.device.type == "cuda":
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return pixels

    @abstractmethod
    def features(self, batch: torch.Tensor) -> ImageFeatures:
        """Features of a uint8 batch (n, 3, crop, crop) made by :func:`preprocess.resize_crop`."""
