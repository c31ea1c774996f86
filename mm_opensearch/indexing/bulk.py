"""Bulk writes that check every item: nothing fails silently, 429s are retried with backoff.

Built on ``opensearchpy.helpers.streaming_bulk`` (which already resends only the rejected
documents on 429 with capped exponential backoff); this module turns its per-item results into a
report of successes, refused stale writes (version conflicts) and real failures.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from opensearchpy import OpenSearch, helpers

from mm_opensearch.indexing.mappings import ID_FIELD, VECTOR_FIELDS

__all__ = [
    "BulkFailure",
    "BulkReport",
    "bulk_write",
    "index_action",
    "json_floats",
    "vector_fields_doc",
    "vector_update_action",
]


@dataclass(frozen=True)
class BulkFailure:
    id: str
    status: int
    error: str
    type: str = ""  # OpenSearch's error type, e.g. cluster_block_exception: what the failure is, beyond its status


@dataclass
class BulkReport:
    """Outcome of a bulk write. ``conflicts`` are writes refused because the document moved on."""

    succeeded: int = 0
    conflicts: list[str] = field(default_factory=list)
    failed: list[BulkFailure] = field(default_factory=list)

    def merge(self, other: BulkReport) -> None:
        self.succeeded += other.succeeded
        self.conflicts.extend(other.conflicts)
        self.failed.extend(other.failed)


def vector_fields_doc(
    fused: np.ndarray | Sequence[float] | None,
    *,
    product_id: str,
    model_id: str,
    content_hash: str,
    error: str | None = None,
    text: np.ndarray | None = None,
    image: np.ndarray | None = None,
) -> dict[str, Any]:
    """The vector and bookkeeping fields written next to a product's own fields.

    ``fused=None`` records only the error: the product stays searchable by BM25 and the reason it
    has no vector is kept with it. ``product_id`` (the document's ``_id``) goes to ``mm_id``, where
    searches read candidate ids from doc values.
    """
    doc: dict[str, Any] = {
        ID_FIELD: product_id,
        "mm_model_id": model_id,
        "mm_content_hash": content_hash,
        "mm_embedded_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "mm_embedding_error": error,
    }
    for name, vector in (("fused", fused), ("text", text), ("image", image)):
        if vector is not None:
            doc[VECTOR_FIELDS[name]] = json_floats(vector)
    return doc


def json_floats(vector: np.ndarray | Sequence[float]) -> list[float]:
    """A vector as the shortest decimals that parse back to the same float32 values.

    ``float32.tolist()`` gives doubles whose repr runs to 17 digits ("-0.011768360622227192" for
    "-0.01176836"): the _source of every document would carry twice the bytes, and every page of
    search results is read and filtered from that _source. The index holds float32 either way.
    """
    return [float(x) for x in np.asarray(vector, dtype=np.float32).astype(str)]


def index_action(index: str, doc_id: str, source: dict[str, Any]) -> dict[str, Any]:
    """Create or replace one whole document (``_id`` = product id, so re-runs are idempotent)."""
    return {"_op_type": "index", "_index": index, "_id": doc_id, "_source": source}


def vector_update_action(
    index: str,
    doc_id: str,
    fields: dict[str, Any],
    *,
    if_seq_no: int | None = None,
    if_primary_term: int | None = None,
) -> dict[str, Any]:
    """Partial update that adds vectors and keeps every other field (the product's BM25 data).

    With ``if_seq_no``/``if_primary_term`` (read together with the inputs that were encoded) the
    write is refused when the product changed meanwhile, so a vector of an old version never lands
    on a newer one.
    """
    action: dict[str, Any] = {"_op_type": "update", "_index": index, "_id": doc_id, "doc": fields}
    if if_seq_no is not None and if_primary_term is not None:
        action["if_seq_no"] = if_seq_no
        action["if_primary_term"] = if_primary_term
    return action


def bulk_write(
    client: OpenSearch,
    actions: Iterable[dict[str, Any]],
    *,
    chunk_size: int = 500,
    max_chunk_bytes: int = 50 * 1024 * 1024,
    max_retries: int = 5,
    initial_backoff: float = 0.5,
    refresh: bool | str = False,
) -> BulkReport:
    """Send ``actions`` and account for every item. Connection errors raise (the caller retries)."""
    report = BulkReport()
    for ok, item in helpers.streaming_bulk(
        client,
        actions,
        chunk_size=chunk_size,
        max_chunk_bytes=max_chunk_bytes,
        raise_on_error=False,
        max_retries=max_retries,
        initial_backoff=initial_backoff,
        max_backoff=30,
        refresh=refresh,
    ):
        (result,) = item.values()
        if ok:
            report.succeeded += 1
        elif result.get("status") == 409:
            report.conflicts.append(str(result.get("_id")))
        else:
            error = result.get("error")
            reason = error.get("reason", str(error)) if isinstance(error, dict) else str(error)
            kind = str(error.get("type", "")) if isinstance(error, dict) else ""
            report.failed.append(BulkFailure(str(result.get("_id")), int(result.get("status", 0)), reason, kind))
    return report
