"""Augment a BM25-only index serving queries: copy, backfill, replay, atomic alias swap, rollback."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from opensearchpy import OpenSearch, TransportError

from mm_opensearch.augment import cleanup_previous, index_status, inspect_index, plan_augment, rollback, run_augment
from mm_opensearch.backfill import JobStore, QueueEmbedder, redis_client
from mm_opensearch.catalog import CatalogSchema, Product, read_catalog, to_product
from mm_opensearch.config import Settings
from mm_opensearch.hybrid.capabilities import ClusterCapabilities
from mm_opensearch.indexing.load import create_product_index, load_products, product_vectors
from mm_opensearch.indexing.mappings import VectorOptions, product_index_body
from mm_opensearch.towers import MultimodalModel
from tests.integration.celery_worker import WorkerProcess, assert_all_vectors_fresh, fused_vectors, purge_queues
from mm_opensearch_workers.app import CeleryJobQueue, app

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def worker(tiny_model_dir: Path, settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    purge_queues(settings)
    process = WorkerProcess(tiny_model_dir, tmp_path_factory.mktemp("logs") / "worker.log")
    process.start()
    yield process
    process.stop()


def _stamp(day: int) -> str:
    """``updated_at`` as the application sets it: a day in 2024, or now (day 0)."""
    return (datetime.now(UTC) if day == 0 else datetime(2024, 1, day, tzinfo=UTC)).isoformat()


class QueryLoop(threading.Thread):
    """Queries the read alias without pause and counts failures, like live traffic."""

    def __init__(self, client: OpenSearch, alias: str) -> None:
        super().__init__(daemon=True)
        self.client, self.alias = client, alias
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                hits = self.client.search(index=self.alias, body={"query": {"match": {"title": "shirt"}}, "size": 5})
                assert hits["hits"]["total"]["value"] > 0
                self.ok += 1
            except Exception as e:  # noqa: BLE001 - every failure counts
                self.failures.append(repr(e))


def _recorded(client: OpenSearch, index: str) -> ClusterCapabilities | None:
    """The cluster capabilities in the index's _meta."""
    return ClusterCapabilities.from_mapping(client.indices.get_mapping(index=index)[index]["mappings"])


def _release(cluster_version: tuple[int, ...]) -> str:
    return ".".join(map(str, cluster_version))


