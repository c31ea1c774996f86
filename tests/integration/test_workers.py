"""Backfill through a real Celery worker: crashes, Redis restarts, stale writes, failing images."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from opensearchpy import OpenSearch
from prometheus_client.parser import text_string_to_metric_families

from mm_opensearch.backfill import (
    BackfillTimeoutError,
    EmbedContext,
    EmbedJob,
    JobStore,
    WriteJob,
    changes_job_id,
    embed_step,
    enqueue,
    follow_changes,
    poll_changes,
    retry_dead_letters,
    run_backfill,
    wait_for_job,
    write_step,
)
from mm_opensearch.catalog import CatalogSchema, Product
from mm_opensearch.config import Settings
from mm_opensearch.devservices import RedisServer
from mm_opensearch.indexing.load import create_product_index, load_products, product_vectors
from mm_opensearch.towers import MultimodalModel
from tests.integration.celery_worker import (
    REPO,
    WorkerProcess,
    assert_all_vectors_fresh,
    fused_vectors,
    index_without_vectors,
    purge_queues,
    stamped_catalog,
    wait_until,
)
from tests.ports import free_port as closed_port
from mm_opensearch_workers.app import CeleryJobQueue, app

pytestmark = pytest.mark.services

N_PRODUCTS = 2000


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path, settings: Settings) -> MultimodalModel:
    return MultimodalModel.load(tiny_model_dir, settings=settings.model_copy(
        update={"image_fetch_allow_networks": ["127.0.0.0/8"]}), use_feature_cache=False)


@pytest.fixture(scope="module")
def worker(tiny_model_dir: Path, settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    purge_queues(settings)
    process = WorkerProcess(tiny_model_dir, tmp_path_factory.mktemp("logs") / "worker.log",
                            MMOS_IMAGE_FETCH_ALLOW_NETWORKS="127.0.0.0/8", MMOS_IMAGE_FETCH_TIMEOUT_S="2",
                            MMOS_WORKER_METRICS_PORT=str(closed_port()))
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def catalog(myntra_dir: Path, schema: CatalogSchema) -> list[Product]:
    return stamped_catalog(myntra_dir, schema, N_PRODUCTS)


def test_backfill_survives_sigkill_of_the_worker(
    client: OpenSearch, index_name: str, store: JobStore, worker: WorkerProcess, model: MultimodalModel,
    schema: CatalogSchema, catalog: list[Product],
) -> None:
    index_without_vectors(client, index_name, schema, catalog, model)
    result: dict[str, object] = {}

    def backfill() -> None:
        # A message the killed worker had popped (BRPOP) but not yet listed as unacknowledged is lost
        # outright: no visibility timeout brings it back, the stall guard does. CI once lost one; the
        # guard waits past the task time limit (10 s here) before it looks at the broker.
        try:
            result["counts"] = run_backfill(client, store, CeleryJobQueue(app), index_name, schema=schema,
                                            batch_size=25, tune=True, timeout_s=120, resubmit_after_s=15)
        except Exception as e:  # noqa: BLE001 - shown by the assertion below
            result["error"] = e

    thread = threading.Thread(target=backfill)
    thread.start()
    job = f"backfill-{index_name}"
    wait_until(lambda: (c := store.counts(job)) is not None and c.written >= N_PRODUCTS // 4)
    worker.kill()
    killed_at = store.counts(job)
    worker.start()
    thread.join(150)
    assert "counts" in result, f"{result.get('error')!r}; {store.counts(job)}; worker log: {worker.log_tail()}"
    counts = result["counts"]
    assert killed_at is not None and killed_at.written < N_PRODUCTS
    # a batch written just before the kill is redelivered and then skipped as already current
    assert counts.written + counts.skipped == N_PRODUCTS and counts.failed == counts.dead == 0  # type: ignore[attr-defined]
    settings = client.indices.get_settings(index=index_name)[index_name]["settings"]["index"]
    assert settings["refresh_interval"] == "1s"  # restored after the bulk-load tuning
    assert_all_vectors_fresh(client, index_name, model, catalog)


def test_backfill_completes_across_a_redis_restart(
    client: OpenSearch, index_name: str, store: JobStore, worker: WorkerProcess, model: MultimodalModel,
    schema: CatalogSchema, catalog: list[Product], settings: Settings,
) -> None:
    products = catalog[:1000]
    index_without_vectors(client, index_name, schema, products, model)
    result: dict[str, object] = {}

    def backfill() -> None:
        result["counts"] = run_backfill(client, store, CeleryJobQueue(app), index_name, schema=schema,
                                        batch_size=25, timeout_s=120, resubmit_after_s=10)

    thread = threading.Thread(target=backfill)
    thread.start()
    job = f"backfill-{index_name}"
    wait_until(lambda: (c := store.counts(job)) is not None and c.written >= 200)
    server = RedisServer(settings)
    assert server.stop()
    time.sleep(1.0)
    server.start()
    thread.join(150)
    assert not thread.is_alive()
    assert result["counts"].written + result["counts"].skipped >= len(products)  # type: ignore[attr-defined]
    assert_all_vectors_fresh(client, index_name, model, products)


def _plant_lost_batch(store: JobStore, job_id: str, index: str, products: list[Product]) -> None:
    """A batch counted as enqueued whose message the broker lost (it never reaches a worker)."""
    lost = EmbedJob(index, tuple(p.id for p in products), job_id, f"{job_id}.lost")
    store.ensure_job(job_id, index)
    store.mark_enqueued(job_id, lost.batch_id, lost.to_dict())


def test_a_batch_the_broker_lost_is_sent_again_when_the_job_stalls(
    client: OpenSearch, index_name: str, store: JobStore, worker: WorkerProcess, model: MultimodalModel,
    schema: CatalogSchema, catalog: list[Product],
) -> None:
    products = catalog[:30]
    index_without_vectors(client, index_name, schema, products, model)
    job_id = enqueue(store, CeleryJobQueue(app), index_name, [p.id for p in products[:20]], batch_size=10)
    _plant_lost_batch(store, job_id, index_name, products[20:])

    counts = wait_for_job(store, job_id, timeout_s=60, queue=CeleryJobQueue(app), resubmit_after_s=3)

    assert counts.written == len(products) and counts.batches_settled == counts.batches_enqueued == 3
    assert store.in_flight(job_id) == []
    assert_all_vectors_fresh(client, index_name, model, products)


def test_the_change_feed_re_embeds_edited_products(
    client: OpenSearch, index_name: str, store: JobStore, worker: WorkerProcess, model: MultimodalModel,
    schema: CatalogSchema, catalog: list[Product],
) -> None:
    products = catalog[:20]
    index_without_vectors(client, index_name, schema, products, model)
    run_backfill(client, store, CeleryJobQueue(app), index_name, schema=schema, timeout_s=60)
    queue, job_id = CeleryJobQueue(app), changes_job_id(index_name)
    assert poll_changes(client, store, queue, index_name) == 0  # the first poll only sets the checkpoint

    edited = {**products[0].source, "title": "Completely Different Red Raincoat", "updated_at": "2024-06-01T00:00:00Z"}
    client.index(index=index_name, id=products[0].id, body=edited, refresh=True)
    assert poll_changes(client, store, queue, index_name) == 1  # the first poll counted its overlap as seen
    counts = wait_for_job(store, job_id, timeout_s=60)
    assert (counts.written, counts.skipped) == (1, 0)
    assert poll_changes(client, store, queue, index_name) == 0  # the edit was enqueued already: no task

    later = {**products[1].source, "title": "Yellow Polka Dot Umbrella", "updated_at": "2024-06-02T00:00:00Z"}
    client.index(index=index_name, id=products[1].id, body=later, refresh=True)
    assert poll_changes(client, store, queue, index_name) == 1
    counts = wait_for_job(store, job_id, timeout_s=60)
    assert counts.written == 2
    now = [Product(p.id, source, *_inputs(source, schema)) for p, source in zip(products, (edited, later), strict=False)]
    assert_all_vectors_fresh(client, index_name, model, [*now, *products[2:]])


def test_the_change_feed_follower_sends_a_lost_batch_again(
    client: OpenSearch, index_name: str, store: JobStore, worker: WorkerProcess, model: MultimodalModel,
    schema: CatalogSchema, catalog: list[Product],
) -> None:
    products = catalog[:10]
    index_without_vectors(client, index_name, schema, products, model)
    job_id = changes_job_id(index_name)
    _plant_lost_batch(store, job_id, index_name, products[:-1])  # older edits, out of the feed's overlap
    stop = threading.Event()
    follower = threading.Thread(target=follow_changes, args=(client, store, CeleryJobQueue(app), index_name),
                                kwargs={"stop": stop, "interval_s": 0.2, "resubmit_after_s": 2})
    follower.start()
    try:  # a later edit's batch settles, so the queue went past the lost one: it is sent again after 2 s
        wait_until(lambda: store.change_checkpoint(index_name)[0] is not None)  # the first poll: a checkpoint only
        newest = {**products[-1].source, "updated_at": "2024-06-01T00:00:00Z"}  # the feed keeps polling this one
        client.index(index=index_name, id=products[-1].id, body=newest, refresh=True)
        wait_until(lambda: f"{job_id}.lost" not in store.in_flight(job_id))
    finally:
        stop.set()
        follower.join(10)
    assert store.counts(job_id).written == len(products)  # type: ignore[union-attr]
    now = [*products[:-1], Product(products[-1].id, newest, *_inputs(newest, schema))]
    assert_all_vectors_fresh(client, index_name, model, now)


def test_a_backfill_started_without_waiting_is_waited_for_from_the_cli(
    client: OpenSearch, index_name: str, worker: WorkerProcess, model: MultimodalModel, schema: CatalogSchema,
    catalog: list[Product], tiny_model_dir: Path,
) -> None:
    products = catalog[:30]
    index_without_vectors(client, index_name, schema, products, model)
    cli = [str(Path(sys.executable).with_name("mm-opensearch"))]
    env = {**os.environ, "MMOS_MODEL_DIR": str(tiny_model_dir), "COLUMNS": "200"}

    started = subprocess.run([*cli, "backfill", index_name, "--no-wait", "--batch-size", "10"],  # noqa: S603
                             env=env, capture_output=True, text=True, timeout=120, check=False)
    assert started.returncode == 0, started.stderr
    assert f"mm-opensearch jobs wait backfill-{index_name}" in started.stdout
    waited = subprocess.run([*cli, "jobs", "wait", f"backfill-{index_name}", "--timeout", "60"],  # noqa: S603
                            env=env, capture_output=True, text=True, timeout=120, check=False)

    assert waited.returncode == 0, waited.stderr
    assert re.search(r"finished\s*│\s*30\s*│\s*30\s*│", waited.stdout), waited.stdout  # status, total, written
    assert_all_vectors_fresh(client, index_name, model, products)


def test_resending_backs_off_while_no_worker_takes_the_batches(store: JobStore) -> None:
    queue = RecordingQueue()
    job_id = enqueue(store, queue, "no-such-index", [str(i) for i in range(4)], batch_size=2)
    assert len(queue.embeds) == 2 and len(store.in_flight(job_id)) == 2
    oldest = store.oldest_in_flight(job_id)
    assert oldest is not None and oldest[0] == queue.embeds[0].batch_id and 0 <= oldest[1] < 5

    with pytest.raises(BackfillTimeoutError):
        wait_for_job(store, job_id, timeout_s=5, poll_s=0.05, queue=queue, resubmit_after_s=1)

    # the job stalled: each batch is sent again after ~1 s and ~3 s (its wait doubles), not every poll
    assert len(queue.embeds) == 2 + 2 * 2
    assert sorted(j.batch_id for j in queue.embeds[2:]) == sorted(2 * [j.batch_id for j in queue.embeds[:2]])
    store.settle(job_id, queue.embeds[0].batch_id, written=2)
    assert store.in_flight(job_id) == [queue.embeds[1].batch_id]


class RecordingQueue:
    """Keeps submitted jobs so the test decides when (and in which order) they run."""

    def __init__(self) -> None:
        self.embeds: list[EmbedJob] = []
        self.writes: list[WriteJob] = []

    def submit_embed(self, job: EmbedJob) -> None:
        self.embeds.append(job)

    def submit_write(self, job: WriteJob) -> None:
        self.writes.append(job)

    def pending_batch_ids(self, batch_ids: Collection[str]) -> set[str]:
        return set()  # whatever it holds, the test treats as lost


def test_a_vector_of_an_older_version_is_refused(
    client: OpenSearch, index_name: str, store: JobStore, model: MultimodalModel, schema: CatalogSchema,
    catalog: list[Product],
) -> None:
    products = catalog[:3]
    index_without_vectors(client, index_name, schema, products, model)
    queue = RecordingQueue()
    ctx = EmbedContext(client, store, queue, schema, model)
    target = products[0]
    embed_step(ctx, EmbedJob(index_name, (target.id,), "stale-test", "b0"))
    (stale_write,) = queue.writes
    new_source = {**target.source, "title": "Completely Different Red Raincoat", "updated_at": "2024-06-01T00:00:00Z"}
    client.index(index=index_name, id=target.id, body=new_source, refresh=True)

    write_step(ctx, stale_write)  # arrives after the newer version: must not land

    doc = client.get(index=index_name, id=target.id)["_source"]
    assert "mm_fused" not in doc and doc["title"] == new_source["title"]
    (reread,) = queue.embeds  # the refused product goes back to be read and encoded again
    assert reread.ids == (target.id,) and reread.attempt == 1
    embed_step(ctx, reread)
    write_step(ctx, queue.writes[-1])
    changed = Product(target.id, new_source, *_inputs(new_source, schema))
    stored = fused_vectors(client, index_name)[target.id]
    expected = product_vectors(model, [changed])[0]
    assert expected is not None
    np.testing.assert_allclose(stored, expected["mm_fused"], atol=1e-5)
    assert not np.allclose(stored, product_vectors(model, [target])[0]["mm_fused"], atol=1e-3)  # type: ignore[index]


def _inputs(source: dict, schema: CatalogSchema) -> tuple[str | None, str | None]:
    from mm_opensearch.catalog import to_product  # noqa: PLC0415

    product = to_product(source, schema)
    return product.text, product.image


def _worker_metrics(worker: WorkerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, labels) -> value, scraped from the worker's metrics port."""
    url = f"http://127.0.0.1:{worker.env['MMOS_WORKER_METRICS_PORT']}/metrics"
    text = httpx.get(url, timeout=10).text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_the_worker_exports_prometheus_metrics_summed_over_its_processes(
    client: OpenSearch, index_name: str, store: JobStore, worker: WorkerProcess, model: MultimodalModel,
    schema: CatalogSchema, catalog: list[Product],
) -> None:
    products = catalog[:40]
    index_without_vectors(client, index_name, schema, products, model)
    before = _worker_metrics(worker)
    assert ("mmos_worker_batches_total", (("outcome", "dead"), ("task", "write"))) in before  # zero, yet listed

    run_backfill(client, store, CeleryJobQueue(app), index_name, schema=schema, batch_size=10, timeout_s=60)

    after = _worker_metrics(worker)
    def delta(name: str, **labels: str) -> float:  # noqa: E306
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("mmos_worker_products_total", outcome="written") == len(products)  # only this index is alive
    assert delta("mmos_worker_products_total", outcome="failed") == 0
    # at least this backfill's 4 batches (a duplicate left by an earlier test may run meanwhile)
    assert delta("mmos_worker_batches_total", task="embed", outcome="ok") >= 4
    assert delta("mmos_worker_batches_total", task="write", outcome="ok") >= 4
    assert delta("mmos_worker_batch_seconds_count", task="embed") >= 4


