"""Walk an index in slices with a point-in-time and ``search_after``, yielding batches of hits.

Hits are sorted by ``_id``, which stays valid across point-in-times: a resumed scan opens a new
PIT and continues after the last id it checkpointed, even if the old PIT has expired.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opensearchpy import OpenSearch

__all__ = ["point_in_time", "scan_index", "scan_slice"]


@contextmanager
def point_in_time(client: OpenSearch, index: str, keep_alive: str = "5m") -> Iterator[str]:
    """A PIT id over ``index``, deleted on exit."""
    pit = client.create_pit(index=index, params={"keep_alive": keep_alive})["pit_id"]
    try:
        yield pit
    finally:
        client.delete_pit(body={"pit_id": [pit]})


def scan_slice(
    client: OpenSearch,
    pit_id: str,
    *,
    slice_id: int,
    slices: int,
    size: int,
    after: list[Any] | None = None,
    source: list[str] | bool = True,
    query: dict[str, Any] | None = None,
    keep_alive: str = "5m",
) -> Iterator[tuple[list[dict[str, Any]], list[Any]]]:
    """Pages of hits of one slice and the sort values to resume after each page."""
    body: dict[str, Any] = {
        "size": size,
        "pit": {"id": pit_id, "keep_alive": keep_alive},
        "sort": [{"_id": "asc"}],
        "_source": source,
        "track_total_hits": False,
        "query": query or {"match_all": {}},
    }
    if slices > 1:
        body["slice"] = {"id": slice_id, "max": slices}
    while True:
        if after is not None:
            body["search_after"] = after
        hits = client.search(body=body)["hits"]["hits"]
        if not hits:
            return
        after = hits[-1]["sort"]
        yield hits, after


def scan_index(
    client: OpenSearch,
    index: str,
    *,
    query: dict[str, Any] | None = None,
    source: list[str] | bool = False,
    size: int = 1000,
    keep_alive: str = "1m",
) -> Iterator[dict[str, Any]]:
    """Every hit of ``index`` matching ``query``, in one slice, under a PIT deleted afterwards."""
    with point_in_time(client, index, keep_alive=keep_alive) as pit:
        for hits, _ in scan_slice(
            client, pit, slice_id=0, slices=1, size=size, source=source, query=query, keep_alive=keep_alive
        ):
            yield from hits
