"""``backfill``: give every product of an index a current vector, resumably.

The scan runs here (one thread per slice); the encoding runs wherever the queue sends the batches.
Each slice checkpoints the last ``_id`` it enqueued, so a killed backfill started again with the
same job id continues after it. Products whose content hash and model id are already current are
skipped at scan time and never reach a worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

from opensearchpy import OpenSearch

from mm_opensearch.backfill.jobs import EmbedJob, JobQueue
from mm_opensearch.backfill.outage import REDIS_ERRORS, RedisOutage
from mm_opensearch.backfill.pipeline import is_current, read_product, submit_embed
from mm_opensearch.backfill.recovery import StallGuard
from mm_opensearch.backfill.scan import point_in_time, scan_slice
from mm_opensearch.backfill.store import JobCounts, JobStore
from mm_opensearch.backfill.tuning import bulk_load_settings, restore_index_settings
from mm_opensearch.catalog import CatalogSchema, content_hash
from mm_opensearch.config import RESUBMIT_AFTER_S
from mm_opensearch.errors import IndexCompatibilityError, MMOpenSearchError
from mm_opensearch.indexing.mappings import read_model_meta

__all__ = ["BackfillTimeoutError", "backfill_job_id", "run_backfill", "wait_for_job"]

ProgressCallback = Callable[[JobCounts], None]


class BackfillTimeoutError(MMOpenSearchError):
    """The batches were not all settled in time; the job keeps its state and can be waited on again."""


def backfill_job_id(index: str) -> str:
    """The default job id: one resumable backfill per index."""
    return f"backfill-{index}"


def _source_fields(schema: CatalogSchema) -> list[str]:
    fields = [schema.id_field, *schema.text_fields, "mm_content_hash", "mm_model_id"]
    return fields + [schema.image_field] if schema.image_field else fields


def _scan_slice(
    client: OpenSearch,
    store: JobStore,
    queue: JobQueue,
    *,
    index: str,
    pit_id: str,
    job_id: str,
    slice_id: int,
    slices: int,
    batch_size: int,
    schema: CatalogSchema,
    model_id: str,
    image_dir: Path | None,
) -> None:
    after, done = store.cursor(job_id, slice_id)
    if done:
        return
    pages = scan_slice(
        client, pit_id, slice_id=slice_id, slices=slices, size=batch_size, after=after, source=_source_fields(schema)
    )
    for hits, after in pages:
        batch_id = f"{job_id}.s{slice_id}.{hits[0]['_id']}"
        stale = []
        for hit in hits:
            product = read_product(hit, schema, image_dir)
            if not is_current(hit["_source"], content_hash(product.text, product.image), model_id):
                stale.append(hit["_id"])
        if stale:
            submit_embed(store, queue, EmbedJob(index, tuple(stale), job_id, batch_id))
        if len(stale) < len(hits):
            store.mark_enqueued(job_id, f"{batch_id}.skip")
            store.settle(job_id, f"{batch_id}.skip", skipped=len(hits) - len(stale))
        store.add_scanned(job_id, len(hits))
        store.save_cursor(job_id, slice_id, after)
    store.save_cursor(job_id, slice_id, after, done=True)


def _scan_slice_across_outages(*args: Any, outage: RedisOutage, **kwargs: Any) -> None:
    """:func:`_scan_slice`, started again from its checkpoint after Redis was unreachable.

    A page whose batch was sent but whose checkpoint was not saved is sent again: the batch id is
    the same and counts once, and its products are skipped as current if it ran already.
    """
    while True:
        attempt = time.monotonic()
        try:
            _scan_slice(*args, **kwargs)
        except REDIS_ERRORS as e:
            outage.failed(e, attempt)
            time.sleep(1.0)
        else:
            outage.answered()
            return


def wait_for_job(
    store: JobStore,
    job_id: str,
    *,
    timeout_s: float | None = None,
    poll_s: float = 0.5,
    on_progress: ProgressCallback | None = None,
    queue: JobQueue | None = None,
    resubmit_after_s: float = RESUBMIT_AFTER_S,
) -> JobCounts:
    """Block until every batch of the job is written or dead-lettered; marks the job finished.

    With ``queue``, batches presumed lost by the broker are sent again after ``resubmit_after_s``
    (:class:`~mm_opensearch.backfill.recovery.StallGuard`). Redis unreachable is waited out
    (and logged) until ``timeout_s``.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    guard = StallGuard(store, queue, job_id, after_s=resubmit_after_s) if queue is not None else None
    outage, counts = RedisOutage(store.redis), None
    while True:
        attempt = time.monotonic()
        try:
            counts = store.counts(job_id)
            if counts is None:
                msg = (f"job '{job_id}' does not exist: never started, or it finished longer than "
                       "MMOS_JOB_RETENTION_S ago and its record expired")
                raise MMOpenSearchError(msg)
            if on_progress is not None:
                on_progress(counts)
            if counts.settled:
                store.finish(job_id)
                outage.answered()
                return replace(counts, status="finished")
            _check_deadline(job_id, counts, deadline, timeout_s)
            if guard is not None:
                guard.check(counts)
            outage.answered()
        except REDIS_ERRORS as e:  # the job's state is safe in Redis: wait for it to come back
            outage.failed(e, attempt)
            _check_deadline(job_id, counts, deadline, timeout_s)
        time.sleep(poll_s)


