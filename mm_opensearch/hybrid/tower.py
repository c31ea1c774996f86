"""What the searcher needs from a query tower, and loading the configured one.

The searcher only encodes queries, so it depends on this small protocol rather than on torch:
:class:`~mm_opensearch.towers.MultimodalModel` satisfies it (with its own LRU of query vectors),
and importing the searcher stays cheap for callers that only run BM25.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from mm_opensearch.config import Settings

__all__ = ["QueryTower", "load_query_tower"]


class QueryTower(Protocol):
    """Encodes query texts into the index's vector space."""

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray: ...


def load_query_tower(settings: Settings, *, query_cache_size: int = 1024) -> QueryTower:
    """``settings.model_dir`` or the packaged default; ``query_cache_size=0`` turns the query LRU off."""
    from mm_opensearch.towers import load_default_model  # noqa: PLC0415 - torch loads only when a model is used

    return load_default_model(settings, use_feature_cache=False, query_cache_size=query_cache_size)
