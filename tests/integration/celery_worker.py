"""A real ``celery worker`` subprocess for the integration tests, with a tiny model on disk."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import redis
from opensearchpy import OpenSearch

from mm_opensearch.backfill import JobStore, changes_job_id, follow_changes
from mm_opensearch.catalog import CatalogSchema, Product, read_catalog, to_product
from mm_opensearch.config import Settings
from mm_opensearch.indexing.load import (
    create_product_index,
    load_products,
    product_vectors,
)
from mm_opensearch.indexing.mappings import VECTOR_FIELDS
from mm_opensearch.towers import MultimodalModel
from mm_opensearch_workers.app import IO_QUEUE, MODEL_QUEUE, CeleryJobQueue, app

REPO = Path(__file__).resolve().parents[2]
# Retries that ride out minutes of outage, backing off to 2 s so a test does not wait long once it
# ends. The time limit stays above a request to a node that is starting (5 s timeout, 3 client retries).
RIDE_OUT = {"MMOS_WORKER_MAX_RETRIES": "1000", "MMOS_WORKER_RETRY_BUDGET_S": "300",
            "MMOS_WORKER_RETRY_BACKOFF_MAX_S": "2", "MMOS_WORKER_TASK_TIME_LIMIT_S": "60",
            "MMOS_WORKER_VISIBILITY_TIMEOUT_S": "120", "MMOS_OPENSEARCH_TIMEOUT_S": "5"}
RETRY_LINE = re.compile(rb"; retry \d+ in ")  # what a worker logs for each batch it backs off
TEST_LIMITS = {"MMOS_WORKER_TASK_TIME_LIMIT_S": "10", "MMOS_WORKER_VISIBILITY_TIMEOUT_S": "12"}


class WorkerProcess:
    """Start, SIGKILL and restart one worker (its own process group, so children die with it)."""

    def __init__(self, model_dir: Path, log: Path, **env: str) -> None:
        self.env = {**os.environ, "MMOS_MODEL_DIR": str(model_dir), "MMOS_TORCH_THREADS": "1",
                    "MMOS_WORKER_MAX_RETRIES": "3", "MMOS_WORKER_RETRY_BACKOFF_MAX_S": "1",
                    "PYTHONPATH": str(REPO), **TEST_LIMITS, **env}
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", "mm_opensearch_workers.app", "worker", "-Q", f"{MODEL_QUEUE},{IO_QUEUE}",
                "--concurrency", "1", "--pool", "prefork", "--loglevel", "info", "--without-gossip",
                "--without-mingle", "--without-heartbeat"]

    def start(self, timeout_s: float = 60) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.argv(), env=self.env, stdout=out, stderr=subprocess.STDOUT,  # noqa: S603
                                            cwd=REPO, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if b" ready." in self.log.read_bytes()[offset:]:
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready after {timeout_s} s: {self.log.read_text()[-2000:]}")

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the worker's log, for an assertion message."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children), as an OOM killer would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def purge_queues(settings: Settings) -> None:
    """Drop messages left by earlier runs (they would target deleted indices)."""
    r = redis.Redis.from_url(settings.redis_url.get_secret_value())
    r.delete(MODEL_QUEUE, IO_QUEUE, "unacked", "unacked_index")
    r.close()


def fused_vectors(client: OpenSearch, index: str) -> dict[str, np.ndarray]:
    """id -> stored fused vector of every document that has one."""
    client.indices.refresh(index=index)
    body = {"size": 10_000, "_source": [VECTOR_FIELDS["fused"]], "query": {"exists": {"field": VECTOR_FIELDS["fused"]}}}
    hits = client.search(index=index, body=body)["hits"]["hits"]
    return {hit["_id"]: np.asarray(hit["_source"][VECTOR_FIELDS["fused"]], dtype=np.float32) for hit in hits}


# The installed command beside this interpreter, or the same entry point through it (an uninstalled checkout).
_SCRIPT = Path(sys.executable).with_name("mm-opensearch")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-c", "from mm_opensearch.cli.app import main; main()"]


def stamped_catalog(myntra_dir: Path, schema: CatalogSchema, limit: int) -> list[Product]:
    """The first ``limit`` Myntra products without images, all updated at one fixed time."""
    stamp = datetime(2024, 1, 1, tzinfo=UTC).isoformat()
    products = read_catalog(myntra_dir / "products_without_images.jsonl.gz", schema, limit=limit)
    return [Product(p.id, {**p.source, "updated_at": stamp}, p.text, p.image) for p in products]


def index_without_vectors(client: OpenSearch, index: str, schema: CatalogSchema, products: list[Product],
                          model: MultimodalModel) -> None:
    """An index mapped for ``model``'s vectors holding the products' BM25 fields only (what a backfill fills)."""
    create_product_index(client, index, schema, sample=products[0].source, model=model)
    report = load_products(client, index, products)
    assert report.succeeded == len(products) and not report.failed
    client.indices.refresh(index=index)


def stale_vectors(client: OpenSearch, index: str, model: MultimodalModel, products: list[Product]) -> list[str]:
    """The ids of ``products`` whose stored fused vector is missing or not what an encode of them gives now."""
    stored = fused_vectors(client, index)
    return [product.id for product, expected in zip(products, product_vectors(model, products), strict=True)
            if expected is None or product.id not in stored
            or not np.allclose(stored[product.id], expected["mm_fused"], atol=1e-5)]


def assert_all_vectors_fresh(client: OpenSearch, index: str, model: MultimodalModel, products: list[Product]) -> None:
    """Every product has the vector an encode of it gives now: none missing, none duplicated, none of another."""
    assert client.count(index=index)["count"] == len(products)
    stored = fused_vectors(client, index)
    assert sorted(stored) == sorted(p.id for p in products)
    for product, expected in zip(products, product_vectors(model, products), strict=True):
        assert expected is not None
        np.testing.assert_allclose(stored[product.id], expected["mm_fused"], atol=1e-5)


def wait_until(predicate: Callable[[], bool], timeout_s: float = 60.0, what: str = "condition") -> None:
    """Poll ``predicate`` every 50 ms; fail the test naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached in {timeout_s:.0f} s"
        time.sleep(0.05)


class Follower:
    """``follow_changes`` in a thread, as ``jobs follow`` runs it; an exception that ends it is kept."""

    def __init__(self, client: OpenSearch, store: JobStore, index: str) -> None:
        self.client, self.store, self.index = client, store, index
        self.stop, self.error = threading.Event(), None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            follow_changes(self.client, self.store, CeleryJobQueue(app), self.index, stop=self.stop, interval_s=0.5)
        except BaseException as e:  # noqa: BLE001 - the test asserts there was none
            self.error = e

    def start(self) -> Follower:
        self.thread.start()
        wait_until(lambda: self.store.change_checkpoint(self.index)[0] is not None, what="the feed's first poll")
        return self

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)

    def assert_alive_and_following(self, product: Product, schema: CatalogSchema) -> Product:
        """Edit ``product`` now; the feed, still running, gets it re-embedded. Returns the edited product."""
        assert self.thread.is_alive(), f"the change feed ended: {self.error!r}"
        job = changes_job_id(self.index)
        before = counts.written if (counts := self.store.counts(job)) is not None else 0
        source = {**product.source, "title": f"{product.source['title']} (edited)",
                  "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.client.index(index=self.index, id=product.id, body=source, refresh=True)
        wait_until(lambda: (c := self.store.counts(job)) is not None and c.written > before, timeout_s=120,
                    what="the edit re-embedded by the feed")
        return to_product(source, schema)
