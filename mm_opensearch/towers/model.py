"""The two-tower model: product tower (text + image + fusion) and query tower, in one object.

Training (issue 4) and encoding share one path: features come from
:meth:`MultimodalModel.product_text_features` / :meth:`image_features` /
:meth:`query_text_features` (disk-cached), vectors from :meth:`product_vectors_from_features` /
:meth:`query_vectors_from_features`. ``encode_products`` is those two steps plus input
validation, error reporting and numpy conversion. ``encode_queries`` runs the same query tower
in one step (:meth:`MultimodalModel.query_encoder`: ONNX Runtime on CPUs), because a search
waits for it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from mm_opensearch.config import Settings, get_settings
from mm_opensearch.errors import ConfigError, ModelError
from mm_opensearch.towers.artifact import compute_model_id, read_artifact, write_artifact
from mm_opensearch.towers.backbone_base import ImageBackbone, TextBackbone, TextEncoder
from mm_opensearch.towers.backbones import build_image_backbone, build_text_backbone
from mm_opensearch.towers.config import ModelConfig
from mm_opensearch.towers.extract import (
    ImageFeatureBatch,
    extract_image_features,
    extract_text_features,
)
from mm_opensearch.towers.feature_cache import FeatureCache
from mm_opensearch.towers.heads import ProductHeads, ProductVectors, QueryHead
from mm_opensearch.towers.query_cache import QueryCache, normalize_query

__all__ = ["EncoderInput", "ProductInput", "ProductEncoding", "ProductFeatures", "MultimodalModel"]


class EncoderInput(Protocol):
    """What the product tower reads of a product: catalog ``Product``s fit as they are."""

    @property
    def id(self) -> str: ...

    @property
    def text(self) -> str | None: ...

    @property
    def image(self) -> str | None: ...


@dataclass(frozen=True)
class ProductInput:
    """One product to encode: its text (fields already joined) and/or an image source."""

    id: str
    text: str | None = None
    image: str | None = None  # local path, file:// or http(s):// URL


@dataclass(frozen=True)
class ProductEncoding:
    """Vectors of a batch of products, in input order.

    Rows without a vector (no text and no loadable image; see ``errors``) are NaN, as are the
    ``text``/``image`` rows of a missing modality: NaN cannot be indexed by accident, a zero
    vector could. ``errors[i]`` is ``"<reason>: <message>"`` when product i's image failed (its
    vector then comes from its text alone) or when it has no vector at all.
    """

    ids: list[str]
    fused: np.ndarray  # (n, dim) float32, L2-normalised
    text: np.ndarray | None  # (n, dim) with with_modalities=True
    image: np.ndarray | None
    errors: list[str | None]
    has_text: np.ndarray  # (n,) bool
    has_image: np.ndarray  # (n,) bool: an image was given *and* loaded

    @property
    def has_vector(self) -> np.ndarray:
        """Rows with a usable fused vector."""
        return self.has_text | self.has_image


@dataclass(frozen=True)
class ProductFeatures:
    """Backbone features of a batch of products; rows of a missing modality are zeros.

    ``errors[i]`` is ``"<reason>: <message>"`` when product i's image failed to load.
    """

    text: np.ndarray  # (n, text_dim) float32
    image: np.ndarray  # (n, image_dim) pooled
    tokens: np.ndarray  # (n, num_tokens, image_dim)
    has_text: np.ndarray  # (n,) bool
    has_image: np.ndarray  # (n,) bool: an image was given *and* loaded
    errors: list[str | None]


class _TorchQueryTower:
    """The query tower in PyTorch: backbone features, then the head, in eval mode."""

    def __init__(self, model: MultimodalModel) -> None:
        self.model = model
        self.dim = model.dim

    def features(self, texts: Sequence[str]) -> torch.Tensor:
        with self.model.evaluating():
            features = self.model.query_backbone.features(texts)
            return self.model.query_vectors_from_features(features).float().cpu()


def _onnx_query_tower(model: MultimodalModel, model_id: str, reference: _TorchQueryTower) -> TextEncoder | None:
    """The query tower exported for ONNX Runtime, or None for backbones that do not read token ids."""
    backbone = model.query_backbone
    if not callable(getattr(backbone, "tokenize", None)):
        return None
    from mm_opensearch.towers.onnx_text import OnnxTextEncoder, QueryTowerGraph  # noqa: PLC0415 - loads onnxruntime

    graph = QueryTowerGraph(backbone.module(), model.heads["query"])
    path = model.settings.cache_dir / "onnx" / f"query-tower-{model_id}.onnx"
    with model.evaluating():
        return OnnxTextEncoder.build(graph, backbone, path=path, dim=model.dim, reference=reference.features,
                                     quantized=model.settings.query_runtime == "onnx-int8")


def _section(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix``, with the prefix removed."""
    return {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}


