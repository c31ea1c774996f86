"""The query tower as search runs it: one runtime (ONNX Runtime on CPUs, else PyTorch) and its LRU cache.

A search waits for its query vector, so the tower runs backbone and head in one step
(:class:`QueryRuntime.encoder`), and repeated queries come from the cache. The runtime is rebuilt,
and the cache emptied, whenever the query head's weights change: never a stale vector.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from mm_opensearch.errors import ConfigError
from mm_opensearch.towers.backbone_base import TextEncoder
from mm_opensearch.towers.query_cache import QueryCache, normalize_query

if TYPE_CHECKING:
    from mm_opensearch.towers.model import MultimodalModel

__all__ = ["QueryRuntime"]


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


class QueryRuntime:
    """Query texts -> vectors for one model: the runtime chosen by ``Settings.query_runtime``, and a cache."""

    def __init__(self, model: MultimodalModel, cache_size: int) -> None:
        self.model = model
        self.cache = QueryCache(cache_size)
        self._encoder: tuple[tuple[tuple[int, int], ...], TextEncoder] | None = None  # (weights stamp, encoder)
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Forget the runtime (as a new process would): the next call loads or exports it again."""
        with self._lock:
            self._encoder = None

    def encoder(self) -> TextEncoder:
        """Query texts -> query vectors as search time runs it: backbone and head in one step.

        On a CPU with ``Settings.query_runtime`` "onnx" (or "onnx-int8") and a backbone that reads token ids,
        that is ONNX Runtime over an export of the whole query tower, named by the model id and
        rebuilt when the query head's weights change (never served stale); otherwise PyTorch.
        Both give the same vectors to float rounding, which the export is checked for when built.
        """
        model = self.model
        # Optimizer steps and load_state_dict bump the tensors' version counters: a cheap staleness
        # check on every query, where hashing the weights into the model id is not.
        weights = [*model.heads["query"].state_dict().values(), *model.query_backbone.saved_state().values()]
        stamp = tuple((t.data_ptr(), t._version) for t in weights)
        with self._lock:
            if self._encoder is None or self._encoder[0] != stamp:
                self.cache.clear()  # vectors of other weights
                torch_tower = _TorchQueryTower(model)
                onnx = None
                if model.settings.query_runtime != "torch" and model.device.type == "cpu":
                    onnx = _onnx_query_tower(model, model.model_id, torch_tower)
                self._encoder = (stamp, onnx or torch_tower)
            return self._encoder[1]

    def encode(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """(n, dim) float32 L2-normalised query vectors; repeated queries come from the LRU cache."""
        keys = [normalize_query(text) for text in texts]
        for position, key in enumerate(keys):
            if not key:
                msg = f"query {position} is empty; give a non-empty query text"
                raise ConfigError(msg)
        encoder = self.encoder()  # first: weights changed since the last call empty the cache
        found = {key: vector for key in dict.fromkeys(keys) if (vector := self.cache.get(key)) is not None}
        misses = [key for key in dict.fromkeys(keys) if key not in found]
        if misses:  # full precision: these are vectors, not backbone features that a cache rounds
            vectors = np.concatenate(
                [encoder.features(misses[start : start + batch_size]).numpy() for start in range(0, len(misses), batch_size)]
            )
            for key, vector in zip(misses, vectors, strict=True):
                self.cache.put(key, vector)
                found[key] = vector
        if not keys:
            return np.zeros((0, self.model.dim), dtype=np.float32)
        return np.stack([found[key] for key in keys]).astype(np.float32, copy=False)
