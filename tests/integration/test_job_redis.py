"""Job state in the real Redis: the stall guard sends again only what the broker lost, and what a
job leaves in Redis is bounded (finished jobs expire, the change feed prunes what has settled)."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
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
    enqueue,
    poll_changes,
    redis_client,
    wait_for_job,
)
from mm_opensearch.catalog import CatalogSchema, Product, read_catalog
from mm_opensearch.config import Settings
from mm_opensearch.indexing.load import create_product_index, load_products
from mm_opensearch.towers import MultimodalModel
from tests.integration.celery_worker import WorkerProcess, purge_queues
from workers.app import IO_QUEUE, MODEL_QUEUE, CeleryJobQueue, app

pytestmark = pytest.mark.services


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path, settings: Settings) -> MultimodalModel:
    return MultimodalModel.load(tiny_model_dir, settings=settings, use_feature_cache=False)


@pytest.fixture(scope="module")
def worker(tiny_model_dir: Path, settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    purge_queues(settings)
    process = WorkerProcess(tiny_model_dir, tmp_path_factory.mktemp("logs") / "worker.log",
                            MMOS_WORKER_METRICS_PORT=str(_closed_port()))
    process.start()
    yield process
    process.stop()


@pytest.fixture
def store(settings: Settings) -> JobStore:
    return JobStore(redis_client(settings))


@pytest.fixture(scope="module")
def schema(settings: Settings) -> CatalogSchema:
    return CatalogSchema.from_settings(settings)


@pytest.fixture(scope="module")
def catalog(myntra_dir: Path, schema: CatalogSchema) -> list[Product]:
    stamp = datetime(2024, 1, 1, tzinfo=UTC).isoformat()
    products = read_catalog(myntra_dir / "products_without_images.jsonl.gz", schema, limit=300)
    return [Product(p.id, {**p.source, "updated_at": stamp}, p.text, p.image) for p in products]


def _index_without_vectors(client: OpenSearch, index: str, schema: CatalogSchema, products: list[Product],
                           model: MultimodalModel) -> None:
    create_product_index(client, index, schema, sample=products[0].source, model=model)
    report = load_products(client, index, products)
    assert report.succeeded == len(products) and not report.failed
    client.indices.refresh(index=index)


def _wait_until(predicate, timeout_s: float = 60.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


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
    _index_without_vectors(client, index_name, schema, products, model)
    queue, before = CeleryJobQueue(app), _embeds_run(worker)
    result: dict[str, object] = {}
    with _Frozen(worker) as frozen:
        job_id = enqueue(store, queue, index_name, [p.id for p in products], batch_size=10)
        _wait_until(lambda: len(_delivered(redis_client, job_id)) == 1)  # one taken, 23 queued

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
    _wait_until(lambda: _delivered(redis_client, job_id) == [])  # the last ack follows the settle
    assert _embeds_run(worker) - before == 24  # each batch encoded once


def test_a_batch_whose_message_was_lost_is_sent_again_and_only_it(
    client: OpenSearch, index_name: str, store: JobStore, worker: WorkerProcess, model: MultimodalModel,
    schema: CatalogSchema, catalog: list[Product], redis_client: redis.Redis,
) -> None:
    products = catalog[:30]
    _index_without_vectors(client, index_name, schema, products, model)
    queue, before = CeleryJobQueue(app), _embeds_run(worker)
    with _Frozen(worker):
        job_id = enqueue(store, queue, index_name, [p.id for p in products], batch_size=10)
        _wait_until(lambda: len(_delivered(redis_client, job_id)) == 1 and len(_queued(redis_client, job_id)) == 2)
        raws = redis_client.lrange(MODEL_QUEUE, 0, -1)
        lost = next(raw for raw in raws if _batch_of(json.loads(raw)) == f"{job_id}.{_call(job_id, store)}.1")
        assert redis_client.lrem(MODEL_QUEUE, 1, lost) == 1  # the broker loses batch 1 (batch 0 is taken)

    counts = wait_for_job(store, job_id, timeout_s=60, poll_s=0.1, queue=queue, resubmit_after_s=1)

    assert counts.written == len(products) and counts.batches_settled == counts.batches_enqueued == 3
    assert _queued(redis_client, job_id) == []
    _wait_until(lambda: _delivered(redis_client, job_id) == [])
    assert _embeds_run(worker) - before == 3  # the lost batch once (sent again), the others once


def _call(job_id: str, store: JobStore) -> str:
    """The enqueue call's part of the job's batch ids (``job.call.number``)."""
    (first, *_) = store.in_flight(job_id)
    return first.split(".")[1]