def _check_deadline(job_id: str, counts: JobCounts | None, deadline: float | None, timeout_s: float | None) -> None:
    if deadline is None or time.monotonic() <= deadline:
        return
    pending = "?" if counts is None else counts.batches_enqueued - counts.batches_settled
    msg = (
        f"job '{job_id}' has {pending} batches in flight after {timeout_s:.0f} s; is a worker running "
        "(`mm-opensearch worker`)? Run the same command to resume"
    )
    raise BackfillTimeoutError(msg)


def run_backfill(
    client: OpenSearch,
    store: JobStore,
    queue: JobQueue,
    index: str,
    *,
    schema: CatalogSchema,
    image_dir: Path | None = None,
    job_id: str | None = None,
    slices: int = 2,
    batch_size: int = 64,
    tune: bool = False,
    restart: bool = False,
    wait: bool = True,
    timeout_s: float | None = None,
    resubmit_after_s: float = RESUBMIT_AFTER_S,
    on_progress: ProgressCallback | None = None,
) -> JobCounts:
    """Enqueue every product of ``index`` whose vector is missing or stale, then wait for the workers.

    ``tune`` turns refresh and replicas off meanwhile (for an index not yet serving queries) and
    restores them afterwards, also on failure. Without ``restart`` an unfinished job resumes.
    ``image_dir`` must be the workers' ``MMOS_DATA_DIR`` so both sides hash the same inputs.
    ``resubmit_after_s`` is :func:`wait_for_job`'s.
    """
    mapping = client.indices.get_mapping(index=index)
    (concrete, body), *rest = mapping.items()
    meta = read_model_meta(body["mappings"])
    if meta is None or rest:
        msg = (
            f"index '{index}' has no vector fields (or is an alias of several indices); "
            f"run `mm-opensearch index augment {index}` first"
        )
        raise IndexCompatibilityError(msg)
    job_id = job_id or backfill_job_id(concrete)
    client.indices.refresh(index=index)  # the scan sees what was written before it (a copy, a bulk load)
    total = int(client.count(index=index)["count"])
    store.start_job(job_id, index, total=total, resume=not restart)
    if not tune:
        restore_index_settings(client, store, concrete)  # left changed by a run that was killed
    with bulk_load_settings(client, store, concrete) if tune else nullcontext():
        with point_in_time(client, index) as pit_id, ThreadPoolExecutor(slices, thread_name_prefix="mmos-scan") as pool:
            kwargs: dict[str, Any] = {
                "index": index, "pit_id": pit_id, "job_id": job_id, "slices": slices,
                "batch_size": batch_size, "schema": schema, "model_id": meta["model_id"], "image_dir": image_dir,
            }
            outage = RedisOutage(store.redis)
            futures = [pool.submit(_scan_slice_across_outages, client, store, queue, slice_id=s, outage=outage, **kwargs)
                       for s in range(slices)]
            for future in futures:
                future.result()
        store.mark_scanned(job_id)
        if not wait:
            counts = store.counts(job_id)
            assert counts is not None
            return counts
        counts = wait_for_job(store, job_id, timeout_s=timeout_s, on_progress=on_progress, queue=queue,
                              resubmit_after_s=resubmit_after_s)
    client.indices.refresh(index=index)
    return counts
