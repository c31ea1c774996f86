"""The two-tower model as one object: its backbones, its trainable heads, and their modes.

Composition only; each job lives in its own module and is reached from here: identity and the
artifact folder in :mod:`persistence`, the product encode path in :mod:`product_encode`, the query
runtime and its cache in :mod:`query_runtime`. Training (issue 4) and encoding share one path:
features from :meth:`MultimodalModel.product_text_features` / :meth:`image_features` /
:meth:`query_text_features` (disk-cached), vectors from :meth:`product_vectors_from_features` /
:meth:`query_vectors_from_features`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mm_opensearch.config import Settings, get_settings
from mm_opensearch.errors import ConfigError
from mm_opensearch.towers.backbone_base import ImageBackbone, TextBackbone, TextEncoder
from mm_opensearch.towers.backbones import build_image_backbone, build_text_backbone
from mm_opensearch.towers.config import ModelConfig
from mm_opensearch.towers.decode_pool import DecodePool
from mm_opensearch.towers.device import (
    DeviceUnavailableError,
    autocast_dtype,
    batch_size_for_free_memory,
    select_device,
)
from mm_opensearch.towers.extract import (
    ImageFeatureBatch,
    extract_image_features,
    extract_text_features,
)
from mm_opensearch.towers.feature_cache import FeatureCache
from mm_opensearch.towers.heads import ProductHeads, ProductVectors, QueryHead
from mm_opensearch.towers.onnx_product import ProductTower, build_onnx_product_tower, torch_product_tower
from mm_opensearch.towers.persistence import ModelIdentity, load_model, save_model
from mm_opensearch.towers.product_encode import (
    EncoderInput,
    ProductEncoding,
    ProductFeatures,
    ProductInput,
    encode_products,
    product_features,
)
from mm_opensearch.towers.query_runtime import QueryRuntime

__all__ = ["EncoderInput", "ProductInput", "ProductEncoding", "ProductFeatures", "MultimodalModel"]


class MultimodalModel:
    """Backbones (frozen) + trainable heads; save/load as an artifact folder with a content id."""

    def __init__(
        self,
        config: ModelConfig,
        *,
        settings: Settings | None = None,
        device: str | torch.device | None = None,
        use_feature_cache: bool = True,
        query_cache_size: int = 1024,
    ) -> None:
        """Build backbones and randomly initialised heads (seeded by ``config.seed``)."""
        self.settings = settings or get_settings()
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        try:
            self.device = select_device(str(device) if device is not None else self.settings.device,
                                        cuda_available=torch.cuda.is_available())
        except DeviceUnavailableError as e:
            raise ConfigError(str(e)) from e
        self.text_backbone: TextBackbone = build_text_backbone(config.text_backbone).to(self.device)
        self.image_backbone: ImageBackbone = build_image_backbone(config.image_backbone).to(self.device)
        self.query_backbone: TextBackbone = (
            self.text_backbone
            if config.query_backbone is None
            else build_text_backbone(config.query_backbone).to(self.device)
        )
        if self.device.type == "cuda":
            dtype = autocast_dtype(self.settings.cuda_precision, bf16_supported=torch.cuda.is_bf16_supported())
            for backbone in (self.text_backbone, self.image_backbone, self.query_backbone):
                backbone.cuda_dtype = dtype
        # Record the preprocessing actually used, so config.json rebuilds the same pipeline.
        self.config = config.model_copy(
            update={
                "image_backbone": config.image_backbone.model_copy(
                    update={"preprocess": self.image_backbone.preprocess}
                )
            }
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            product = ProductHeads(
                self.config, text_dim=self.text_backbone.dim, image_dim=self.image_backbone.dim,
                token_dim=self.image_backbone.token_dim,
            )
            query = QueryHead(self.config, text_dim=self.query_backbone.dim)
        self.heads = nn.ModuleDict({"product": product, "query": query}).to(self.device).eval()
        self.use_feature_cache = use_feature_cache
        self.query_runtime = QueryRuntime(self, query_cache_size)
        self.query_cache = self.query_runtime.cache
        self.identity = ModelIdentity(self)
        self.decode_pool = DecodePool(self.settings.decode_processes) if self.settings.decode_processes else None
        self._product_tower: tuple[tuple[str, str], ProductTower] | None = None
        self._product_tower_lock = threading.Lock()

    # --- construction and persistence ---------------------------------------------------------

    @classmethod
    def from_config(cls, config: ModelConfig, **kwargs: Any) -> MultimodalModel:
        """A fresh model (random-init heads); kwargs as in ``__init__``."""
        return cls(config, **kwargs)

    @classmethod
    def load(cls, folder: str | Path, **kwargs: Any) -> MultimodalModel:
        """Load an artifact folder and check that it still is the model its id names (see :mod:`persistence`)."""
        return load_model(cls, folder, **kwargs)

    def save(self, folder: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``folder``; returns the folder."""
        return save_model(self, folder)

    @property
    def model_id(self) -> str:
        """Content hash of config, backbones and weights; follows weight changes made in training."""
        return self.identity.model_id

    @property
    def dim(self) -> int:
        """Dimension of every vector this model outputs."""
        return self.config.dim

    def train(self, mode: bool = True) -> MultimodalModel:
        """Train/eval mode of the heads (dropout, modality dropout); clears the query cache."""
        self.heads.train(mode)
        self.query_cache.clear()
        return self

    def eval(self) -> MultimodalModel:
        """Eval mode: deterministic vectors."""
        return self.train(False)

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """Encode in eval mode even mid-training, and restore the mode afterwards."""
        was_training = self.heads.training
        if was_training:  # switching walks every submodule: skip it on the per-query path
            self.heads.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            if was_training:
                self.heads.train()

    # --- features (disk-cached; what training consumes) -----------------------------------------

    def feature_cache(self, backbone: TextBackbone | ImageBackbone) -> FeatureCache | None:
        """The on-disk cache of ``backbone``'s features, or None when this model encodes uncached."""
        return self._cache(backbone)

    def _cache(self, backbone: TextBackbone | ImageBackbone) -> FeatureCache | None:
        return FeatureCache.for_backbone(self.settings, backbone.cache_id) if self.use_feature_cache else None

    def product_text_features(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """(n, text_dim) features of non-empty product texts."""
        return extract_text_features(
            self.text_backbone, texts, cache=self._cache(self.text_backbone), batch_size=batch_size
        )

    def query_text_features(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """(n, query_dim) features of non-empty queries (same cache as products when shared)."""
        return extract_text_features(
            self.query_backbone, texts, cache=self._cache(self.query_backbone), batch_size=batch_size
        )

    def image_features(
        self, sources: Sequence[str], *, image_roots: Sequence[Path] = (), batch_size: int = 32
    ) -> ImageFeatureBatch:
        """Pooled + token features of each image source; failures carry their ImageLoadError.

        Local paths load only inside ``image_roots`` (none: only http(s) URLs load).
        """
        return extract_image_features(
            self.image_backbone,
            sources,
            settings=self.settings,
            cache=self._cache(self.image_backbone),
            roots=image_roots,
            batch_size=batch_size,
            decode_pool=self.decode_pool,
        )

    def product_tower(self) -> ProductTower:
        """What encodes products: ``Settings.product_runtime`` on a CPU (ONNX Runtime), else PyTorch.

        The ONNX tower is built (or loaded from the cache) once per model id; when it cannot be
        built or fails its check against PyTorch, PyTorch encodes and the failure is logged once.
        """
        runtime = self.settings.product_runtime
        if runtime == "torch" or self.device.type != "cpu":
            return torch_product_tower(self)
        key = (self.model_id, runtime)
        with self._product_tower_lock:
            if self._product_tower is None or self._product_tower[0] != key:
                built = build_onnx_product_tower(self, quantized=runtime == "onnx-int8")
                self._product_tower = (key, built or torch_product_tower(self))
            return self._product_tower[1]

    def query_encoder(self) -> TextEncoder:
        """Query texts -> query vectors as search time runs it (see :meth:`QueryRuntime.encoder`)."""
        return self.query_runtime.encoder()

    # --- heads (shared by training and encoding) ------------------------------------------------

    def _tensor(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(array, device=self.device)

    def product_vectors_from_features(
        self,
        text: np.ndarray | torch.Tensor,
        image: np.ndarray | torch.Tensor,
        image_tokens: np.ndarray | torch.Tensor,
        text_mask: np.ndarray | torch.Tensor,
        image_mask: np.ndarray | torch.Tensor,
    ) -> ProductVectors:
        """Product tower on backbone features (see :meth:`ProductHeads.forward`)."""
        return self.heads["product"](
            self._tensor(text).float(),
            self._tensor(image).float(),
            self._tensor(image_tokens).float(),
            self._tensor(text_mask).bool(),
            self._tensor(image_mask).bool(),
        )

    def query_vectors_from_features(self, features: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Query tower on query backbone features: (n, dim) L2-normalised."""
        return self.heads["query"](self._tensor(features).float())

    # --- encoding -----------------------------------------------------------------------------

    def product_features(
        self, products: Sequence[EncoderInput], *, image_roots: Sequence[Path] = (), batch_size: int = 64
    ) -> ProductFeatures:
        """Backbone features of each product's text and image (disk-cached), with presence masks.

        The one place that turns products into tower inputs: encoding and training both use it.
        Local image paths load only inside ``image_roots``; any other image fails on its own.
        """
        return product_features(self, products, image_roots=image_roots, batch_size=batch_size)

    def encode_products(
        self,
        products: Sequence[EncoderInput],
        *,
        image_roots: Sequence[Path] = (),
        batch_size: int = 64,
        with_modalities: bool = False,
    ) -> ProductEncoding:
        """Encode products; a failed image falls back to the text and is reported in ``errors``.

        Local image paths load only inside ``image_roots`` (the catalog's folder, ``MMOS_IMAGE_ROOTS``).

        Meant for batches of up to a few thousand products (image tokens are held in memory);
        iterate over a large catalog in chunks.
        """
        if self.device.type == "cuda":  # the largest batch that fits beside whatever else runs on the GPU
            batch_size = batch_size_for_free_memory(torch.cuda.mem_get_info(self.device)[0])
        tower = self.product_tower()
        features = product_features(self, products, image_roots=image_roots, batch_size=batch_size, tower=tower)
        return encode_products(self, products, features, with_modalities=with_modalities, tower=tower)

    def encode_queries(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """(n, dim) float32 L2-normalised query vectors; repeated queries come from the LRU cache."""
        return self.query_runtime.encode(texts, batch_size=batch_size)