def test_augment_swaps_aliases_without_failing_a_query_and_keeps_concurrent_writes(
    client: OpenSearch, index_name: str, settings: Settings, worker: WorkerProcess, tiny_model_dir: Path,
    myntra_dir: Path, cluster_version: tuple[int, ...],
) -> None:
    schema = CatalogSchema.from_settings(settings)
    products = [
        Product(p.id, {**p.source, "updated_at": _stamp(1)}, p.text, p.image)
        for p in read_catalog(myntra_dir / "products_without_images.jsonl.gz", schema, limit=1000)
    ]
    source, read_alias, write_alias = f"{index_name}_v1", f"{index_name}-read", f"{index_name}-write"
    create_product_index(client, source, schema, sample=products[0].source)  # BM25 only, index.knn=false
    load_products(client, source, products)
    client.indices.update_aliases(body={"actions": [
        {"add": {"index": source, "alias": read_alias}}, {"add": {"index": source, "alias": write_alias}}]})
    client.indices.refresh(index=source)

    model = MultimodalModel.load(tiny_model_dir, settings=settings, use_feature_cache=False)
    report = inspect_index(client, read_alias, schema)
    assert report.strategy == "reindex" and report.index == source
    plan = plan_augment(report, model_id=model.model_id, dim=model.dim)
    assert plan.target == f"{index_name}_v2" and plan.aliases == tuple(sorted([read_alias, write_alias]))

    deleted, changed = products[10], products[20]
    new_source = {**changed.source, "title": "Bright Yellow Rain Jacket", "updated_at": _stamp(0)}

    recorded_before_swap: list[ClusterCapabilities | None] = []

    def write_during_copy(message: str) -> None:  # the application keeps writing through its alias
        if message.startswith("moving aliases"):
            recorded_before_swap.append(_recorded(client, plan.target))
        if message.startswith("backfilling"):
            client.delete(index=write_alias, id=deleted.id)
            client.index(index=write_alias, id=changed.id, body=new_source)

    store = JobStore(redis_client(settings))
    embedder = QueueEmbedder(client, store, CeleryJobQueue(app), schema, batch_size=50, timeout_s=90)
    queries = QueryLoop(client, read_alias)
    queries.start()
    try:
        result = run_augment(client, plan, embedder, schema=schema, on_step=write_during_copy)
    finally:
        queries.stop.set()
        queries.join(10)

    assert queries.failures == [] and queries.ok > 10
    # The new index is provisioned before readers reach it: its first search needs no cluster-level call.
    assert recorded_before_swap == [result.capabilities] and result.capabilities is not None
    assert result.capabilities.version == _release(cluster_version) and result.capabilities.knn
    assert inspect_index(client, read_alias, schema).index == plan.target
    assert not inspect_index(client, read_alias, schema).vectors_in_source  # the new index derives them
    assert inspect_index(client, write_alias, schema).index == plan.target
    assert deleted.id in result.deleted and changed.id in result.replayed
    assert not client.exists(index=read_alias, id=deleted.id)
    assert client.get(index=read_alias, id=changed.id)["_source"]["title"] == new_source["title"]
    stored = fused_vectors(client, plan.target)
    assert len(stored) == len(products) - 1 == client.count(index=plan.target)["count"]
    new_product = to_product(new_source, schema)
    expected = product_vectors(model, [new_product])[0]
    assert expected is not None
    np.testing.assert_allclose(stored[changed.id], expected["mm_fused"], atol=1e-5)
    status = index_status(client, read_alias, schema)
    assert status.coverage == 1.0 and status.previous_index == source and status.previous_exists

    back = rollback(client, read_alias, schema)
    assert back.to_index == source and inspect_index(client, read_alias, schema).index == source
    client.index(index=write_alias, id="after-rollback", body={**products[0].source, "id": "after-rollback"})  # writable
    swap_back = [{"remove": {"index": source, "alias": a}} for a in (read_alias, write_alias)]
    swap_back += [{"add": {"index": plan.target, "alias": a}} for a in (read_alias, write_alias)]
    client.indices.update_aliases(body={"actions": swap_back})
    assert cleanup_previous(client, read_alias, schema) == source
    assert not client.indices.exists(index=source)


def test_augment_in_place_when_knn_is_already_on(
    client: OpenSearch, index_name: str, settings: Settings, worker: WorkerProcess, tiny_model_dir: Path,
    myntra_dir: Path, cluster_version: tuple[int, ...],
) -> None:
    schema = CatalogSchema.from_settings(settings)
    products = list(read_catalog(myntra_dir / "products_without_images.jsonl.gz", schema, limit=200))
    body = create_product_index(client, index_name, schema, sample=products[0].source)
    assert body["settings"]["index"]["knn"] is False
    client.indices.delete(index=index_name)
    body["settings"]["index"]["knn"] = True
    client.indices.create(index=index_name, body=body)
    load_products(client, index_name, products)
    client.indices.refresh(index=index_name)
    model = MultimodalModel.load(tiny_model_dir, settings=settings, use_feature_cache=False)
    report = inspect_index(client, index_name, schema)
    assert report.docs_without_id == len(products)  # the team's documents: searches read their stored _id
    plan = plan_augment(report, model_id=model.model_id, dim=model.dim)
    assert plan.strategy == "in_place" and plan.target == index_name
    embedder = QueueEmbedder(client, JobStore(redis_client(settings)), CeleryJobQueue(app), schema, timeout_s=60)
    result = run_augment(client, plan, embedder, schema=schema)
    assert len(fused_vectors(client, index_name)) == len(products)
    recorded = _recorded(client, index_name)
    assert recorded is not None and recorded == result.capabilities
    assert recorded.version == _release(cluster_version)
    # A static setting, so in place it stays what the index was created with: off on 2.x, and on by default
    # for every k-NN index on 3.x.
    derived_by_default = cluster_version >= (3,)
    assert inspect_index(client, index_name, schema).vectors_in_source is not derived_by_default
    assert inspect_index(client, index_name, schema).docs_without_id == 0