def test_unreachable_images_give_text_only_vectors_with_the_error_recorded(
    client: OpenSearch, index_name: str, store: JobStore, worker: WorkerProcess, model: MultimodalModel,
    schema: CatalogSchema, catalog: list[Product],
) -> None:
    urls = [f"http://127.0.0.1:{closed_port()}/x.jpg", "http://169.254.169.254/latest/meta-data/x.jpg"]
    products = [Product(p.id, {**p.source, "image": url}, p.text, url) for p, url in zip(catalog, urls, strict=False)]
    index_without_vectors(client, index_name, schema, products, model)
    counts = run_backfill(client, store, CeleryJobQueue(app), index_name, schema=schema, timeout_s=60)
    assert counts.written == 2
    client.indices.refresh(index=index_name)
    docs = {d["_id"]: d["_source"] for d in client.mget(index=index_name, body={"ids": [p.id for p in products]})["docs"]}
    assert docs[products[0].id]["mm_embedding_error"].startswith("connection_failed")
    assert docs[products[1].id]["mm_embedding_error"].startswith("address_not_allowed")
    text_only = product_vectors(model, [Product(p.id, p.source, p.text, None) for p in products])
    for product, expected in zip(products, text_only, strict=True):
        np.testing.assert_allclose(docs[product.id]["mm_fused"], expected["mm_fused"], atol=1e-5)  # type: ignore[index]


