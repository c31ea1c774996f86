"""The messages of the embedding pipeline and the queue interface that carries them.

Jobs hold ids and index names only (plus, for writes, the vectors already computed), so they
serialise to JSON and a redelivered job redoes the same idempotent work. The library never talks
to Celery: it submits through :class:`JobQueue`, which the ``workers`` package implements (and
:class:`~mm_opensearch.backfill.pipeline.InlineQueue` implements in-process).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

__all__ = ["EmbedJob", "WriteJob", "JobQueue", "batch_ids", "new_job_id"]


@dataclass(frozen=True)
class EmbedJob:
    """Encode these products of ``index`` (read fresh from the index, never from the message)."""

    index: str
    ids: tuple[str, ...]
    job_id: str
    batch_id: str
    attempt: int = 0  # how many times these ids were re-read after a refused (stale) write

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ids": list(self.ids)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbedJob:
        return cls(**{**data, "ids": tuple(data["ids"])})


@dataclass(frozen=True)
class WriteJob:
    """Partial updates carrying vectors, each guarded by the ``if_seq_no`` of the version encoded."""

    index: str
    job_id: str
    batch_id: str
    actions: list[dict[str, Any]]
    attempt: int = 0
    skipped: int = 0  # products of the batch whose vector was already current
    missing: int = 0  # products deleted before they were read
    failed: list[dict[str, Any]] = field(default_factory=list)  # {"id", "status", "error"} of unencodable rows

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WriteJob:
        return cls(**data)


class JobQueue(Protocol):
    """Where the library hands work to: Celery queues in production, the caller's thread in tests."""

    def submit_embed(self, job: EmbedJob) -> None: ...

    def submit_write(self, job: WriteJob) -> None: ...

    def pending_batch_ids(self, batch_ids: Collection[str]) -> set[str]:
        """Those of ``batch_ids`` whose message the queue still holds: waiting, or taken by a worker
        that has not finished it. The stall guard sends a batch again only when it is not among them;
        a queue that cannot rule a batch out returns it too."""
        ...


def new_job_id(kind: str) -> str:
    """A fresh job id such as ``enqueue-3f2a9c1e``."""
    return f"{kind}-{uuid.uuid4().hex[:8]}"


def batch_ids(product_ids: Iterable[str], size: int) -> list[tuple[str, ...]]:
    """Deduplicated ids (first occurrence kept) cut into batches of ``size``."""
    unique = list(dict.fromkeys(str(pid) for pid in product_ids))
    return [tuple(unique[start : start + size]) for start in range(0, len(unique), size)]
