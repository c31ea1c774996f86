"""Job state in the real Redis: the stall guard sends again only what the broker lost, and what a
job leaves in Redis is bounded (finished jobs expire, the change feed prunes what has settled)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import redis
from opensearchpy import OpenSearch
from opensearchpy.helpers import bulk
from prometheus_client.parser import text_string_to_metric_families

from mm_opensearch.backfill import (
    EmbedContext,
    InlineQueue,
    JobStore,
    changes_job_id,
    dead_letter,
    enqueue,
    poll_changes,
    retry_dead_letters,
    wait_for_job,
)
from mm_opensearch.backfill import redis_client as store_client
from mm_opensearch.catalog import CatalogSchema, Product
from mm_opensearch.config import Settings
from mm_opensearch.towers import MultimodalModel
from tests.integration.celery_worker import (
    WorkerProcess,
    index_without_vectors,
    purge_queues,
    stamped_catalog,
    wait_until,
)
from tests.ports import free_port as closed_port
from mm_opensearch_workers.app import IO_QUEUE, MODEL_QUEUE, CeleryJobQueue, app

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path, settings: Settings) -> MultimodalModel:
    return MultimodalModel.load(tiny_model_dir, settings=settings, use_feature_cache=False)


@pytest.fixture(scope="module")
def worker(tiny_model_dir: Path, settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    purge_queues(settings)
    process = WorkerProcess(tiny_model_dir, tmp_path_factory.mktemp("logs") / "worker.log",
                            MMOS_WORKER_METRICS_PORT=str(closed_port()))
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def catalog(myntra_dir: Path, schema: CatalogSchema) -> list[Product]:
    return stamped_catalog(myntra_dir, schema, 300)


# --- the broker's view, read independently of the code under test -----------------------------

def _batch_of(message: dict) -> str:
    """The batch id inside a kombu message (base64 JSON body: [args, kwargs, embed])."""
    (job,), _, _ = json.loads(base64.b64decode(message["body"]))
    return job["batch_id"]


def _queued(r: redis.Redis, job_id: str) -> list[str]:
    """Batch ids of the job's messages waiting in the two queue lists (duplicates kept)."""
    raws = [raw for queue in (MODEL_QUEUE, IO_QUEUE) for raw in r.lrange(queue, 0, -1)]
    return [b for b in (_batch_of(json.loads(raw)) for raw in raws) if b.startswith(f"{job_id}.")]


def _delivered(r: redis.Redis, job_id: str) -> list[str]:
    """Batch ids of the job's messages a worker has taken and not acknowledged (kombu's unacked hash)."""
    entries = [json.loads(raw)[0] for raw in r.hvals("unacked")]
    return [b for b in (_batch_of(m) for m in entries) if b.startswith(f"{job_id}.")]


def _pool_children(worker: WorkerProcess) -> list[int]:
    assert worker.process is not None
    out = subprocess.run(["ps", "--ppid", str(worker.process.pid), "-o", "pid="],  # noqa: S607
                         capture_output=True, text=True, check=False).stdout
    return [int(pid) for pid in out.split()]


class _Frozen:
    """SIGSTOPs the worker's pool process: the main process takes one message (kept unacknowledged)
    and hands it over, the rest wait in the queue, as behind a slow or stuck worker."""

    def __init__(self, worker: WorkerProcess) -> None:
        self.pids = _pool_children(worker)
        assert self.pids, "the prefork worker has no pool process"

    def __enter__(self) -> _Frozen:
        for pid in self.pids:
            os.kill(pid, signal.SIGSTOP)
        return self

    def thaw(self) -> None:
        for pid in self.pids:
            os.kill(pid, signal.SIGCONT)

    def __exit__(self, *_: object) -> None:
        self.thaw()


def _embeds_run(worker: WorkerProcess) -> float:
    url = f"http://127.0.0.1:{worker.env['MMOS_WORKER_METRICS_PORT']}/metrics"
    for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for sample in family.samples:
            if sample.name == "mmos_worker_batches_total" and sample.labels == {"task": "embed", "outcome": "ok"}:
                return sample.value
    return 0.0


