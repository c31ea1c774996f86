"""An in-place upgrade: a 2.19.1 data folder with our product index, opened by 3.4.0, then a refused downgrade.

What a team does when it moves a node to 3.x: stop 2.19, start 3.4 on the same data path. The index
was written with k-NN derived source on (the vectors are not in the stored ``_source``; 2.19 rebuilds
them from the vector data, and 3.4 must read that 2.19 format back), so every vector is compared, and
the searches a serving process runs must rank and score exactly as before.

The module starts its own nodes on free ports in a tmp dev dir, one after the other (never the
matrix's node), so scripts/test.sh runs it in the 2.19 leg only: marked ``upgrade``, deselected by
name on 3.x.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opensearchpy import ConflictError, OpenSearch

from mm_opensearch.catalog import CatalogSchema, Product, read_catalog
from mm_opensearch.client import create_client
from mm_opensearch.config import Settings
from mm_opensearch.devservices import OpenSearchNode
from mm_opensearch.errors import DevServiceError
from mm_opensearch.hybrid import FusionOptions, HybridSearcher, SearchRequest
from mm_opensearch.hybrid.capabilities import detect_capabilities, provision_pipelines
from mm_opensearch.indexing.bulk import bulk_write, json_floats, vector_update_action
from mm_opensearch.indexing.load import create_product_index, load_products, merge_to_one_segment
from mm_opensearch.indexing.mappings import VECTOR_FIELDS
from mm_opensearch.towers import ModelConfig, MultimodalModel
from tests.integration.celery_worker import CLI
from tests.ports import free_port as closed_port

pytestmark = [pytest.mark.services, pytest.mark.upgrade]

OLD, NEW = "2.19.1", "3.4.0"
N_PRODUCTS = 300
INDEX = "products-upgrade"
QUERIES = ["blue shirt men", "women red dress", "black leather watch", "sports shoes", "casual tshirt"]
# (mode, fusion) of the searches compared before and after; hybrid fuses on the client (3.x has no
# neural-search), with both a rank-based and a score-based fusion.
SEARCHES: list[tuple[str, FusionOptions | None]] = [
    ("bm25", None),
    ("vector", None),
    ("hybrid", FusionOptions(method="rrf", rank_constant=60)),
    ("hybrid", FusionOptions(method="linear", normalization="min_max", weights=(0.3, 0.7))),
    ("hybrid", FusionOptions(method="linear", normalization="l2", weights=(0.6, 0.4))),
]
# OpenSearch 3.0 scores BM25 with Lucene's BM25Similarity instead of LegacyBM25Similarity
# (opensearch-project/OpenSearch#17315): the (k1 + 1) factor left the numerator, so every BM25 score of
# an index, old ones too, is 1 / (1 + k1) of what 2.19 gave (k1 = 1.2, the default), in the same order.
# Every fusion we run is scale-free (ranks, min-max, l2, z-score), so fused scores do not move.
BM25_3X_FACTOR = 1 / (1 + 1.2)
# depth N_PRODUCTS: every product is a k-NN candidate, so the vector leg is exact on both releases and
# the comparison can ask for equal ranks. At a smaller depth the search is approximate and may reach
# other documents of the same graph (see test_approximate_knn_still_finds_the_neighbours_after_the_upgrade).
APPROX_DEPTH = 60
PIPELINE = "mmos-rrf-k60"  # what the server path creates for SEARCHES[2]



@dataclass
class Upgrade:
    """The data folder's node settings per release, what 2.19 answered, and how long each start took."""

    settings: dict[str, Settings]
    products: list[Product]
    sources: dict[str, dict[str, Any]]  # _id -> _source as 2.19 returned it (vectors derived)
    results: dict[tuple[str, str, int, int], list[tuple[str, float]]]  # (query, mode, search#, depth) -> hits
    start_s: dict[str, float] = field(default_factory=dict)
    upgraded: OpenSearch | None = None


def _start(settings: Settings, timings: dict[str, float]) -> OpenSearchNode:
    node = OpenSearchNode(settings)
    started = time.monotonic()
    node.start()
    timings[settings.dev_opensearch_version] = round(time.monotonic() - started, 1)
    return node


