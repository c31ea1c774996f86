"""LRU cache of query vectors: shoppers repeat queries, and a hit skips the transformer entirely."""

from __future__ import annotations

import threading
import unicodedata
from collections import OrderedDict

import numpy as np

__all__ = ["QueryCache", "normalize_query"]


def normalize_query(text: str) -> str:
    """NFKC, whitespace collapsed and trimmed: the key *and* the text that gets encoded.

    Case is kept: it is the backbone's tokenizer that decides whether case matters.
    """
    return " ".join(unicodedata.normalize("NFKC", text).split())


class QueryCache:
    """Thread-safe LRU of ``maxsize`` query vectors; ``maxsize=0`` disables it."""

    def __init__(self, maxsize: int = 1024) -> None:
        if maxsize < 0:
            msg = f"query cache size must be >= 0 (0 disables it), got {maxsize}"
            raise ValueError(msg)
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        """The cached vector of a normalised query (a read-only array), or None."""
        with self._lock:
            vector = self._items.get(key)
            if vector is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return vector

    def put(self, key: str, vector: np.ndarray) -> None:
        """Remember ``vector``; the least recently used entry goes when the cache is full."""
        if self.maxsize == 0:
            return
        frozen = np.array(vector, dtype=np.float32, copy=True)
        frozen.flags.writeable = False  # callers get views of it: nobody may alter a cached vector
        with self._lock:
            self._items[key] = frozen
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def clear(self) -> None:
        """Forget every vector (e.g. after the query head's weights changed in training)."""
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