def test_batches_queued_behind_a_stuck_worker_are_not_sent_again(
    client: OpenSearch, index_name: str, store: JobStore, worker: WorkerProcess, model: MultimodalModel,
    schema: CatalogSchema, catalog: list[Product], redis_client: redis.Redis,
) -> None:
    products = catalog[:240]
    index_without_vectors(client, index_name, schema, products, model)
    queue, before = CeleryJobQueue(app), _embeds_run(worker)
    result: dict[str, object] = {}
    with _Frozen(worker) as frozen:
        job_id = enqueue(store, queue, index_name, [p.id for p in products], batch_size=10)
        wait_until(lambda: len(_delivered(redis_client, job_id)) == 1)  # one taken, 23 queued

        def wait() -> None:
            result["counts"] = wait_for_job(store, job_id, timeout_s=120, poll_s=0.1, queue=queue, resubmit_after_s=1)

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        # stuck for four resend delays: every batch is overdue and the job has stalled, yet each
        # message is still in the broker, so none is sent again
        time.sleep(4)
        in_broker = _queued(redis_client, job_id) + _delivered(redis_client, job_id)
        assert sorted(in_broker) == sorted(set(in_broker)) and len(in_broker) == 24
        frozen.thaw()
        waiter.join(120)
    counts = result["counts"]
    assert counts.written == len(products) and counts.batches_settled == counts.batches_enqueued == 24  # type: ignore[attr-defined]
    assert _queued(redis_client, job_id) == []  # no stale duplicates left behind
    wait_until(lambda: _delivered(redis_client, job_id) == [])  # the last ack follows the settle
    assert _embeds_run(worker) - before == 24  # each batch encoded once


def test_a_batch_whose_message_was_lost_is_sent_again_and_only_it(
    client: OpenSearch, index_name: str, store: JobStore, worker: WorkerProcess, model: MultimodalModel,
    schema: CatalogSchema, catalog: list[Product], redis_client: redis.Redis,
) -> None:
    products = catalog[:30]
    index_without_vectors(client, index_name, schema, products, model)
    queue, before = CeleryJobQueue(app), _embeds_run(worker)
    with _Frozen(worker):
        job_id = enqueue(store, queue, index_name, [p.id for p in products], batch_size=10)
        wait_until(lambda: len(_delivered(redis_client, job_id)) == 1 and len(_queued(redis_client, job_id)) == 2)
        raws = redis_client.lrange(MODEL_QUEUE, 0, -1)
        lost = next(raw for raw in raws if _batch_of(json.loads(raw)) == f"{job_id}.{_call(job_id, store)}.1")
        assert redis_client.lrem(MODEL_QUEUE, 1, lost) == 1  # the broker loses batch 1 (batch 0 is taken)

    counts = wait_for_job(store, job_id, timeout_s=60, poll_s=0.1, queue=queue, resubmit_after_s=1)

    assert counts.written == len(products) and counts.batches_settled == counts.batches_enqueued == 3
    assert _queued(redis_client, job_id) == []
    wait_until(lambda: _delivered(redis_client, job_id) == [])
    assert _embeds_run(worker) - before == 3  # the lost batch once (sent again), the others once


def test_the_broker_is_read_from_its_oldest_end_and_no_further_than_the_limit(
    client: OpenSearch, index_name: str, store: JobStore, worker: WorkerProcess, model: MultimodalModel,
    schema: CatalogSchema, catalog: list[Product], redis_client: redis.Redis,
) -> None:
    products = catalog[:50]
    index_without_vectors(client, index_name, schema, products, model)
    queue = CeleryJobQueue(app)
    with _Frozen(worker):
        job_id = enqueue(store, queue, index_name, [p.id for p in products], batch_size=10)
        wait_until(lambda: len(_delivered(redis_client, job_id)) == 1 and len(_queued(redis_client, job_id)) == 4)
        batches = [f"{job_id}.{_call(job_id, store)}.{n}" for n in range(5)]
        oldest = redis_client.lindex(MODEL_QUEUE, -1)  # batch 1: batch 0 was taken
        assert oldest is not None and _batch_of(json.loads(oldest)) == batches[1]
        redis_client.lrem(MODEL_QUEUE, 1, oldest)  # lost

        assert queue.pending_batch_ids(batches) == set(batches) - {batches[1]}  # 0 taken, 2-4 queued
        # reading only the 2 oldest of the 3 left, batch 1 cannot be ruled out: presumed queued, not resent
        assert CeleryJobQueue(app, scan_limit=2).pending_batch_ids(batches) == set(batches)
    counts = wait_for_job(store, job_id, timeout_s=60, poll_s=0.1, queue=queue, resubmit_after_s=1)
    assert counts.written == len(products)