def _all_sources(client: OpenSearch, ids: list[str]) -> dict[str, dict[str, Any]]:
    docs = client.mget(index=INDEX, body={"ids": ids})["docs"]
    assert all(d["found"] for d in docs)
    return {d["_id"]: d["_source"] for d in docs}


def _run_searches(settings: Settings, model: MultimodalModel) -> dict:
    """Every search of SEARCHES with exhaustive candidates, and the vector leg approximate (APPROX_DEPTH)."""
    searcher = HybridSearcher(create_client(settings), settings, index=INDEX, tower=model)  # close() closes it
    runs = [(n, mode, fusion, N_PRODUCTS) for n, (mode, fusion) in enumerate(SEARCHES)]
    runs.append((SEARCHES.index(("vector", None)), "vector", None, APPROX_DEPTH))
    try:
        results = {}
        for query in QUERIES:
            for n, mode, fusion, depth in runs:
                request = SearchRequest(query, mode=mode, fusion=fusion, fusion_path="client", size=30, depth=depth)  # type: ignore[arg-type]
                response = searcher.search(request)
                assert response.mode == mode and response.hits, (query, mode)
                results[(query, mode, n, depth)] = [(h.id, h.score) for h in response.hits]
        return results
    finally:
        searcher.close()


@pytest.fixture(scope="module")
def model() -> MultimodalModel:
    return MultimodalModel.from_config(ModelConfig.tiny(), use_feature_cache=False)


@pytest.fixture(scope="module")
def upgrade(
    tmp_path_factory: pytest.TempPathFactory, settings: Settings, model: MultimodalModel, myntra_dir: Path
) -> Iterator[Upgrade]:
    """2.19.1 writes the index and answers the searches; it stops and 3.4.0 starts on the same folder."""
    dev_dir = tmp_path_factory.mktemp("upgrade")
    ports = {"dev_opensearch_port": closed_port(), "dev_opensearch_transport_port": closed_port()}
    per_release = {
        version: settings.model_copy(update={
            "dev_dir": dev_dir, "dev_opensearch_version": version, "dev_opensearch_heap": "512m", **ports,
            "opensearch_hosts": [f"http://127.0.0.1:{ports['dev_opensearch_port']}"],
        })
        for version in (OLD, NEW)
    }
    schema = CatalogSchema.from_settings(settings)
    products = list(read_catalog(myntra_dir / "products.jsonl.gz", schema, limit=N_PRODUCTS))
    timings: dict[str, float] = {}

    old = _start(per_release[OLD], timings)
    try:
        client = create_client(per_release[OLD])
        create_product_index(client, INDEX, schema, sample=products[0].source, model=model, modalities=True)
        report = load_products(client, INDEX, products, model=model, modalities=True, image_roots=[myntra_dir])
        assert not report.failed and report.succeeded == N_PRODUCTS
        # One segment, as evaluations and benchmarks search: otherwise a background merge between the
        # two runs (upgrade or not) rebuilds HNSW graphs and may shift approximate k-NN ranks.
        merge_to_one_segment(client, INDEX)
        index_settings = client.indices.get_settings(index=INDEX, flat_settings=True)[INDEX]["settings"]
        assert index_settings["index.knn.derived_source.enabled"] == "true"  # as every index we create
        # A team upgrading flushed its indices; SIGTERM closes the node cleanly anyway.
        client.indices.flush(index=INDEX)
        state = Upgrade(
            per_release, products, _all_sources(client, [p.id for p in products]),
            _run_searches(per_release[OLD], model), start_s=timings,
        )
        # A team that fused on the server on 2.19 has our search pipelines in its cluster state; 3.x
        # has no neural-search to run their processors, and must start anyway.
        rrf = SEARCHES[2][1]
        assert rrf is not None
        provision_pipelines(client, detect_capabilities(client), [rrf])  # the searcher creates none
        server = HybridSearcher(create_client(per_release[OLD]), per_release[OLD], index=INDEX, tower=model)
        try:
            response = server.search(SearchRequest(QUERIES[0], fusion=rrf, fusion_path="server"))
        finally:
            server.close()
        assert response.fusion_path == "server" and response.hits
        assert PIPELINE in client.transport.perform_request("GET", f"/_search/pipeline/{PIPELINE}")
        client.close()
    finally:
        old.stop()

    new = _start(per_release[NEW], timings)
    try:
        state.upgraded = create_client(per_release[NEW])
        yield state
        state.upgraded.close()
    finally:
        new.stop()
        print(f"\nnode start-to-health seconds: {timings}")  # noqa: T201 (measured for docs/opensearch-versions.md)


