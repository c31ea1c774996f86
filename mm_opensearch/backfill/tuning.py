"""Bulk-load settings (no refresh, no replicas) that are put back whatever happens.

The originals are saved in Redis before anything changes, so a backfill killed with SIGKILL still
restores them: the next run (or ``restore_index_settings``) finds and applies them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opensearchpy import OpenSearch

from mm_opensearch.backfill.store import JobStore

__all__ = ["BULK_SETTINGS", "bulk_load_settings", "restore_index_settings"]

BULK_SETTINGS = {"refresh_interval": "-1", "number_of_replicas": 0}


def _current(client: OpenSearch, index: str) -> dict[str, Any]:
    response = client.indices.get_settings(index=index, include_defaults=True, flat_settings=True)
    (body,) = response.values()
    merged = {**body.get("defaults", {}), **body["settings"]}
    return {name: merged.get(f"index.{name}") for name in BULK_SETTINGS}


def restore_index_settings(client: OpenSearch, store: JobStore, index: str) -> bool:
    """Apply saved original settings of ``index`` if a run left them changed; True if it did."""
    saved = store.saved_index_settings(index)
    if saved is None:
        return False
    client.indices.put_settings(index=index, body={"index": saved})
    store.forget_index_settings(index)
    return True


@contextmanager
def bulk_load_settings(client: OpenSearch, store: JobStore, index: str) -> Iterator[dict[str, Any]]:
    """Turn refresh and replicas off for the duration; yields the originals that will be restored."""
    original = store.save_index_settings(index, _current(client, index))
    client.indices.put_settings(index=index, body={"index": BULK_SETTINGS})
    try:
        yield original
    finally:
        client.indices.put_settings(index=index, body={"index": original})
        store.forget_index_settings(index)
