"""On-disk cache of frozen backbone features, shared by every command that encodes.

Layout: ``<cache_dir>/features/<backbone_id>/features-v2.sqlite``, one row per input, keyed by the
sha256 of the input (see :mod:`mm_opensearch.towers.extract` for what is hashed, and for the
fixed-shape batches that make each row a pure function of its input). SQLite in WAL
mode lets several processes (a training run, a backfill worker, the API) read and add rows at the
same time without corrupting anything; ``INSERT OR IGNORE`` makes a race between two writers of
the same key harmless, since a key's features are a pure function of the key. Features are stored
as float16 (half the disk, ~250 MB for 10k images with 3x3 tokens); :func:`as_cached_precision`
applies the same rounding to fresh features, so a vector never depends on whether its features
came from the cache.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from mm_opensearch.config import Settings

__all__ = ["FeatureCache", "as_cached_precision", "get_or_compute"]

_STORE_DTYPE = np.float16
_SQL_CHUNK = 500  # below SQLite's bound-parameter limit
# v2: rows computed in fixed-shape batches. v1 rows (``features.sqlite``) also depended on which
# other inputs shared their batch, so a cache's contents depended on its history; they are never read.
_FILE_NAME = "features-v2.sqlite"


def as_cached_precision(features: np.ndarray) -> np.ndarray:
    """float32 copy of ``features`` rounded exactly as a cache round trip rounds them."""
    return np.asarray(features, dtype=_STORE_DTYPE).astype(np.float32)


class FeatureCache:
    """Features of one backbone: ``get_many``/``put_many`` of 2-D float arrays by string key."""

    def __init__(self, root: Path, backbone_id: str) -> None:
        self.root = root
        self.path = root / "features" / backbone_id / _FILE_NAME
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def sibling(self, backbone_id: str) -> FeatureCache:
        """The cache of another backbone beside this one."""
        return FeatureCache(self.root, backbone_id)

    @classmethod
    def for_backbone(cls, settings: Settings, backbone_id: str) -> FeatureCache:
        """The cache of ``backbone_id`` under ``settings.cache_dir`` (``MMOS_CACHE_DIR``)."""
        return cls(Path(settings.cache_dir), backbone_id)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=60.0, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS features "
                "(key TEXT PRIMARY KEY, rows INTEGER NOT NULL, cols INTEGER NOT NULL, data BLOB NOT NULL)"
            )
            conn.commit()
            self._conn = conn
        return self._conn

    def get_many(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """Features found for ``keys`` (float32, shape as stored); absent keys are left out."""
        unique = list(dict.fromkeys(keys))
        found: dict[str, np.ndarray] = {}
        with self._lock:
            conn = self._connection()
            for start in range(0, len(unique), _SQL_CHUNK):
                chunk = unique[start : start + _SQL_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT key, rows, cols, data FROM features WHERE key IN ({marks})", chunk
                )
                for key, n_rows, n_cols, data in rows:
                    array = np.frombuffer(data, dtype=_STORE_DTYPE).reshape(n_rows, n_cols)
                    found[key] = array.astype(np.float32)
        return found

    def put_many(self, items: Mapping[str, np.ndarray]) -> None:
        """Store 2-D feature arrays (one transaction; existing keys are kept as they are)."""
        if not items:
            return
        rows = []
        for key, array in items.items():
            matrix = np.atleast_2d(np.asarray(array, dtype=_STORE_DTYPE))
            if matrix.ndim != 2:
                msg = f"feature cache stores 2-D arrays; key {key} has shape {matrix.shape}"
                raise ValueError(msg)
            rows.append((key, matrix.shape[0], matrix.shape[1], matrix.tobytes()))
        with self._lock:
            conn = self._connection()
            with conn:
                conn.executemany("INSERT OR IGNORE INTO features VALUES (?, ?, ?, ?)", rows)

    def __len__(self) -> int:
        with self._lock:
            return int(self._connection().execute("SELECT COUNT(*) FROM features").fetchone()[0])

    def close(self) -> None:
        """Close the database connection (reopened on next use)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def get_or_compute(
    keys: Sequence[str],
    cache: FeatureCache | None,
    compute: Callable[[list[str]], Iterable[Mapping[str, np.ndarray]]],
) -> dict[str, np.ndarray]:
    """Features for ``keys``: cache hits, plus ``compute(misses)`` for the rest.

    ``compute`` gets each missing key once and yields its results batch by batch; each batch is
    stored as soon as it arrives, so an interrupted cold run resumes where it stopped. It may
    leave keys out (an input that failed); those stay absent from the result. Everything
    returned has cache precision, hit or miss.
    """
    unique = list(dict.fromkeys(keys))
    found = cache.get_many(unique) if cache is not None else {}
    misses = [key for key in unique if key not in found]
    if misses:
        for batch in compute(misses):
            computed = {key: as_cached_precision(value) for key, value in batch.items()}
            if cache is not None:
                cache.put_many(computed)
            found.update(computed)
    return found
