"""Faults of a three-node cluster: a node SIGKILLed mid-backfill and under hybrid query load, a write
block, and a rolling restart under `jobs follow` while products change.

Needs ``mm-opensearch dev up --nodes 3`` with ``MMOS_OPENSEARCH_HOSTS`` listing all three nodes
(the client then moves to another node when one dies). The index has one shard and one replica,
so a dead node's shard copies are promoted or recovered elsewhere, and the server fusion path (a
single shard) is open on 2.19. A killed node is started again before the next test, so each test
begins on a green cluster of three. Each test prints one line of what it checked.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from opensearchpy import OpenSearch, TransportError

from mm_opensearch.api import RETRY_AFTER_S, create_app
from mm_opensearch.api import app as app_module
from mm_opensearch.backfill import JobStore, changes_job_id, retry_dead_letters, run_backfill, wait_for_job
from mm_opensearch.catalog import CatalogSchema, Product, to_product
from mm_opensearch.client import create_serving_client
from mm_opensearch.config import Settings
from mm_opensearch.devservices import OpenSearchCluster
from mm_opensearch.hybrid.capabilities import default_fusions, provision_index
from mm_opensearch.hybrid.search import HybridSearcher
from mm_opensearch.indexing.load import create_product_index, load_products
from mm_opensearch.towers import MultimodalModel
from tests.integration.celery_worker import (
    Follower,
    WorkerProcess,
    assert_all_vectors_fresh,
    stale_vectors,
    stamped_catalog,
    wait_until,
    RETRY_LINE,
    RIDE_OUT,
)
from mm_opensearch_workers.app import CeleryJobQueue, app

pytestmark = [pytest.mark.services, pytest.mark.multinode]

DETECTION_WINDOW_S = 30.0  # a SIGKILLed node's connections reset at once; its shard copies move within this


@pytest.fixture(scope="module")
def cluster(settings: Settings) -> Iterator[OpenSearchCluster]:
    """The session's three-node dev cluster; every node is running and the cluster green after each test."""
    if len(settings.opensearch_hosts) < 3:
        pytest.fail("these tests need `mm-opensearch dev up --nodes 3` and MMOS_OPENSEARCH_HOSTS listing its nodes")
    cluster = OpenSearchCluster(settings, 3)
    yield cluster
    cluster.start()


@pytest.fixture
def whole(cluster: OpenSearchCluster) -> Iterator[OpenSearchCluster]:
    """The cluster, whole again (killed nodes started, green) after the test, also when it fails."""
    cluster.wait_until_nodes(3, status="green", timeout_s=300)
    yield cluster
    cluster.start()


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path, settings: Settings) -> MultimodalModel:
    return MultimodalModel.load(tiny_model_dir, settings=settings, use_feature_cache=False)


@pytest.fixture(scope="module")
def catalog(myntra_dir: Path, schema: CatalogSchema) -> list[Product]:
    return stamped_catalog(myntra_dir, schema, 300)


def _replicated_index(client: OpenSearch, index: str, schema: CatalogSchema, products: list[Product],
                      model: MultimodalModel) -> None:
    """One shard, one replica, mapped for ``model``'s vectors, holding the products' BM25 fields only, provisioned."""
    create_product_index(client, index, schema, sample=products[0].source, model=model,
                         index_settings={"number_of_shards": 1, "number_of_replicas": 1})
    assert load_products(client, index, products).succeeded == len(products)
    provision_index(client, index, default_fusions())  # the server path's pipelines: searches never create them
    client.cluster.health(index=index, wait_for_status="green", params={"timeout": "60s"}, request_timeout=70)
    client.indices.refresh(index=index)


def _dead_letters(store: JobStore, job_id: str) -> list:
    return [letter for letter in store.dead_letters() if letter.payload["job_id"] == job_id]