def _present(value: object) -> bool:
    """Given at all: a value that is not even a string goes to the loader, which says why it fails."""
    return value is not None and (not isinstance(value, str) or bool(value.strip()))


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
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.text_backbone: TextBackbone = build_text_backbone(config.text_backbone).to(self.device)
        self.image_backbone: ImageBackbone = build_image_backbone(config.image_backbone).to(self.device)
        self.query_backbone: TextBackbone = (
            self.text_backbone
            if config.query_backbone is None
            else build_text_backbone(config.query_backbone).to(self.device)
        )
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
                self.config, text_dim=self.text_backbone.dim, image_dim=self.image_backbone.dim
            )
            query = QueryHead(self.config, text_dim=self.query_backbone.dim)
        self.heads = nn.ModuleDict({"product": product, "query": query}).to(self.device).eval()
        self.use_feature_cache = use_feature_cache
        self.query_cache = QueryCache(query_cache_size)
        self._query_encoder: tuple[tuple[tuple[int, int], ...], TextEncoder] | None = None  # (weights stamp, encoder)
        self._query_encoder_lock = threading.Lock()
        self._model_id: tuple[object, str] | None = None

    # --- construction and persistence ---------------------------------------------------------

    @classmethod
    def from_config(cls, config: ModelConfig, **kwargs: Any) -> MultimodalModel:
        """A fresh model (random-init heads); kwargs as in ``__init__``."""
        return cls(config, **kwargs)

    @classmethod
    def load(cls, folder: str | Path, **kwargs: Any) -> MultimodalModel:
        """Load an artifact folder and check that it still is the model its id names.

        A different id means the installed backbone packages ship other weights than the ones the
        heads were trained on (or the files were altered): the vectors would be of another space.
        """
        folder = Path(folder)
        config, document, state = read_artifact(folder)
        model = cls(config, **kwargs)
        try:
            for role, backbone in model._backbones().items():
                backbone.load_saved_state(_section(state, f"backbones.{role}."))
            model.heads.load_state_dict(_section(state, "heads."))
        except (RuntimeError, ValueError) as e:
            msg = f"weights in {folder} do not fit its config.json ({e}); the artifact is corrupt"
            raise ModelError(msg) from e
        expected = document.get("model_id")
        if model.model_id != expected:
            recorded = {role: (info or {}).get("id") for role, info in document.get("backbones", {}).items()}
            current = model._backbone_ids()
            changed = [role for role in current if current[role] != recorded.get(role)]
            cause = (
                f"backbone(s) {changed} now have id(s) {[current[r] for r in changed]}, the artifact "
                f"was trained on {[recorded.get(r) for r in changed]}: install the backbone packages "
                "it was trained with, or re-train"
                if changed
                else "its weights were altered after saving: re-save or re-train it"
            )
            msg = f"model in {folder} has id {model.model_id}, config.json says {expected}; {cause}"
            raise ModelError(msg)
        return model

    def save(self, folder: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``folder``; returns the folder."""
        folder = Path(folder)
        backbones: dict[str, dict[str, Any] | None] = {
            "text": {
                "id": self.text_backbone.backbone_id,
                "dim": self.text_backbone.dim,
                "max_length": self.text_backbone.max_length,
            },
            "image": {
                "id": self.image_backbone.backbone_id,
                "dim": self.image_backbone.dim,
                "num_tokens": self.image_backbone.num_tokens,
                "preprocess": self.image_backbone.preprocess.model_dump(mode="json"),
            },
            "query": None
            if self.config.query_backbone is None
            else {
                "id": self.query_backbone.backbone_id,
                "dim": self.query_backbone.dim,
                "max_length": self.query_backbone.max_length,
            },
        }
        write_artifact(
            folder, config=self.config, model_id=self.model_id, backbones=backbones, state=self._state()
        )
        return folder

    def _backbones(self) -> dict[str, TextBackbone | ImageBackbone]:
        roles: dict[str, TextBackbone | ImageBackbone] = {
            "text": self.text_backbone,
            "image": self.image_backbone,
        }
        if self.config.query_backbone is not None:
            roles["query"] = self.query_backbone
        return roles

    def _backbone_ids(self) -> dict[str, str | None]:
        return {role: backbone.backbone_id for role, backbone in self._backbones().items()}

    def _state(self) -> dict[str, torch.Tensor]:
        state = {f"heads.{k}": v for k, v in self.heads.state_dict().items()}
        for role, backbone in self._backbones().items():
            state.update({f"backbones.{role}.{k}": v for k, v in backbone.saved_state().items()})
        return state

    @property
    def model_id(self) -> str:
        """Content hash of config, backbones and weights; follows weight changes made in training.

        Hashing megabytes of weights on every access would slow per-document checks, so the id is
        memoised on a cheap stamp: the config and each tensor's storage and in-place version
        counter (which optimizer steps and ``load_state_dict`` both bump).
        """
        state = self._state()
        stamp = (
            self.config.model_dump_json(exclude={"provenance"}),
            tuple((key, value.data_ptr(), value._version) for key, value in state.items()),
        )
        if self._model_id is None or self._model_id[0] != stamp:
            self._model_id = (stamp, compute_model_id(self.config, self._backbone_ids(), state))
        return self._model_id[1]

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

    def _cache(self, backbone: TextBackbone | ImageBackbone) -> FeatureCache | None:
        return FeatureCache.for_backbone(self.settings, backbone.backbone_id) if self.use_feature_cache else None

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
        )

    def query_encoder(self) -> TextEncoder:
        """Query texts -> query vectors as search time runs it: backbone and head in one step.

        On a CPU with ``Settings.query_runtime`` "onnx" (or "onnx-int8") and a backbone that reads token ids,
        that is ONNX Runtime over an export of the whole query tower, named by the model id and
        rebuilt when the query head's weights change (never served stale); otherwise PyTorch.
        Both give the same vectors to float rounding, which the export is checked for when built.
        """
        # Optimizer steps and load_state_dict bump the tensors' version counters: a cheap staleness
        # check on every query, where hashing the weights into the model id is not.
        stamp = tuple((t.data_ptr(), t._version) for t in self.heads["query"].state_dict().values())
        with self._query_encoder_lock:
            if self._query_encoder is None or self._query_encoder[0] != stamp:
                self.query_cache.clear()  # vectors of other weights
                torch_tower = _TorchQueryTower(self)
                onnx = None
                if self.settings.query_runtime != "torch" and self.device.type == "cpu":
                    onnx = _onnx_query_tower(self, self.model_id, torch_tower)
                self._query_encoder = (stamp, onnx or torch_tower)
            return self._query_encoder[1]

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
        n = len(products)
        has_text = np.array([_present(p.text) for p in products], dtype=bool)
        wants_image = np.array([_present(p.image) for p in products], dtype=bool)
        text = np.zeros((n, self.text_backbone.dim), dtype=np.float32)
        if has_text.any():
            text[has_text] = self.product_text_features(
                [p.text for p, ok in zip(products, has_text, strict=True) if ok], batch_size=batch_size
            )
        image = np.zeros((n, self.image_backbone.dim), dtype=np.float32)
        tokens = np.zeros((n, self.image_backbone.num_tokens, self.image_backbone.dim), dtype=np.float32)
        errors: list[str | None] = [None] * n
        has_image = np.zeros(n, dtype=bool)
        if wants_image.any():
            where = np.flatnonzero(wants_image)
            loaded = self.image_features(
                [products[j].image for j in where], image_roots=image_roots, batch_size=batch_size
            )
            image[where], tokens[where] = loaded.pooled, loaded.tokens
            for j, error in zip(where, loaded.errors, strict=True):
                if error is not None:
                    errors[j] = f"{error.reason}: {error}"
            has_image[where] = loaded.ok
        return ProductFeatures(text, image, tokens, has_text, has_image, errors)

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
        n = len(products)
        features = self.product_features(products, image_roots=image_roots, batch_size=batch_size)
        text, image, tokens = features.text, features.image, features.tokens
        has_text, has_image, errors = features.has_text, features.has_image, list(features.errors)
        for j in np.flatnonzero(~has_text & ~has_image):
            errors[j] = (
                f"{errors[j]}; product {products[j].id!r} has no text either, so it has no vector"
                if errors[j]
                else f"no_input: product {products[j].id!r} has neither text nor image; give it at least one"
            )
        ok = has_text | has_image
        fused = np.full((n, self.dim), np.nan, dtype=np.float32)
        text_out = np.full((n, self.dim), np.nan, dtype=np.float32) if with_modalities else None
        image_out = np.full((n, self.dim), np.nan, dtype=np.float32) if with_modalities else None
        rows = np.flatnonzero(ok)
        with self.evaluating():
            for start in range(0, len(rows), 4096):
                part = rows[start : start + 4096]
                out = self.product_vectors_from_features(
                    text[part], image[part], tokens[part], has_text[part], has_image[part]
                )
                fused[part] = out.fused.cpu().numpy()
                if text_out is not None and image_out is not None:
                    text_out[part] = np.where(has_text[part, None], out.text.cpu().numpy(), np.nan)
                    image_out[part] = np.where(has_image[part, None], out.image.cpu().numpy(), np.nan)
        return ProductEncoding(
            ids=[p.id for p in products],
            fused=fused,
            text=text_out,
            image=image_out,
            errors=errors,
            has_text=has_text,
            has_image=has_image,
        )

    def encode_queries(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """(n, dim) float32 L2-normalised query vectors; repeated queries come from the LRU cache."""
        keys = [normalize_query(text) for text in texts]
        for position, key in enumerate(keys):
            if not key:
                msg = f"query {position} is empty; give a non-empty query text"
                raise ConfigError(msg)
        encoder = self.query_encoder()  # first: weights changed since the last call empty the cache
        found = {key: vector for key in dict.fromkeys(keys) if (vector := self.query_cache.get(key)) is not None}
        misses = [key for key in dict.fromkeys(keys) if key not in found]
        if misses:  # full precision: these are vectors, not backbone features that a cache rounds
            vectors = np.concatenate(
                [encoder.features(misses[start : start + batch_size]).numpy() for start in range(0, len(misses), batch_size)]
            )
            for key, vector in zip(misses, vectors, strict=True):
                self.query_cache.put(key, vector)
                found[key] = vector
        if not keys:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([found[key] for key in keys]).astype(np.float32, copy=False)
