"""What the searcher needs from a query tower, and loading the configured one.

The searcher only encodes queries, so it depends on this small protocol rather than on torch:
:class:`~mm_opensearch.towers.MultimodalModel` satisfies it (with its own LRU of query vectors),
and importing the searcher stays cheap for callers that only run BM25.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from mm_opensearch.config import Settings
from mm_opensearch.errors import ModelError

__all__ = ["QueryTower", "load_query_tower"]


class QueryTower(Protocol):
    """Encodes query texts into the index's vector space."""

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray: ...


def load_query_tower(settings: Settings, *, query_cache_size: int = 1024) -> QueryTower:
    """``settings.model_dir`` or the packaged default; ``query_cache_size=0`` turns the query LRU off.

    A folder carrying an exported query graph (``mm-opensearch export-query-graph``) is served by
    ONNX Runtime alone when ``query_runtime`` is "onnx" or when this install has no PyTorch (the
    ``[api]`` extra); otherwise the model is loaded with torch.
    """
    from mm_opensearch.resources import default_model_dir  # noqa: PLC0415
    from mm_opensearch.towers.query_graph import OnnxQueryTower, has_query_graph  # noqa: PLC0415 - torch-free

    folder = settings.model_dir
    if folder is None:
        try:
            folder = default_model_dir()
        except FileNotFoundError:
            folder = None
    torch_missing = importlib.util.find_spec("torch") is None
    if folder is not None and has_query_graph(folder) and (settings.query_runtime == "onnx" or torch_missing):
        return OnnxQueryTower(folder, threads=settings.torch_threads or 1, query_cache_size=query_cache_size)
    if torch_missing:
        where = folder or "MMOS_MODEL_DIR"
        msg = (
            f"this install has no PyTorch and {where} carries no exported query graph: run "
            f"`mm-opensearch export-query-graph {where}` once where torch is installed (mm-opensearch[worker])"
        )
        raise ModelError(msg)
    from mm_opensearch.towers import load_default_model  # noqa: PLC0415 - torch loads only when a model is used

    return load_default_model(settings, use_feature_cache=False, query_cache_size=query_cache_size)