def test_augment_in_place_with_exact_modalities_sets_the_dynamic_threshold(
    client: OpenSearch, index_name: str, settings: Settings, worker: WorkerProcess, tiny_model_dir: Path,
    myntra_dir: Path,
) -> None:
    """MMOS_KNN_MODALITY_INDEX=exact on an open index: the threshold is put (dynamic), the modality fields scan."""
    schema = CatalogSchema.from_settings(settings)
    products = list(read_catalog(myntra_dir / "products_without_images.jsonl.gz", schema, limit=100))
    body = product_index_body(schema, sample=products[0].source)
    body["settings"]["index"]["knn"] = True
    client.indices.create(index=index_name, body=body)
    load_products(client, index_name, products)
    client.indices.refresh(index=index_name)
    model = MultimodalModel.load(tiny_model_dir, settings=settings, use_feature_cache=False)
    options = VectorOptions(m=8, ef_construction=32, modality_index="exact")
    plan = plan_augment(inspect_index(client, index_name, schema), model_id=model.model_id, dim=model.dim,
                        modalities=True, options=options)
    assert plan.strategy == "in_place"
    embedder = QueueEmbedder(client, JobStore(redis_client(settings)), CeleryJobQueue(app), schema, timeout_s=60)
    run_augment(client, plan, embedder, schema=schema)

    index_settings = client.indices.get_settings(index=index_name, flat_settings=True)[index_name]["settings"]
    assert index_settings["index.knn.advanced.approximate_threshold"] == "-1"
    props = client.indices.get_mapping(index=index_name)[index_name]["mappings"]["properties"]
    assert "method" not in props["mm_text"] and props["mm_fused"]["method"]["parameters"]["m"] == 8
    hit = client.search(index=index_name, body={"size": 1, "_source": ["mm_text"]})["hits"]["hits"][0]
    knn = {"size": 3, "query": {"knn": {"mm_text": {"vector": hit["_source"]["mm_text"], "k": 3}}}}
    assert client.search(index=index_name, body=knn)["hits"]["hits"][0]["_id"] == hit["_id"]


def test_inspect_counts_documents_without_mm_id_and_augment_fills_them(
    client: OpenSearch, index_name: str, settings: Settings, worker: WorkerProcess, tiny_model_dir: Path,
    myntra_dir: Path,
) -> None:
    """An index given vectors before mm_id existed: backfill skips its current vectors, so augment copies the ids."""
    schema = CatalogSchema.from_settings(settings)
    products = list(read_catalog(myntra_dir / "products_without_images.jsonl.gz", schema, limit=150))
    model = MultimodalModel.load(tiny_model_dir, settings=settings, use_feature_cache=False)
    create_product_index(client, index_name, schema, sample=products[0].source, model=model)
    load_products(client, index_name, products, model=model)
    client.indices.refresh(index=index_name)
    assert inspect_index(client, index_name, schema).docs_without_id == 0
    client.update_by_query(index=index_name, body={"script": {"source": "ctx._source.remove('mm_id')"}},
                           params={"refresh": "true"})

    report = inspect_index(client, index_name, schema)
    assert report.strategy == "ready" and report.docs_without_id == len(products)
    assert f"{len(products)} documents lack mm_id" in _inspect_output(index_name)
    plan = plan_augment(report, model_id=model.model_id, dim=model.dim)
    assert any("mm_id" in step for step in plan.steps)
    embedder = QueueEmbedder(client, JobStore(redis_client(settings)), CeleryJobQueue(app), schema, timeout_s=60)
    run_augment(client, plan, embedder, schema=schema)

    assert inspect_index(client, index_name, schema).docs_without_id == 0
    assert "mm_id doc values" in _inspect_output(index_name)
    hits = client.search(index=index_name, body={"size": 1000, "_source": ["mm_id"]})["hits"]["hits"]
    assert len(hits) == len(products) and all(hit["_source"]["mm_id"] == hit["_id"] for hit in hits)