def _call(job_id: str, store: JobStore) -> str:
    """The enqueue call's part of the job's batch ids (``job.call.number``)."""
    (first, *_) = store.in_flight(job_id)
    return first.split(".")[1]


# --- bounded state ------------------------------------------------------------------------------

class _Recording:
    """A queue that only keeps what it is given (the test settles the batches itself)."""

    def __init__(self) -> None:
        self.embeds: list = []

    def submit_embed(self, job: object) -> None:
        self.embeds.append(job)

    def submit_write(self, job: object) -> None:
        raise AssertionError("no write expected")

    def pending_batch_ids(self, batch_ids: object) -> set[str]:
        return set()


@pytest.fixture
def prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A key prefix of this test's own, so only its keys are measured; deleted afterwards."""
    name = f"mmos-test-{uuid.uuid4().hex[:8]}"
    yield name
    keys = list(redis_client.scan_iter(match=f"{name}:*", count=1000))
    if keys:
        redis_client.delete(*keys)


def _bytes_used(r: redis.Redis, prefix: str) -> int:
    """MEMORY USAGE summed over the prefix's keys (every member counted: samples=0)."""
    return sum(r.memory_usage(key, samples=0) or 0 for key in r.scan_iter(match=f"{prefix}:*", count=1000))


def test_the_change_feed_keeps_redis_flat_over_many_batches(
    client: OpenSearch, index_name: str, model: MultimodalModel, schema: CatalogSchema, catalog: list[Product],
    redis_client: redis.Redis, settings: Settings, prefix: str,
) -> None:
    products = catalog[:40]
    index_without_vectors(client, index_name, schema, products, model)
    store = JobStore(store_client(settings), prefix=prefix, retention_s=600, settled_window_s=0.5)
    queue = InlineQueue(lambda q: EmbedContext(client, store, q, schema, model))
    assert poll_changes(client, store, queue, index_name) == 0  # sets the checkpoint
    assert poll_changes(client, store, queue, index_name, batch_size=1) == 0  # the first poll counted its overlap as seen
    job_id, start, rounds = changes_job_id(index_name), time.monotonic(), 0

    def edit_and_poll() -> None:  # 8 products get a newer updated_at; one batch each
        nonlocal rounds
        rounds += 1
        stamp = (datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=rounds)).isoformat()
        edited = products[(8 * rounds) % 40:][:8]
        bulk(client, [{"_op_type": "update", "_index": index_name, "_id": p.id, "doc": {"updated_at": stamp}}
                      for p in edited], refresh=True)
        assert poll_changes(client, store, queue, index_name, batch_size=1) == len(edited)

    while rounds < 15 or time.monotonic() - start < 3:  # past the settled window several times
        edit_and_poll()
    warm, warm_batches = _bytes_used(redis_client, prefix), store.counts(job_id).batches_settled  # type: ignore[union-attr]
    while store.counts(job_id).batches_settled < warm_batches + 320:  # type: ignore[union-attr]
        edit_and_poll()

    counts = store.counts(job_id)
    assert counts is not None and counts.batches_enqueued == counts.batches_settled == 8 * rounds
    # each product's first edit embeds it (the index had no vectors); its later ones change no content
    assert (counts.written, counts.skipped, counts.failed) == (len(products), 8 * rounds - len(products), 0)
    grown = _bytes_used(redis_client, prefix) - warm
    print(f"redis bytes after {warm_batches} batches: {warm}; after {counts.batches_settled}: {warm + grown}")
    # what 320 more batches cost before: two sets of every batch id, ~40 KB
    assert grown < 8 * 1024, f"{grown} bytes more after {counts.batches_settled - warm_batches} more batches"


def test_a_redelivered_batch_counts_once_in_the_change_feeds_job(settings: Settings, prefix: str) -> None:
    store = JobStore(store_client(settings), prefix=prefix, settled_window_s=60)
    job_id = changes_job_id("products")
    store.ensure_job(job_id, "products", open_ended=True)
    store.mark_enqueued(job_id, f"{job_id}.a.0", {"batch_id": f"{job_id}.a.0"})

    assert store.settle(job_id, f"{job_id}.a.0", written=3)
    assert not store.settle(job_id, f"{job_id}.a.0", written=3)  # delivered again within the window

    counts = store.counts(job_id)
    assert counts is not None and (counts.batches_enqueued, counts.batches_settled, counts.written) == (1, 1, 3)
    assert store.in_flight(job_id) == []