class QueryLoad(threading.Thread):
    """Hybrid searches through the API (both fusion paths where the node has them), paced, until stopped.

    Each outcome is (monotonic time, status, Retry-After); a 200 with an empty page counts as status 0.
    """

    def __init__(self, http: TestClient, paths: tuple[str, ...]) -> None:
        super().__init__(daemon=True)
        self.http, self.paths = http, paths
        self.outcomes: list[tuple[float, int, str | None]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        number = 0
        while not self.stop.is_set():
            path = self.paths[number % len(self.paths)]
            response = self.http.post("/search", json={"query": ["shirt", "dress", "shoes"][number % 3],
                                                       "mode": "hybrid", "fusion_path": path})
            status = response.status_code
            if status == 200 and not response.json()["hits"]:
                status = 0
            self.outcomes.append((time.monotonic(), status, response.headers.get("Retry-After")))
            number += 1
            time.sleep(0.02)

    def failures(self) -> list[tuple[float, int, str | None]]:
        return [outcome for outcome in self.outcomes if outcome[1] != 200]


SERVING_DEADLINE_S = 5.0  # above the 2 s default: on 2 shared cores a query under a backfill took up to 2 s unfaulted


def _api(client: OpenSearch, settings: Settings, index: str, model: MultimodalModel) -> TestClient:
    settings = settings.model_copy(update={"search_timeout_s": SERVING_DEADLINE_S})
    serving = create_serving_client(settings)
    searcher = HybridSearcher(serving, settings, index=index, tower=model, timeout_s=settings.search_timeout_s)
    return TestClient(create_app(settings, searcher=searcher), raise_server_exceptions=False)


def _node_to_kill(cluster: OpenSearchCluster, client: OpenSearch, index: str, which: str) -> int:
    """The elected cluster manager, or a node that holds a copy of the index's shard and is not the manager."""
    manager = cluster.elected_manager()
    assert manager is not None
    if which == "manager":
        return manager
    holders = {row["node"] for row in client.cat.shards(index=index, format="json")}
    names = {node.name: node.index for node in cluster.nodes}
    (victim, *_) = sorted(names[name] for name in holders if names.get(name) not in (None, manager))
    return victim


@pytest.mark.parametrize("which", ["data", "manager"])
def test_a_node_sigkilled_mid_backfill_under_hybrid_queries(
    whole: OpenSearchCluster, client: OpenSearch, index_name: str, store: JobStore, settings: Settings,
    start_worker: Callable[..., WorkerProcess], model: MultimodalModel, schema: CatalogSchema,
    catalog: list[Product], neural_search: bool, which: str,
) -> None:
    """The job completes with every vector right; at most 1% of queries fail, each a 503 with Retry-After, near the kill."""
    products = catalog
    _replicated_index(client, index_name, schema, products, model)
    worker = start_worker(**RIDE_OUT)
    job_id, result = f"backfill-{index_name}", {}
    began = time.monotonic()

    def backfill() -> None:
        try:
            result["counts"] = run_backfill(client, store, CeleryJobQueue(app), index_name, schema=schema,
                                            batch_size=10, timeout_s=400)
        except Exception as e:  # noqa: BLE001 - reported below
            result["error"] = e

    reasons: list[str] = []  # why each 503 was answered, as the API logs it
    handler = logging.Handler()
    handler.emit = lambda record: reasons.append(f"{time.monotonic() - began:.1f} s: {record.getMessage()[:160]}")
    logging.getLogger(app_module.__name__).addHandler(handler)
    with _api(client, settings, index_name, model) as http:
        queries = QueryLoad(http, ("client", "server") if neural_search else ("client",))
        thread = threading.Thread(target=backfill)
        queries.start()
        thread.start()
        try:
            wait_until(lambda: (c := store.counts(job_id)) is not None and c.written >= 30,
                        what="a tenth of the products written")
            victim = _node_to_kill(whole, client, index_name, which)
            written_before = store.counts(job_id).written  # type: ignore[union-attr]
            killed_at = time.monotonic()
            assert whole.kill(victim)
            thread.join(400)
            wait_until(lambda: len(queries.outcomes) > 50 and time.monotonic() > killed_at + 5, what="queries after")
        finally:
            queries.stop.set()
            queries.join(30)
            thread.join(1)
    logging.getLogger(app_module.__name__).removeHandler(handler)
    finished = time.monotonic()
    letters = _dead_letters(store, job_id)
    retries = len(RETRY_LINE.findall(worker.log.read_bytes()))
    failures = queries.failures()
    late = [f for f in failures if not killed_at <= f[0] <= killed_at + DETECTION_WINDOW_S]
    print(f"\n{which} node {victim} SIGKILLed mid-backfill: {len(products)} products checked, {written_before} written "
          f"before the kill, {retries} batch retries, {len(letters)} dead-lettered batches; {len(queries.outcomes)} "
          f"hybrid queries ({'+'.join(queries.paths)}), {len(failures)} failed "
          f"({sorted({f[1] for f in failures})}), {len(late)} outside {DETECTION_WINDOW_S:.0f} s of the kill; "
          f"{finished - began:.0f} s; kill at {killed_at - began:.1f} s; 503s: {reasons}")
    assert not letters, f"dead-lettered: {letters[0].reason}"
    assert "counts" in result, f"the backfill did not finish: {result.get('error')!r}; {worker.log_tail()}"
    counts = result["counts"]
    assert counts.dead == counts.failed == 0
    assert counts.written + counts.skipped >= len(products)  # a batch written before the kill may be read again
    assert_all_vectors_fresh(client, index_name, model, products)  # exactly its own vector, none of an older version
    assert all(status == 503 and after == str(RETRY_AFTER_S) for _, status, after in failures), failures
    assert late == [], late
    assert len(failures) <= 0.01 * len(queries.outcomes), f"{len(failures)} of {len(queries.outcomes)} failed"


def test_a_write_block_on_three_nodes_is_retried_then_dead_lettered_and_the_retry_finishes_the_job(
    whole: OpenSearchCluster, client: OpenSearch, index_name: str, store: JobStore,
    start_worker: Callable[..., WorkerProcess], model: MultimodalModel, schema: CatalogSchema,
    catalog: list[Product],
) -> None:
    products = catalog[:100]
    _replicated_index(client, index_name, schema, products, model)
    budget_s = 6
    worker = start_worker(MMOS_WORKER_MAX_RETRIES="1000", MMOS_WORKER_RETRY_BUDGET_S=str(budget_s),
                          MMOS_WORKER_RETRY_BACKOFF_MAX_S="1")
    job_id = f"backfill-{index_name}"
    began = time.monotonic()
    client.indices.put_settings(index=index_name, body={"index.blocks.write": True})
    try:
        counts = run_backfill(client, store, CeleryJobQueue(app), index_name, schema=schema, batch_size=20,
                              timeout_s=180)
        letters = _dead_letters(store, job_id)
        retries = len(RETRY_LINE.findall(worker.log.read_bytes()))
    finally:
        client.indices.put_settings(index=index_name, body={"index.blocks.write": None})
    blocked_for = time.monotonic() - began
    assert counts.dead == len(products) and counts.written == 0  # nothing dropped: every product is in a letter
    lettered = [pid for letter in letters for pid in letter.payload.get("ids") or
                [action["_id"] for action in letter.payload["actions"]]]
    assert set(lettered) == {p.id for p in products}  # a batch the stall guard resent meanwhile may be there twice
    assert all("cluster_block_exception" in letter.reason and f"MMOS_WORKER_RETRY_BUDGET_S={budget_s}" in letter.reason
               for letter in letters), letters[0].reason
    assert retries >= 2 * len(letters)  # each batch backed off and tried again before it was given up
    assert blocked_for >= budget_s

    retried = retry_dead_letters(store, CeleryJobQueue(app), [letter.id for letter in letters])
    assert len(retried) == len(letters)
    done = wait_for_job(store, job_id, timeout_s=120)
    print(f"\nwrite block on 3 nodes: {len(products)} products, {retries} retries, {len(letters)} letters "
          f"({len(lettered) - len(set(lettered))} products in two of them), "
          f"dead-lettered after {blocked_for:.0f} s, retried: {done.written} written, {done.dead} dead")
    assert (done.written, done.dead, done.failed) == (len(products), 0, 0)
    assert_all_vectors_fresh(client, index_name, model, products)


class Editor(threading.Thread):
    """Edits products round-robin, as a catalog's own writer would, until stopped.

    A write refused while a node leaves or joins is sent again, same body, until it is acknowledged;
    ``latest`` holds each product's last acknowledged source, the one its vector must end up from.
    """

    def __init__(self, client: OpenSearch, index: str, products: list[Product], schema: CatalogSchema) -> None:
        super().__init__(daemon=True)
        self.client, self.index, self.products, self.schema = client, index, products, schema
        self.latest: dict[str, Product] = {}
        self.edits = self.resent = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                product = self.products[self.edits % len(self.products)]
                self.edits += 1
                source = {**product.source, "title": f"{product.source['title']} (edit {self.edits})",
                          "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                self._write(product.id, source)
                self.latest[product.id] = to_product(source, self.schema)
                time.sleep(0.2)
        except BaseException as e:  # noqa: BLE001 - the test asserts there was none
            self.error = e

    def _write(self, product_id: str, source: dict) -> None:
        deadline = time.monotonic() + 120
        while True:
            try:
                self.client.index(index=self.index, id=product_id, body=source, params={"timeout": "10s"},
                                  request_timeout=15)
                return
            except TransportError:  # connection errors too: a node leaving, a primary moving
                if time.monotonic() > deadline:
                    raise
                self.resent += 1
                time.sleep(0.5)


def test_a_rolling_restart_under_jobs_follow_misses_no_change_and_applies_none_over_a_newer(
    whole: OpenSearchCluster, client: OpenSearch, index_name: str, store: JobStore,
    start_worker: Callable[..., WorkerProcess], model: MultimodalModel, schema: CatalogSchema,
    catalog: list[Product],
) -> None:
    """Each node in turn stopped (SIGTERM) and started while products change: every product ends on the
    vector of its last acknowledged edit, and the follower outlived all three restarts."""
    products = catalog[:100]
    _replicated_index(client, index_name, schema, products, model)
    worker = start_worker(**RIDE_OUT)
    run_backfill(client, store, CeleryJobQueue(app), index_name, schema=schema, batch_size=20, timeout_s=180)
    follower = Follower(client, store, index_name).start()
    editor = Editor(client, index_name, products[:40], schema)
    began = time.monotonic()
    restarts: list[str] = []
    editor.start()
    try:
        for node in range(whole.size):
            stopped_at = time.monotonic()
            assert whole.stop(node)
            whole.wait_until_nodes(whole.size - 1, status=None, timeout_s=120)  # the cluster saw it leave
            whole.start(node)  # waits until it joined again and the cluster of three is green
            restarts.append(f"node {node} {time.monotonic() - stopped_at:.0f} s")
    finally:
        editor.stop.set()
        editor.join(150)
    assert editor.error is None, f"the editor stopped: {editor.error!r}"
    current = [editor.latest.get(p.id, p) for p in products]
    try:
        try:
            wait_until(lambda: not stale_vectors(client, index_name, model, current), timeout_s=180,
                       what="every product on the vector of its last edit")
        except AssertionError as e:
            stale = stale_vectors(client, index_name, model, current)
            raise AssertionError(f"{e}: {len(stale)} stale ({stale[:5]}); the feed "
                                 f"{'runs' if follower.thread.is_alive() else f'ended: {follower.error!r}'}; "
                                 f"{store.counts(changes_job_id(index_name))}; {worker.log_tail()}") from None
        assert follower.thread.is_alive(), f"the change feed ended: {follower.error!r}"
    finally:
        follower.close()
    counts = store.counts(changes_job_id(index_name))
    letters = _dead_letters(store, changes_job_id(index_name))
    retries = len(RETRY_LINE.findall(worker.log.read_bytes()))
    print(f"\nrolling restart under jobs follow: {len(products)} products checked, {editor.edits} edits of "
          f"{len(editor.latest)} products ({editor.resent} writes sent again), restarts {restarts}, "
          f"feed wrote {counts.written if counts else 0} ({counts.dead if counts else 0} dead), {retries} batch "
          f"retries, {time.monotonic() - began:.0f} s")
    assert not letters, f"dead-lettered: {letters[0].reason}"
    assert_all_vectors_fresh(client, index_name, model, current)