def test_the_upgraded_node_runs_3x_with_the_whole_index(upgrade: Upgrade) -> None:
    client = upgrade.upgraded
    assert client is not None
    assert client.info()["version"]["number"] == NEW
    health = client.cluster.health(index=INDEX, wait_for_status="green")
    assert health["status"] == "green" and not health["timed_out"]
    assert client.count(index=INDEX)["count"] == N_PRODUCTS


def test_every_vector_reads_back_equal_after_the_upgrade(upgrade: Upgrade) -> None:
    """2.19's derived-source documents, rebuilt by 3.4: same fields, same float32 vectors."""
    client = upgrade.upgraded
    assert client is not None
    after = _all_sources(client, [p.id for p in upgrade.products])
    vector_fields = set(VECTOR_FIELDS.values())
    compared = 0
    for doc_id, before in upgrade.sources.items():
        assert after[doc_id].keys() == before.keys(), doc_id
        for name, value in before.items():
            if name in vector_fields:
                assert np.array_equal(np.asarray(after[doc_id][name], np.float32), np.asarray(value, np.float32)), (
                    doc_id, name,
                )
                compared += 1
            else:
                assert after[doc_id][name] == value, (doc_id, name)
    assert compared >= N_PRODUCTS  # mm_fused at least on every product, the modalities where they exist


def test_searches_rank_and_score_as_before_the_upgrade(upgrade: Upgrade, model: MultimodalModel) -> None:
    """Same ids in the same order for every search; the same scores, BM25's scaled as 3.0 scales it."""
    client = upgrade.upgraded
    assert client is not None
    after = _run_searches(upgrade.settings[NEW], model)
    assert after.keys() == upgrade.results.keys()
    for key, before in upgrade.results.items():
        if key[3] != N_PRODUCTS:
            continue  # approximate: test_approximate_knn_still_finds_the_neighbours_after_the_upgrade
        assert [i for i, _ in after[key]] == [i for i, _ in before], key
        expected = np.asarray([s for _, s in before]) * (BM25_3X_FACTOR if key[1] == "bm25" else 1.0)
        assert np.allclose([s for _, s in after[key]], expected, rtol=1e-5, atol=1e-6), key