def test_a_batch_that_keeps_failing_is_dead_lettered_and_can_be_retried(
    client: OpenSearch, index_name: str, store: JobStore, worker: WorkerProcess, schema: CatalogSchema,
    catalog: list[Product],
) -> None:
    create_product_index(client, index_name, schema, sample=catalog[0].source)  # BM25 only: no model entry
    load_products(client, index_name, catalog[:3])
    job_id = enqueue(store, CeleryJobQueue(app), index_name, [p.id for p in catalog[:3]])
    counts = wait_for_job(store, job_id, timeout_s=60)
    assert counts.dead == 3 and counts.written == 0
    letters = [d for d in store.dead_letters() if d.payload["job_id"] == job_id]
    assert len(letters) == 1 and "index augment" in letters[0].reason
    assert retry_dead_letters(store, CeleryJobQueue(app), [letters[0].id]) == [letters[0].id]
    assert letters[0].id not in {d.id for d in store.dead_letters()}
    wait_for_job(store, job_id, timeout_s=60)
    for letter in store.dead_letters():
        if letter.payload["job_id"] == job_id:
            store.remove_dead_letter(letter.id)


def test_the_worker_refuses_a_visibility_timeout_shorter_than_the_time_limit(tiny_model_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MMOS_MODEL_DIR": str(tiny_model_dir),
           "MMOS_WORKER_TASK_TIME_LIMIT_S": "600", "MMOS_WORKER_VISIBILITY_TIMEOUT_S": "300"}
    done = subprocess.run([sys.executable, "-m", "celery", "-A", "mm_opensearch_workers.app", "worker", "--pool", "solo"],  # noqa: S603
                          env=env, capture_output=True, text=True, timeout=60, check=False, cwd=REPO)
    assert done.returncode != 0
    assert "visibility_timeout (300 s) must be longer than the hard task time limit (600 s)" in done.stdout + done.stderr