def _inspect_output(index: str) -> str:
    """What `mm-opensearch index inspect` prints (the environment points it at the test node)."""
    done = subprocess.run(  # noqa: S603 - our own CLI
        [str(Path(sys.executable).with_name("mm-opensearch")), "index", "inspect", index],
        capture_output=True, text=True, check=True, env={**os.environ, "COLUMNS": "250", "MMOS_MODEL_DIR": ""},
    )
    return done.stdout


def _cli(*args: str, model_dir: Path | None = None) -> str:
    done = subprocess.run(  # noqa: S603 - our own CLI
        [str(Path(sys.executable).with_name("mm-opensearch")), *args],
        capture_output=True, text=True, check=True,
        env={**os.environ, "COLUMNS": "250", "MMOS_MODEL_DIR": str(model_dir or "")},
    )
    return done.stdout


def test_index_provision_records_what_index_inspect_then_shows(
    client: OpenSearch, index_name: str, settings: Settings, tiny_model_dir: Path, myntra_dir: Path,
    cluster_version: tuple[int, ...], neural_search: bool,
) -> None:
    """An index with vectors made before capabilities were recorded; `index create` records them itself."""
    schema = CatalogSchema.from_settings(settings)
    products = list(read_catalog(myntra_dir / "products_without_images.jsonl.gz", schema, limit=20))
    model = MultimodalModel.load(tiny_model_dir, settings=settings, use_feature_cache=False)
    create_product_index(client, index_name, schema, sample=products[0].source, model=model)
    assert _recorded(client, index_name) is None
    assert f"`mm-opensearch index provision {index_name}` records it" in _inspect_output(index_name)

    _cli("index", "provision", index_name)
    recorded = _recorded(client, index_name)
    assert recorded is not None and recorded.version == _release(cluster_version)
    assert client.indices.get_mapping(index=index_name)[index_name]["mappings"]["_meta"]["mm_opensearch"]  # kept
    shown = _inspect_output(index_name)
    assert f"OpenSearch {recorded.version}, detected {recorded.detected_at}" in shown
    assert ("mmos-rrf-k60" in shown) is neural_search  # the server path's pipelines, wherever the plugin is

    created = f"{index_name}-created"
    _cli("index", "create", created, "--yes", model_dir=tiny_model_dir)
    by_create = _recorded(client, created)
    assert by_create is not None and by_create.version == recorded.version
    assert by_create.neural_search is neural_search


class AliasWriter(threading.Thread):
    """The application's writer: edits products through the write alias without pause.

    It follows the alias, as an application should: a write refused by a write block (403
    ``cluster_block_exception``) is sent again through the alias a moment later, and lands in
    whichever index the alias names by then. Every other failure counts as lost.
    """

    def __init__(self, client: OpenSearch, alias: str, products: list[Product]) -> None:
        super().__init__(daemon=True)
        self.client, self.alias, self.products = client, alias, products
        self.stop = threading.Event()
        self.last: dict[str, str] = {}  # id -> title of its last acknowledged write
        self.blocked: list[float] = []  # monotonic times of refusals by the write block
        self.lost: list[str] = []
        self.acknowledged_in: dict[str, int] = {}  # concrete index -> acknowledged writes

    def run(self) -> None:
        number = 0
        while not self.stop.is_set():
            product = self.products[number % len(self.products)]
            title = f"{product.source['title']} edit {number}"
            body = {**product.source, "title": title, "updated_at": _stamp(0)}
            while True:
                try:
                    response = self.client.index(index=self.alias, id=product.id, body=body)
                except TransportError as e:
                    if e.status_code == 403 and "cluster_block_exception" in str(e.info):
                        self.blocked.append(time.monotonic())
                        time.sleep(0.05)
                        continue
                    self.lost.append(repr(e))
                    break
                self.last[product.id] = title
                self.acknowledged_in[response["_index"]] = self.acknowledged_in.get(response["_index"], 0) + 1
                break
            number += 1
            time.sleep(0.01)


