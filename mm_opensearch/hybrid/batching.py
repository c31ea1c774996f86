"""Encode the queries of concurrent searches together.

Eight queries encoded in one call cost each less than half of one encoded alone (docs/measurements.md,
"Query encoding"), so a loaded search process spends less of its CPU per query when it encodes what
is waiting in one call. No query waits for a batch to fill: the first
caller encodes at once; callers that arrive meanwhile queue, and when that encoding ends the
oldest of them encodes everything queued by then. Alone, a search encodes as it did before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["QueryBatcher"]


class _Slot:
    """One caller's query, then its vector or error; ``ready`` is also set to hand it the next batch."""

    __slots__ = ("text", "vector", "error", "ready")

    def __init__(self, text: str) -> None:
        self.text = text
        self.vector: np.ndarray | None = None
        self.error: BaseException | None = None
        self.ready = threading.Event()


class QueryBatcher:
    """Thread-safe ``encode(text)`` over ``encode_batch(texts) -> (n, dim)``, batching concurrent callers.

    A failure of ``encode_batch`` is raised to every caller whose query was in that batch, and to
    no other.
    """

    def __init__(self, encode_batch: Callable[[Sequence[str]], np.ndarray], *, max_batch: int = 16) -> None:
        if max_batch < 1:
            msg = f"max_batch must be >= 1, got {max_batch}"
            raise ValueError(msg)
        self._encode_batch = encode_batch
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._pending: list[_Slot] = []
        self._busy = False  # a caller is encoding; the others wait for it (or to be handed the next batch)

    def encode(self, text: str) -> np.ndarray:
        """The vector of ``text``, encoded in one batch with the queries of concurrent callers."""
        slot = _Slot(text)
        with self._lock:
            self._pending.append(slot)
            leads = not self._busy
            self._busy = True
        if not leads:
            slot.ready.wait()
            leads = slot.vector is None and slot.error is None  # woken to encode the next batch
        if leads:
            self._encode_next()
        if slot.error is not None:
            raise slot.error
        assert slot.vector is not None
        return slot.vector

    def _encode_next(self) -> None:
        """Encode the oldest waiting queries (this caller's first), then wake the next oldest to go on."""
        with self._lock:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        try:
            vectors = self._encode_batch([slot.text for slot in batch])
            for slot, vector in zip(batch, vectors, strict=True):
                slot.vector = vector
        except BaseException as e:  # every caller of this batch gets it; the batcher goes on
            for slot in batch:
                slot.error = e
        with self._lock:
            if self._pending:
                self._pending[0].ready.set()
            else:
                self._busy = False
        for slot in batch:
            slot.ready.set()
