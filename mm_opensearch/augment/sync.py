"""Copy an index into its successor and keep the copy in step with writes made meanwhile.

``_reindex`` copies a snapshot; products written during the copy are found by the
``updated_at`` field and replayed, and products deleted meanwhile by comparing the two id sets.
A replay never overwrites a newer document: it writes only when the target's copy is older (by
``updated_at``), guarded by the ``_seq_no`` it read, and keeps the target's vector when the
product's encoder inputs did not change.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from opensearchpy import OpenSearch

from mm_opensearch.backfill.pipeline import read_product
from mm_opensearch.backfill.scan import scan_index
from mm_opensearch.catalog import CatalogSchema, content_hash, parse_instant
from mm_opensearch.errors import MMOpenSearchError
from mm_opensearch.indexing.bulk import bulk_write
from mm_opensearch.indexing.mappings import ID_FIELD, vector_properties

__all__ = ["ReindexError", "delete_removed", "fill_id_field", "reindex", "replay_changes"]

_VECTOR_PREFIX = "mm_"


class ReindexError(MMOpenSearchError):
    """The ``_reindex`` task reported failures; the target index is incomplete."""


def reindex(client: OpenSearch, source: str, target: str, *, poll_s: float = 0.5) -> int:
    """Copy every document with ``_reindex`` (slices=auto) as a background task; returns the count."""
    task = client.reindex(
        body={"source": {"index": source, "size": 1000}, "dest": {"index": target}},
        params={"slices": "auto", "wait_for_completion": "false", "refresh": "false"},
    )["task"]
    response = _task_response(client, task, poll_s, what=f"_reindex '{source}' -> '{target}'",
                              fix=f"delete '{target}' and run augment again")
    return int(response.get("created", 0)) + int(response.get("updated", 0))


def _task_response(client: OpenSearch, task: str, poll_s: float, *, what: str, fix: str) -> dict[str, Any]:
    """Wait for a background task and return its response; ReindexError naming ``what`` and ``fix`` if it failed."""
    while True:
        status = client.tasks.get(task_id=task)
        if status.get("completed"):
            break
        time.sleep(poll_s)
    response = status.get("response", {})
    if status.get("error") or response.get("failures"):
        detail = status.get("error") or response["failures"][:3]
        msg = f"{what} failed: {detail}; {fix}"
        raise ReindexError(msg)
    return response


def fill_id_field(client: OpenSearch, index: str, *, poll_s: float = 0.5) -> int:
    """Give every document without ``mm_id`` its ``_id`` there; returns how many were updated.

    Searches read candidate ids from ``mm_id`` doc values, and fall back to the slower stored
    ``_id`` while any document lacks it: an index augmented in place keeps its documents, and one
    given vectors before ``mm_id`` existed is skipped by backfill (its vectors are current). An
    ``_update_by_query`` in the background (conflicts proceed: a product written meanwhile gets
    ``mm_id`` with its next vector).
    """
    client.indices.put_mapping(index=index, body={"properties": {ID_FIELD: vector_properties(1)[ID_FIELD]}})
    task = client.update_by_query(
        index=index,
        body={
            "query": {"bool": {"must_not": [{"exists": {"field": ID_FIELD}}]}},
            "script": {"source": f"ctx._source.{ID_FIELD} = ctx._id", "lang": "painless"},
        },
        params={"conflicts": "proceed", "slices": "auto", "wait_for_completion": "false", "refresh": "true"},
    )["task"]
    response = _task_response(client, task, poll_s, what=f"filling {ID_FIELD} in '{index}'",
                              fix=f"run `mm-opensearch index augment {index}` again")
    return int(response.get("updated", 0))


def replay_changes(
    client: OpenSearch,
    source: str,
    target: str,
    *,
    since: str,
    schema: CatalogSchema,
    image_dir: Path | None = None,
    keep_fields: set[str] | None = None,
) -> list[str]:
    """Copy products of ``source`` updated at or after ``since`` into ``target`` unless ``target`` is newer.

    Returns the ids written whose vector must be recomputed. ``keep_fields`` limits what is copied
    (a rollback into an index without vector fields drops ``mm_*``).
    """
    field = schema.updated_at_field
    query = {"range": {field: {"gte": since}}}
    changed = list(scan_index(client, source, query=query, source=True, size=5000, keep_alive="2m"))
    if not changed:
        return []
    current = {
        doc["_id"]: doc
        for doc in client.mget(index=target, body={"ids": [hit["_id"] for hit in changed]})["docs"]
    }
    actions, stale = [], []
    for hit in changed:
        new = hit["_source"]
        if keep_fields is not None:
            new = {k: v for k, v in new.items() if k in keep_fields}
        old = current.get(hit["_id"], {})
        action: dict[str, Any] = {"_index": target, "_id": hit["_id"], "_source": new}
        if old.get("found"):
            old_at, new_at = parse_instant(old["_source"].get(field)), parse_instant(new.get(field))
            if old_at is not None and new_at is not None and old_at >= new_at:
                continue  # the target already has this version or a newer one
            action.update(_op_type="index", if_seq_no=old["_seq_no"], if_primary_term=old["_primary_term"])
            product = read_product({"_id": hit["_id"], "_source": new}, schema, image_dir)
            if old["_source"].get("mm_content_hash") == content_hash(product.text, product.image):
                vectors = {k: v for k, v in old["_source"].items() if k.startswith(_VECTOR_PREFIX)}
                action["_source"] = {**new, **vectors}  # same encoder inputs: the vector still fits
            else:
                stale.append(hit["_id"])
        else:
            action["_op_type"] = "create"
            stale.append(hit["_id"])
        actions.append(action)
    report = bulk_write(client, actions)
    if report.failed:
        msg = f"replaying {len(report.failed)} changes into '{target}' failed, e.g. {report.failed[0]}"
        raise ReindexError(msg)
    refused = set(report.conflicts)  # written meanwhile by someone newer: theirs wins
    return [pid for pid in stale if pid not in refused]


def delete_removed(client: OpenSearch, source: str, target: str) -> list[str]:
    """Delete from ``target`` the products that no longer exist in ``source``; returns their ids."""
    client.indices.refresh(index=f"{source},{target}")
    kept = {hit["_id"] for hit in scan_index(client, source, size=5000, keep_alive="2m")}
    gone = [hit["_id"] for hit in scan_index(client, target, size=5000, keep_alive="2m") if hit["_id"] not in kept]
    if gone:
        report = bulk_write(client, [{"_op_type": "delete", "_index": target, "_id": pid} for pid in gone])
        if report.failed:
            msg = f"deleting {len(report.failed)} removed products from '{target}' failed, e.g. {report.failed[0]}"
            raise ReindexError(msg)
    return gone
