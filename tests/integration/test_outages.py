"""Backfills across outages: the OpenSearch JVM SIGKILLed, a write block, Redis down past its client's retries.

Each test starts its own worker (the retry settings are the point) and stops it; the node and Redis
are the session's own, stopped and started again through the dev-services code, so the tests
after these still have them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from opensearchpy import OpenSearch

from mm_opensearch.backfill import JobStore, enqueue, run_backfill, wait_for_job
from mm_opensearch.catalog import CatalogSchema, Product
from mm_opensearch.config import Settings
from mm_opensearch.devservices import OpenSearchNode, RedisServer
from mm_opensearch.towers import MultimodalModel
from tests.integration.celery_worker import (
    Follower,
    WorkerProcess,
    assert_all_vectors_fresh,
    index_without_vectors,
    stamped_catalog,
    wait_until,
    RETRY_LINE,
    RIDE_OUT,
)
from mm_opensearch_workers.app import CeleryJobQueue, app
from tests.ports import free_port as closed_port

pytestmark = pytest.mark.services



@pytest.fixture(scope="module")
def model(tiny_model_dir: Path, settings: Settings) -> MultimodalModel:
    return MultimodalModel.load(tiny_model_dir, settings=settings, use_feature_cache=False)


@pytest.fixture(scope="module")
def catalog(myntra_dir: Path, schema: CatalogSchema) -> list[Product]:
    return stamped_catalog(myntra_dir, schema, 400)


def _dead_letters(store: JobStore, job_id: str) -> list:
    return [letter for letter in store.dead_letters() if letter.payload["job_id"] == job_id]


def _forget_dead_letters(store: JobStore, job_id: str) -> None:
    for letter in _dead_letters(store, job_id):
        store.remove_dead_letter(letter.id)


def _cli(env: dict[str, str], *args: str, timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    cli = str(Path(sys.executable).with_name("mm-opensearch"))
    return subprocess.run([cli, *args], env=env, capture_output=True, text=True, timeout=timeout_s, check=False)  # noqa: S603


@pytest.fixture
def cli_env(tiny_model_dir: Path) -> dict[str, str]:
    return {**os.environ, "MMOS_MODEL_DIR": str(tiny_model_dir), "COLUMNS": "200"}


# --- the retry settings are the ones in force -------------------------------------------------------


def test_a_worker_retries_as_often_as_it_is_configured_to(
    store: JobStore, start_worker: Callable[..., WorkerProcess],
) -> None:
    # Celery's own task default (3 retries) used to win over MMOS_WORKER_MAX_RETRIES
    worker = start_worker(MMOS_OPENSEARCH_HOSTS=f"http://127.0.0.1:{closed_port()}", MMOS_WORKER_MAX_RETRIES="5",
                          MMOS_WORKER_RETRY_BACKOFF_MAX_S="1")
    job_id = enqueue(store, CeleryJobQueue(app), "unreachable", ["a", "b"], batch_size=2)
    counts = wait_for_job(store, job_id, timeout_s=60)
    try:
        assert counts.dead == 2
        (letter,) = _dead_letters(store, job_id)
        assert "ConnectionError" in letter.reason and "still failing after 5 retries" in letter.reason, letter.reason
        assert len(RETRY_LINE.findall(worker.log.read_bytes())) == 5
    finally:
        _forget_dead_letters(store, job_id)


def test_a_worker_stops_retrying_when_its_time_budget_is_spent(
    store: JobStore, start_worker: Callable[..., WorkerProcess],
) -> None:
    start_worker(MMOS_OPENSEARCH_HOSTS=f"http://127.0.0.1:{closed_port()}", MMOS_WORKER_MAX_RETRIES="1000",
                 MMOS_WORKER_RETRY_BUDGET_S="6", MMOS_WORKER_RETRY_BACKOFF_MAX_S="1")
    started = time.monotonic()
    job_id = enqueue(store, CeleryJobQueue(app), "unreachable", ["a"], batch_size=1)
    counts = wait_for_job(store, job_id, timeout_s=60)
    elapsed = time.monotonic() - started
    try:
        assert counts.dead == 1
        (letter,) = _dead_letters(store, job_id)
        retries = int(re.search(r"after (\d+) retries", letter.reason).group(1))  # type: ignore[union-attr]
        assert "MMOS_WORKER_RETRY_BUDGET_S=6" in letter.reason and retries > 3, letter.reason
        assert 6 <= elapsed < 40  # the budget, not the count (1000 retries of 0.5-1 s), ended it
    finally:
        _forget_dead_letters(store, job_id)


# --- OpenSearch down ---------------------------------------------------------------------------------


def test_a_backfill_rides_out_the_opensearch_node_killed_and_started_30_s_later(
    client: OpenSearch, index_name: str, store: JobStore, start_worker: Callable[..., WorkerProcess],
    model: MultimodalModel, schema: CatalogSchema, catalog: list[Product], settings: Settings,
) -> None:
    products = catalog[:300]
    index_without_vectors(client, index_name, schema, products, model)
    worker = start_worker(**RIDE_OUT)
    job_id, result = f"backfill-{index_name}", {}
    began = time.monotonic()

    def backfill() -> None:
        try:
            result["counts"] = run_backfill(client, store, CeleryJobQueue(app), index_name, schema=schema,
                                            batch_size=10, timeout_s=600)
        except Exception as e:  # noqa: BLE001 - reported below, after the dead letters
            result["error"] = e

    follower = Follower(client, store, index_name).start()  # `jobs follow` beside the backfill, across the outage
    thread = threading.Thread(target=backfill)
    thread.start()
    wait_until(lambda: (c := store.counts(job_id)) is not None and c.status == "scanned" and c.written >= 30,
                what="a tenth of the products written")
    node = OpenSearchNode(settings)
    try:
        assert node.kill()  # SIGKILL: no shutdown, no flush
        killed, killed_at = store.counts(job_id), time.monotonic()
        time.sleep(30)  # the outage itself
    finally:
        node.start()  # the same node (pid file, data), also when the test fails
        health = client.cluster.health(wait_for_status="green", timeout="120s", request_timeout=130)
        assert health["status"] == "green"
    restarted = time.monotonic()
    thread.join(600)
    finished = time.monotonic()
    letters = _dead_letters(store, job_id)
    _forget_dead_letters(store, job_id)
    assert not letters, f"{sum(len(d.payload.get('ids') or d.payload['actions']) for d in letters)} products " \
                        f"dead-lettered during the outage, e.g. {letters[0].reason}"
    assert not thread.is_alive() and "counts" in result, f"the backfill did not finish: {result.get('error')!r}"
    counts = result["counts"]
    retries = len(RETRY_LINE.findall(worker.log.read_bytes()))
    print(f"\noutage: {len(products)} products, {killed.written} written before the kill, "  # type: ignore[union-attr]
          f"{retries} retries, {counts.dead} dead letters, {counts.written} written + {counts.skipped} skipped; "
          f"node down {restarted - killed_at:.0f} s (dead 30 s, then starting), backfill {finished - began:.0f} s "
          f"in all, finished {finished - restarted:.0f} s after the node was green again")
    assert killed is not None and killed.written < len(products)
    assert retries > 0  # the outage did hit batches in flight
    assert counts.dead == counts.failed == 0
    assert counts.written + counts.skipped == len(products)  # a batch written before the kill may be re-read
    try:
        edited = follower.assert_alive_and_following(products[0], schema)
    finally:
        follower.close()
    assert_all_vectors_fresh(client, index_name, model, [edited, *products[1:]])


def test_a_write_block_set_during_a_backfill_is_waited_out(
    client: OpenSearch, index_name: str, store: JobStore, start_worker: Callable[..., WorkerProcess],
    model: MultimodalModel, schema: CatalogSchema, catalog: list[Product],
) -> None:
    products = catalog[:400]
    index_without_vectors(client, index_name, schema, products, model)
    worker = start_worker(**RIDE_OUT)
    job_id, result = f"backfill-{index_name}", {}

    def backfill() -> None:
        result["counts"] = run_backfill(client, store, CeleryJobQueue(app), index_name, schema=schema,
                                        batch_size=5, timeout_s=300)

    thread = threading.Thread(target=backfill)
    thread.start()
    wait_until(lambda: (c := store.counts(job_id)) is not None and c.written >= 10, what="some products written")
    client.indices.put_settings(index=index_name, body={"index.blocks.write": True})
    try:
        wait_until(lambda: b"cluster_block_exception" in worker.log.read_bytes()  # retried
                    or store.errors(job_id, limit=1) != [], what="a write refused by the block")  # or given up
        time.sleep(3)  # blocked for a few seconds
    finally:
        client.indices.put_settings(index=index_name, body={"index.blocks.write": None})
    thread.join(300)
    counts = result["counts"]
    assert store.errors(job_id) == []  # no product failed, none was dead-lettered
    assert counts.dead == counts.failed == 0 and not _dead_letters(store, job_id)
    assert counts.written + counts.skipped == len(products)
    assert_all_vectors_fresh(client, index_name, model, products)


def test_a_backfill_with_dead_letters_exits_non_zero_and_their_retry_moves_the_counts_back(
    client: OpenSearch, index_name: str, store: JobStore, start_worker: Callable[..., WorkerProcess],
    model: MultimodalModel, schema: CatalogSchema, catalog: list[Product], cli_env: dict[str, str],
) -> None:
    products = catalog[:30]
    index_without_vectors(client, index_name, schema, products, model)
    start_worker(MMOS_WORKER_MAX_RETRIES="0")  # a write block dead-letters every batch at once
    job_id = f"backfill-{index_name}"
    client.indices.put_settings(index=index_name, body={"index.blocks.write": True})
    try:
        done = _cli(cli_env, "backfill", index_name, "--batch-size", "10", "--timeout", "120")
    finally:
        client.indices.put_settings(index=index_name, body={"index.blocks.write": None})
    try:
        said, batches = " ".join(done.stderr.split()), len(_dead_letters(store, job_id))  # two scan slices: 3 or 4
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"job {job_id} finished with 30 products dead-lettered ({batches} batches)" in said, said
        assert f"`mm-opensearch jobs dead-letters --job {job_id} --retry`" in said
        assert "Traceback" not in done.stderr
        waited = _cli(cli_env, "jobs", "wait", job_id, "--timeout", "60")  # the same verdict when waited on again
        assert waited.returncode == 1 and f"({batches} batches)" in " ".join(waited.stderr.split()), waited.stderr

        retried = _cli(cli_env, "jobs", "dead-letters", "--job", job_id, "--retry")
        assert retried.returncode == 0, retried.stderr
        said = " ".join(retried.stdout.split())
        assert f"resubmitted {batches} batches" in said and f"mm-opensearch jobs wait {job_id}" in said
        waited = _cli(cli_env, "jobs", "wait", job_id, "--timeout", "60")
        assert waited.returncode == 0, waited.stdout + waited.stderr
    finally:
        _forget_dead_letters(store, job_id)
    counts = store.counts(job_id)
    assert counts is not None and (counts.written, counts.dead, counts.failed) == (30, 0, 0)  # not written 30, dead 30
    assert_all_vectors_fresh(client, index_name, model, products)


# --- Redis down ----------------------------------------------------------------------------------------


def test_a_backfill_waits_for_redis_down_longer_than_its_client_retries(
    client: OpenSearch, index_name: str, store: JobStore, start_worker: Callable[..., WorkerProcess],
    model: MultimodalModel, schema: CatalogSchema, catalog: list[Product], settings: Settings,
    cli_env: dict[str, str], tmp_path: Path,
) -> None:
    products = catalog[:40]
    index_without_vectors(client, index_name, schema, products, model)
    job_id = f"backfill-{index_name}"
    out, err = tmp_path / "backfill.out", tmp_path / "backfill.err"
    cli = str(Path(sys.executable).with_name("mm-opensearch"))
    with out.open("wb") as stdout, err.open("wb") as stderr:  # no worker yet: the backfill scans, then waits
        backfill = subprocess.Popen([cli, "backfill", index_name, "--batch-size", "10", "--timeout", "300"],  # noqa: S603
                                    env=cli_env, stdout=stdout, stderr=stderr)
    server = RedisServer(settings)
    follower = Follower(client, store, index_name).start()  # `jobs follow` too rides the outage out
    try:
        try:
            wait_until(lambda: (c := store.counts(job_id)) is not None and c.status == "scanned", what="the scan")
            assert server.stop()
            # redis_client retries for ~30 s; the backfill used to die with a traceback right after
            wait_until(lambda: b"is unreachable" in err.read_bytes() or backfill.poll() is not None, timeout_s=90,
                        what="the unreachable message")
            assert backfill.poll() is None, f"backfill exited with {backfill.returncode} while Redis was down: " \
                                            f"{err.read_text()[-1500:]}"
        finally:
            server.start()  # Redis is back for the tests that follow, whatever happened here
        start_worker()
        backfill.wait(180)
    finally:
        backfill.kill()  # a no-op once it has exited
    log = err.read_text()
    assert backfill.returncode == 0, log
    assert f"Redis at 127.0.0.1:{settings.dev_redis_port}/0 is unreachable" in log and "answers again" in log
    assert "Traceback" not in log
    assert re.search(r"finished\s*│\s*40\s*│\s*40\s*│", out.read_text()), out.read_text()  # status, total, written
    try:
        edited = follower.assert_alive_and_following(products[0], schema)
    finally:
        follower.close()
    assert_all_vectors_fresh(client, index_name, model, [edited, *products[1:]])