def test_a_malformed_image_value_fails_only_its_product_not_its_batch(
    client: OpenSearch, index_name: str, store: JobStore, worker: WorkerProcess, model: MultimodalModel,
    schema: CatalogSchema, catalog: list[Product], myntra_dir: Path,
) -> None:
    # The worker reads relative image paths from its data dir (the Myntra folder), its default image root.
    pictures = sorted(os.listdir(myntra_dir / "images"))[:20]  # this catalog's products have none of their own
    values = {p.id: f"images/{picture}" for p, picture in zip(catalog[:20], pictures, strict=True)}
    values[catalog[5].id] = "images/a\0b.jpg"  # a NUL byte: ValueError from the OS layer
    values[catalog[12].id] = "http://[::1/x"  # an unclosed IPv6 bracket: ValueError from urlsplit
    bad = {catalog[5].id, catalog[12].id}
    products = [Product(p.id, {**p.source, "image": values[p.id]}, p.text, values[p.id]) for p in catalog[:20]]
    index_without_vectors(client, index_name, schema, products, model)

    counts = run_backfill(client, store, CeleryJobQueue(app), index_name, schema=schema, batch_size=20, timeout_s=120)

    assert (counts.written, counts.failed, counts.dead) == (20, 0, 0)  # one batch, all of it written
    assert not [d for d in store.dead_letters() if d.payload["job_id"] == f"backfill-{index_name}"]
    client.indices.refresh(index=index_name)
    docs = {d["_id"]: d["_source"] for d in client.mget(index=index_name, body={"ids": list(values)})["docs"]}
    for product in products:
        doc = docs[product.id]
        if product.id in bad:
            assert doc["mm_embedding_error"].startswith("invalid_url"), doc["mm_embedding_error"]
            (expected,) = product_vectors(model, [Product(product.id, product.source, product.text, None)])
        else:
            assert doc["mm_embedding_error"] is None
            absolute = str(myntra_dir / values[product.id])
            (expected,) = product_vectors(model, [Product(product.id, product.source, product.text, absolute)],
                                          image_roots=[myntra_dir])
            assert expected["mm_embedding_error"] is None  # the image itself was read
        np.testing.assert_allclose(doc["mm_fused"], expected["mm_fused"], atol=1e-5)