def test_augment_by_reindex_under_writes_and_queries_loses_no_write_and_fails_no_query(
    client: OpenSearch, index_name: str, settings: Settings, worker: WorkerProcess, tiny_model_dir: Path,
    myntra_dir: Path,
) -> None:
    """Every acknowledged write through the write alias, before, during and after the swap, is in the new index."""
    schema = CatalogSchema.from_settings(settings)
    products = [
        Product(p.id, {**p.source, "updated_at": _stamp(1)}, p.text, p.image)
        for p in read_catalog(myntra_dir / "products_without_images.jsonl.gz", schema, limit=300)
    ]
    source, read_alias, write_alias = f"{index_name}_v1", f"{index_name}-read", f"{index_name}-write"
    create_product_index(client, source, schema, sample=products[0].source)
    load_products(client, source, products)
    client.indices.update_aliases(body={"actions": [
        {"add": {"index": source, "alias": read_alias}}, {"add": {"index": source, "alias": write_alias}}]})
    client.indices.refresh(index=source)
    model = MultimodalModel.load(tiny_model_dir, settings=settings, use_feature_cache=False)
    plan = plan_augment(inspect_index(client, read_alias, schema), model_id=model.model_id, dim=model.dim)
    assert plan.strategy == "reindex"

    store = JobStore(redis_client(settings))
    embedder = QueueEmbedder(client, store, CeleryJobQueue(app), schema, batch_size=50, timeout_s=90)
    queries, writer = QueryLoop(client, read_alias), AliasWriter(client, write_alias, products[:60])
    steps: list[tuple[float, str]] = []
    started = time.monotonic()
    queries.start()
    writer.start()
    try:
        result = run_augment(client, plan, embedder, schema=schema,
                             on_step=lambda message: steps.append((time.monotonic(), message)))
        after_swap = len(writer.last)
        deadline = time.monotonic() + 10  # writes go on through the alias after the swap, into the new index
        while writer.acknowledged_in.get(plan.target, 0) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        writer.stop.set()
        queries.stop.set()
        writer.join(10)
        queries.join(10)
    duration = time.monotonic() - started

    blocked_at = next(at for at, message in steps if message.startswith("blocking writes"))
    window = (max(writer.blocked) - blocked_at) if writer.blocked else 0.0
    print(f"\nswap under load: {queries.ok} queries, {len(queries.failures)} failed; "
          f"writes acknowledged {writer.acknowledged_in}, refused by the block {len(writer.blocked)} "
          f"(over {window:.2f} s), lost {len(writer.lost)}; replayed {len(result.replayed)}; {duration:.1f} s")
    print("steps (s after the block): " + "; ".join(f"{at - blocked_at:+.1f} {message[:40]}" for at, message in steps))
    assert queries.failures == [] and queries.ok > 10
    assert writer.lost == []
    # The block lasts the replay and the swap; the replayed products are encoded after it (once 10-15 s here).
    order = [message.split(" ")[0] for _, message in steps]
    assert order.index("embedding") > order.index("moving") > order.index("blocking"), order
    assert after_swap and writer.acknowledged_in.get(source, 0) > 0 and writer.acknowledged_in.get(plan.target, 0) > 0
    assert inspect_index(client, write_alias, schema).index == plan.target
    client.indices.refresh(index=plan.target)
    stored = {hit["_id"]: hit["_source"]["title"] for hit in client.search(
        index=plan.target, body={"size": 1000, "_source": ["title"], "query": {"match_all": {}}})["hits"]["hits"]}
    assert len(stored) == len(products)
    wrong = {pid: (stored.get(pid), title) for pid, title in writer.last.items() if stored.get(pid) != title}
    assert wrong == {}, f"{len(wrong)} of {len(writer.last)} written products lack their last write in the new index"
    # A whole-document write drops the vector; the change feed embeds it again, in the index the alias names now.
    embedder.embed(write_alias, sorted(writer.last))
    current = [to_product({**hit["_source"], "id": hit["_id"]}, schema) for hit in client.search(
        index=plan.target, body={"size": 1000, "query": {"match_all": {}}, "_source": {"excludes": ["mm_*"]}},
    )["hits"]["hits"]]
    assert_all_vectors_fresh(client, plan.target, model, current)