def test_a_finished_job_expires_and_a_dead_letter_does_not(
    settings: Settings, prefix: str, redis_client: redis.Redis,
) -> None:
    store = JobStore(store_client(settings), prefix=prefix, retention_s=3600)
    queue = _Recording()
    job_id = enqueue(store, queue, "products", ["a", "b", "c"], batch_size=2)
    first, second = (job.batch_id for job in queue.embeds)
    store.settle(job_id, first, written=2)
    counts = store.counts(job_id)
    assert counts is not None and counts.status == "scanned" and counts.expires_in_s is None  # not finished yet

    store.settle(job_id, second, written=1)  # the last batch: nobody needs to wait on the job to finish it
    store.record_errors(job_id, [{"id": "c", "status": 400, "error": "x"}])

    counts = store.counts(job_id)
    assert counts is not None and counts.status == "finished" and 3500 < (counts.expires_in_s or 0) <= 3600
    keys = list(redis_client.scan_iter(match=f"{prefix}:job:{job_id}*"))
    assert len(keys) >= 4 and all(0 < redis_client.pttl(key) <= 3_600_000 for key in keys), keys
    letter = store.add_dead_letter("embed", {"job_id": job_id, "batch_id": "x", "ids": ["d"]}, "kept")
    assert [d.id for d in store.dead_letters()] == [letter]
    assert redis_client.pttl(f"{prefix}:dead") == redis_client.pttl(f"{prefix}:dead:order") == -1  # never expire
    store.set_change_checkpoint("products", "2024-01-01T00:00:00+00:00", {"a": "2024-01-01T00:00:00+00:00"})
    assert 0 < redis_client.pttl(f"{prefix}:changes:products") <= 3_600_000
    assert 0 < redis_client.pttl(f"{prefix}:changes:products:seen") <= 3_600_000


def test_a_job_taking_a_batch_again_keeps_its_record_until_it_finishes_again(
    settings: Settings, prefix: str, redis_client: redis.Redis,
) -> None:
    store, queue = JobStore(store_client(settings), prefix=prefix, retention_s=3600), _Recording()
    job_id = enqueue(store, queue, "products", ["a"])
    store.settle(job_id, queue.embeds[0].batch_id, dead=1)
    assert store.counts(job_id).status == "finished"  # type: ignore[union-attr]

    enqueue(store, queue, "products", ["a"], job_id=job_id)  # e.g. its dead letter retried

    counts = store.counts(job_id)
    assert counts is not None and counts.status == "scanned" and counts.expires_in_s is None
    assert redis_client.pttl(f"{prefix}:job:{job_id}:enqueued") == -1  # kept while the job is not finished
    store.settle(job_id, queue.embeds[1].batch_id, written=1)
    counts = wait_for_job(store, job_id, timeout_s=5, poll_s=0.05)
    assert counts.status == "finished" and counts.batches_settled == counts.batches_enqueued == 2
    assert store.counts(job_id).expires_in_s is not None  # type: ignore[union-attr]


def test_jobs_status_of_an_expired_job_says_it_is_gone(settings: Settings) -> None:
    from typer.testing import CliRunner  # noqa: PLC0415

    from mm_opensearch.cli.app import app as cli  # noqa: PLC0415

    store, queue = JobStore(store_client(settings), retention_s=0.2), _Recording()
    job_id = enqueue(store, queue, "products", ["a"])
    store.settle(job_id, queue.embeds[0].batch_id, written=1)
    wait_until(lambda: store.counts(job_id) is None, timeout_s=10)  # finished, then expired

    result = CliRunner().invoke(cli, ["jobs", "status", job_id], env={"COLUMNS": "200"})

    assert result.exit_code == 1
    assert f"no job '{job_id}'" in result.output and "expired" in result.output, result.output
    assert "Traceback" not in result.output


def test_a_batch_dead_lettered_twice_can_have_both_letters_retried(settings: Settings, prefix: str) -> None:
    """The stall guard may resend a batch that is still retrying; both copies dead-letter. Retrying the second
    found the job's dead count already at 0, and Redis refused the increment '-0' (the Lua script failed)."""
    store = JobStore(store_client(settings), prefix=prefix, retention_s=3600)
    queue = _Recording()
    job_id = enqueue(store, queue, "products", ["a", "b"], batch_size=2)
    payload = queue.embeds[0].to_dict()
    letters = [dead_letter(store, "embed", payload, "blocked") for _ in range(2)]
    assert retry_dead_letters(store, queue, letters) == letters
    counts = store.counts(job_id)
    assert counts is not None and counts.dead == 0