def test_approximate_knn_still_finds_the_neighbours_after_the_upgrade(upgrade: Upgrade, model: MultimodalModel) -> None:
    """At depth APPROX_DEPTH 3.4 searches the HNSW graph 2.19 built: shared hits score the same, recall stays high.

    Equal ranks are not required here: which documents a graph search reaches depends on the order
    it meets them, and 3.4's similarities differ from 2.19's in the last bits (another Lucene), so it
    can take other paths: on this data it found a few true neighbours 2.19 had missed.
    """
    client = upgrade.upgraded
    assert client is not None
    settings = upgrade.settings[NEW]
    after = _run_searches(settings, model)
    ids = list(upgrade.sources)
    vectors = np.asarray([upgrade.sources[i]["mm_fused"] for i in ids], np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    recall: dict[str, list[float]] = {OLD: [], NEW: []}
    for query in QUERIES:
        key = (query, "vector", SEARCHES.index(("vector", None)), APPROX_DEPTH)
        exact = {ids[i] for i in np.argsort(-(vectors @ model.encode_queries([query])[0]), kind="stable")[:30]}
        before, now = dict(upgrade.results[key]), dict(after[key])
        for doc_id in before.keys() & now.keys():
            assert now[doc_id] == pytest.approx(before[doc_id], rel=1e-5), (query, doc_id)
        recall[OLD].append(len(exact & before.keys()) / 30)
        recall[NEW].append(len(exact & now.keys()) / 30)
    print(f"\nrecall@30 of the exact neighbours at depth {APPROX_DEPTH}: {recall}")  # noqa: T201 (for the docs)
    assert min(recall[NEW]) >= 0.9, recall


def test_2x_fusion_pipelines_do_not_stop_3x_and_auto_fuses_on_the_client(
    upgrade: Upgrade, model: MultimodalModel
) -> None:
    """The pipeline 2.19 stored is still in the cluster state; ``auto`` on 3.4 fuses on the client, as before."""
    client = upgrade.upgraded
    assert client is not None
    assert PIPELINE in client.transport.perform_request("GET", f"/_search/pipeline/{PIPELINE}")
    settings = upgrade.settings[NEW]
    searcher = HybridSearcher(create_client(settings), settings, index=INDEX, tower=model)
    try:
        response = searcher.search(SearchRequest(QUERIES[0], fusion=SEARCHES[2][1], size=30, depth=N_PRODUCTS))
    finally:
        searcher.close()
    assert response.fusion_path == "client" and not response.degraded
    assert [(h.id, round(h.score, 6)) for h in response.hits] == [
        (i, round(score, 6)) for i, score in upgrade.results[(QUERIES[0], "hybrid", 2, N_PRODUCTS)]
    ]


def test_index_inspect_reads_the_upgraded_index(upgrade: Upgrade) -> None:
    port = upgrade.settings[NEW].dev_opensearch_port
    env = {**os.environ, "COLUMNS": "200", "MMOS_OPENSEARCH_HOSTS": f"http://127.0.0.1:{port}"}
    env.pop("MMOS_MODEL_DIR", None)  # the index's own report, not an augment plan
    done = subprocess.run(  # noqa: S603
        [*CLI, "index", "inspect", INDEX], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in output, output
    for row in (f"documents  {N_PRODUCTS}", "no (k-NN derived source)", "mm_id doc values", "augment strategy  ready"):
        assert " ".join(row.split()) in " ".join(output.replace("│", " ").split()), (row, output)


def test_guarded_vector_writes_work_after_the_upgrade(upgrade: Upgrade) -> None:
    """What the backfill does on 3.4: a vector update guarded by the seq_no it read, and a stale one refused."""
    client = upgrade.upgraded
    assert client is not None
    doc_id = upgrade.products[0].id
    read = client.get(index=INDEX, id=doc_id)
    dim = len(read["_source"]["mm_fused"])
    vector = json_floats(np.random.default_rng(3).normal(size=dim).astype(np.float32))
    action = vector_update_action(
        INDEX, doc_id, {"mm_fused": vector}, if_seq_no=read["_seq_no"], if_primary_term=read["_primary_term"]
    )
    report = bulk_write(client, [action], refresh="wait_for")
    assert report.succeeded == 1 and not report.failed
    written = client.get(index=INDEX, id=doc_id)
    assert np.array_equal(np.asarray(written["_source"]["mm_fused"], np.float32), np.asarray(vector, np.float32))
    others = {k: v for k, v in read["_source"].items() if k != "mm_fused"}
    assert {k: v for k, v in written["_source"].items() if k != "mm_fused"} == others  # BM25 fields kept
    nearest = client.search(index=INDEX, body={"size": 1, "query": {"knn": {"mm_fused": {"vector": vector, "k": 1}}}})
    assert nearest["hits"]["hits"][0]["_id"] == doc_id
    with pytest.raises(ConflictError):  # the seq_no 2.19 handed out is stale now
        client.update(
            index=INDEX, id=doc_id, body={"doc": {"mm_fused": vector}},
            if_seq_no=read["_seq_no"], if_primary_term=read["_primary_term"],
        )


def test_a_downgrade_to_2x_is_refused_by_name(upgrade: Upgrade) -> None:
    """Last in the module: stops the 3.4 node, then 2.19 must refuse its data before starting a JVM."""
    new = OpenSearchNode(upgrade.settings[NEW])
    assert new.stop()
    old = OpenSearchNode(upgrade.settings[OLD])
    with pytest.raises(DevServiceError, match=rf"written by OpenSearch {NEW}, which {OLD} cannot read.*"
                                              rf"MMOS_DEV_OPENSEARCH_VERSION={NEW}"):
        old.start()
    assert old.process.pid() is None
    assert (old.home / "mmos-version").read_text().strip() == NEW  # the refusal did not overwrite the record