SECRET = b"S3CR3T-7f3a9 root:x:0:0:hunter2\n"  # the first 12 bytes are what errors used to quote
SECRET_MARK = "S3CR3T-7f3a9"


def test_image_paths_stay_inside_the_roots_and_no_file_contents_reach_the_index_or_the_logs(
    client: OpenSearch, index_name: str, store: JobStore, model: MultimodalModel, schema: CatalogSchema,
    catalog: list[Product], tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    from PIL import Image  # noqa: PLC0415

    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(data / "red.jpg")
    (data / "secret.jpg").write_bytes(SECRET)  # inside the root, but no image
    (outside / "secret.jpg").write_bytes(SECRET)
    (data / "link.jpg").symlink_to(outside / "secret.jpg")
    cases = [
        ("red.jpg", None),
        ("secret.jpg", "format_not_allowed"),
        ("../outside/secret.jpg", "path_not_allowed"),
        ("link.jpg", "path_not_allowed"),
        (str(outside / "secret.jpg"), "path_not_allowed"),
        ((outside / "secret.jpg").as_uri(), "path_not_allowed"),
        ("file:///etc/passwd", "path_not_allowed"),
        (12345, "invalid_url"),
    ]
    products = [Product(p.id, {**p.source, "image": value}, p.text, value)
                for p, (value, _) in zip(catalog, cases, strict=False)]
    index_without_vectors(client, index_name, schema, products, model)
    queue = RecordingQueue()
    ctx = EmbedContext(client, store, queue, schema, model, image_dir=data, image_roots=(data,))
    caplog.set_level("DEBUG")

    enqueue(store, queue, index_name, [p.id for p in products], batch_size=len(products))
    embed_step(ctx, queue.embeds[0])
    counts = write_step(ctx, queue.writes[0])

    assert counts["written"] == len(products) and counts["failed"] == 0
    client.indices.refresh(index=index_name)
    docs = {d["_id"]: d["_source"] for d in client.mget(index=index_name, body={"ids": [p.id for p in products]})["docs"]}
    for product, (value, reason) in zip(products, cases, strict=True):
        error = docs[product.id]["mm_embedding_error"]
        assert (value, error.split(":")[0] if error else None) == (value, reason)
        assert "mm_fused" in docs[product.id]  # every one keeps at least its text vector
        if reason == "path_not_allowed":
            assert str(data) in error and "MMOS_IMAGE_ROOTS" in error
    assert SECRET_MARK not in json.dumps(docs) and "hunter2" not in json.dumps(docs)
    assert SECRET_MARK not in caplog.text
