"""A polling change feed on the ``updated_at`` field: products edited since the last poll get
re-embedded.

The checkpoint lives in Redis. Each poll looks back ``overlap_s`` before it, because a document
written just before a poll may become searchable only after the next refresh. The products already
enqueued in that overlap (with the same ``updated_at``) are remembered and not enqueued again, so a
quiet catalog costs no tasks; one seen twice anyway costs little, as the worker skips a product
whose content hash is unchanged. Nobody waits on the
feed's job, so the follower itself sends again the batches the broker lost (:mod:`.recovery`).

The feed's job never finishes, so it is open ended: it keeps counters rather than a record of
every batch, and forgets settled batches after the store's settled window (Redis stays flat
however long the feed runs). The checkpoint expires after the store's retention without a poll;
the feed then starts again from the newest product, and a backfill embeds what changed meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

from opensearchpy import OpenSearch

from mm_opensearch.backfill.jobs import JobQueue
from mm_opensearch.backfill.outage import REDIS_ERRORS, RedisOutage
from mm_opensearch.backfill.pipeline import enqueue
from mm_opensearch.backfill.recovery import StallGuard
from mm_opensearch.backfill.retry import classify_error
from mm_opensearch.backfill.scan import scan_index
from mm_opensearch.backfill.store import JobStore
from mm_opensearch.catalog import parse_instant
from mm_opensearch.config import RESUBMIT_AFTER_S

__all__ = ["changes_job_id", "follow_changes", "poll_changes"]

log = logging.getLogger(__name__)


def changes_job_id(index: str) -> str:
    """The one open-ended job every poll of ``index`` adds its batches to."""
    return f"changes-{index}"


def _latest(client: OpenSearch, index: str, field: str) -> str | None:
    response = client.search(index=index, body={"size": 0, "aggs": {"latest": {"max": {"field": field}}}})
    value = response["aggregations"]["latest"].get("value_as_string")
    return value


def _stamps_since(client: OpenSearch, index: str, field: str, since: str, overlap_s: float) -> dict[str, str]:
    """Each product's ``field`` from ``overlap_s`` before ``since`` on (``since`` where it has none)."""
    query = {"range": {field: {"gte": (parse_instant(since) - timedelta(seconds=overlap_s)).isoformat()}}}
    return {hit["_id"]: str(hit["_source"].get(field) or since)
            for hit in scan_index(client, index, query=query, source=[field])}


def poll_changes(
    client: OpenSearch,
    store: JobStore,
    queue: JobQueue,
    index: str,
    *,
    field: str = "updated_at",
    batch_size: int = 64,
    overlap_s: float = 5.0,
) -> int:
    """Enqueue products whose ``field`` moved past the checkpoint; returns how many.

    The first poll of an index only sets the checkpoint to its newest product: older products are
    the backfill's job.
    """
    since, seen = store.change_checkpoint(index)
    if since is None:
        log.info("no change-feed checkpoint for '%s' (first poll, or not polled for the job retention): starting "
                 "from its newest product; `mm-opensearch backfill %s` embeds any older edit", index, index)
        latest = _latest(client, index, field)
        if latest is None:
            store.set_change_checkpoint(index, datetime.now(UTC).isoformat())
            return 0
        # what the next poll's overlap will see again counts as seen, so it is not re-embedded for nothing
        store.set_change_checkpoint(index, latest, _stamps_since(client, index, field, latest, overlap_s))
        return 0
    stamps = _stamps_since(client, index, field, since, overlap_s)
    changed = [pid for pid, stamp in stamps.items() if seen.get(pid) != stamp]
    if changed:
        store.ensure_job(changes_job_id(index), index, open_ended=True)
        enqueue(store, queue, index, changed, batch_size=batch_size, job_id=changes_job_id(index))
    newest = max([since, *stamps.values()], key=parse_instant)
    horizon = parse_instant(newest) - timedelta(seconds=overlap_s)  # where the next poll will look from
    store.set_change_checkpoint(
        index, newest, {pid: stamp for pid, stamp in stamps.items() if parse_instant(stamp) >= horizon}
    )
    return len(changed)


def follow_changes(
    client: OpenSearch,
    store: JobStore,
    queue: JobQueue,
    index: str,
    *,
    stop: threading.Event,
    interval_s: float = 5.0,
    field: str = "updated_at",
    batch_size: int = 64,
    resubmit_after_s: float = RESUBMIT_AFTER_S,
) -> None:
    """Poll until ``stop`` is set; lost batches are sent again after ``resubmit_after_s``.

    A follower runs for days, so it outlives every outage: a poll that fails for a transient reason
    (Redis or the cluster unreachable, a node restarting, a write block) is logged and tried again
    at the next interval. Nothing is missed meanwhile, since the checkpoint only moves after a poll
    has enqueued what it found. Anything else (missing privileges, a deleted index) ends the feed.
    """
    guard = StallGuard(store, queue, changes_job_id(index), after_s=resubmit_after_s)
    outage = RedisOutage(store.redis)
    failing_since: float | None = None
    while not stop.is_set():
        attempt = time.monotonic()
        try:
            poll_changes(client, store, queue, index, field=field, batch_size=batch_size)
            counts = store.counts(guard.job_id)
            if counts is not None:
                guard.check(counts)
        except REDIS_ERRORS as e:
            outage.failed(e, attempt)
        except Exception as e:
            verdict = classify_error(e)
            if not verdict.transient:
                raise
            failing_since = attempt if failing_since is None else failing_since
            log.warning("change feed of '%s': poll failed for %.0f s (%s); retrying every %.0f s", index,
                        time.monotonic() - failing_since, verdict.reason, interval_s, extra={"index": index})
        else:
            outage.answered()
            if failing_since is not None:
                log.warning("change feed of '%s': polls succeed again after %.0f s", index,
                            time.monotonic() - failing_since, extra={"index": index})
                failing_since = None
        stop.wait(interval_s)
