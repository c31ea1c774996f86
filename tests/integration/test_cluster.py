"""The dev cluster and the clients on it: every host used, a SIGKILLed node survived, health logged.

The tests marked ``multinode`` need the three-node cluster that scripts/test.sh starts for its
multi-node leg (``mm-opensearch dev up --nodes 3``, MMOS_DEV_OPENSEARCH_NODES=3, every node in
MMOS_OPENSEARCH_HOSTS); the health-line tests run on any shape.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest
from opensearchpy import ConnectionError as OSConnectionError
from opensearchpy import OpenSearch

from mm_opensearch.client import create_client, create_serving_client
from mm_opensearch.config import Settings
from mm_opensearch.devservices import OpenSearchCluster
from mm_opensearch.health import log_cluster_health

pytestmark = pytest.mark.services

N_DOCS = 60
N_SEARCHES = 60


@pytest.fixture(scope="module")
def cluster(settings: Settings) -> OpenSearchCluster:
    cluster = OpenSearchCluster(settings)
    if cluster.size < 3 or len(settings.opensearch_hosts) < cluster.size:
        pytest.fail(
            "the multinode tests need the three-node dev cluster: run scripts/test.sh (its multinode leg), or "
            "`mm-opensearch dev up --nodes 3` with MMOS_DEV_OPENSEARCH_NODES=3 and every node in MMOS_OPENSEARCH_HOSTS"
        )
    cluster.wait_until_nodes(cluster.size, status="green", timeout_s=300)
    return cluster


@pytest.fixture
def replicated_index(client: OpenSearch) -> Iterator[str]:
    """Three shards with one replica each: every shard has a copy on a second node."""
    name = f"test-cluster-{uuid.uuid4().hex[:12]}"
    client.indices.create(index=name, body={"settings": {"number_of_shards": 3, "number_of_replicas": 1}})
    body = []
    for i in range(N_DOCS):
        body += [{"index": {"_index": name, "_id": str(i)}}, {"title": f"red dress {i}" if i % 2 else f"black watch {i}"}]
    assert not client.bulk(body=body, refresh=True)["errors"]
    client.cluster.health(index=name, wait_for_status="green", params={"timeout": "120s"}, request_timeout=130)
    yield name
    client.indices.delete(index=name, ignore_unavailable=True)


def _search_all(search_client: OpenSearch, index: str) -> tuple[int, int, list[str]]:
    """Send N_SEARCHES searches; (complete answers, answers with failed shards, errors)."""
    complete, partial, errors = 0, 0, []
    for i in range(N_SEARCHES):
        try:
            response = search_client.search(index=index, body={"query": {"match": {"title": "red" if i % 2 else "black"}}})
        except Exception as e:  # noqa: BLE001 - each failure is counted and shown
            errors.append(f"{type(e).__name__}: {e}")
            continue
        if response["_shards"]["failed"] or response["hits"]["total"]["value"] != N_DOCS // 2:
            partial += 1
        else:
            complete += 1
    return complete, partial, errors


@pytest.mark.multinode
def test_a_client_on_every_host_keeps_answering_with_one_node_sigkilled(
    cluster: OpenSearchCluster, settings: Settings, replicated_index: str
) -> None:
    # a roomy deadline: this is about a dead node, not latency (a loaded CI machine took >2 s once)
    everywhere = settings.model_copy(update={"opensearch_hosts": cluster.hosts, "search_timeout_s": 15.0})
    victim = 0
    only_victim = settings.model_copy(update={"opensearch_hosts": [cluster.hosts[victim]]})
    searchers = create_serving_client(everywhere), create_client(everywhere)
    try:
        for search_client in searchers:  # warm: pooled connections to every node, the victim's too
            assert _search_all(search_client, replicated_index) == (N_SEARCHES, 0, [])
        assert cluster.kill(victim)
        for search_client in searchers:
            complete, partial, errors = _search_all(search_client, replicated_index)
            print(f"node {victim} SIGKILLed: {complete} complete, {partial} partial, {len(errors)} failed")  # noqa: T201
            assert (complete, partial, errors) == (N_SEARCHES, 0, [])
        # the control: a client that knows only the dead node cannot answer, so the hosts list is what helped
        with pytest.raises(OSConnectionError):
            create_client(only_victim, max_retries=1, timeout=2).search(index=replicated_index)
    finally:
        for search_client in searchers:
            search_client.close()
        cluster.start(victim)
    assert cluster.health()["number_of_nodes"] == cluster.size


@pytest.mark.multinode
def test_kill_and_start_by_index_and_dev_status_shows_each_node_and_the_manager(cluster: OpenSearchCluster) -> None:
    manager = cluster.elected_manager()
    assert manager is not None
    rows = cluster.status()
    assert [r.running for r in rows] == [True] * cluster.size
    assert sum("elected cluster manager" in r.detail for r in rows) == 1
    assert cluster.kill(manager)
    cluster.wait_until_nodes(cluster.size - 1, status=None, timeout_s=120)
    other = cluster.elected_manager()  # a new election among the two left
    assert other is not None and other != manager
    assert not cluster.status()[manager].running
    cluster.start(manager)
    assert cluster.health()["number_of_nodes"] == cluster.size


@pytest.mark.multinode
def test_sniffing_finds_every_node_from_one_host(cluster: OpenSearchCluster, settings: Settings) -> None:
    one = settings.model_copy(update={"opensearch_hosts": [cluster.hosts[0]], "opensearch_sniff": True})
    client = create_client(one)
    try:
        assert len(client.transport.connection_pool.connections) == cluster.size
        assert client.ping()
    finally:
        client.close()


@pytest.fixture
def unallocatable(client: OpenSearch) -> Iterator[tuple[str, str]]:
    """An index with more replicas than nodes (yellow) and one bound to no node (red)."""
    yellow, red = f"test-yellow-{uuid.uuid4().hex[:8]}", f"test-red-{uuid.uuid4().hex[:8]}"
    nodes = client.cluster.health()["number_of_nodes"]
    client.indices.create(index=yellow, body={"settings": {"number_of_shards": 1, "number_of_replicas": nodes}})
    client.indices.create(
        index=red,
        body={"settings": {"number_of_shards": 1, "number_of_replicas": 0,
                           "index.routing.allocation.require._name": "mmos-no-such-node"}},
        params={"wait_for_active_shards": "0"},
    )
    yield yellow, red
    client.indices.delete(index=f"{yellow},{red}", ignore_unavailable=True)


def test_a_yellow_or_red_cluster_is_one_warning_at_start(
    client: OpenSearch, unallocatable: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    yellow, red = unallocatable
    client.cluster.health(index=yellow, wait_for_status="yellow", params={"timeout": "60s"}, request_timeout=70)
    client.indices.delete(index=red)
    with caplog.at_level(logging.INFO, logger="mm_opensearch.health"):
        assert log_cluster_health(client) == "yellow"
    [record] = [r for r in caplog.records if r.name == "mm_opensearch.health"]
    assert record.levelno == logging.WARNING and "is YELLOW" in record.getMessage()
    assert "unassigned" in record.getMessage()
    client.indices.create(
        index=red,
        body={"settings": {"number_of_shards": 1, "number_of_replicas": 0,
                           "index.routing.allocation.require._name": "mmos-no-such-node"}},
        params={"wait_for_active_shards": "0"},
    )
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mm_opensearch.health"):
        assert log_cluster_health(client) == "red"
    assert "is RED" in caplog.text and "primary shards are unassigned" in caplog.text


@pytest.mark.smoke
def test_smoke_the_started_shape_is_green_with_its_nodes_and_answers_a_knn_query(
    client: OpenSearch, settings: Settings
) -> None:
    """What scripts/test.sh checks on the shapes no other leg runs (3.4.0 secured, 3.4.0 on three nodes)."""
    health = client.cluster.health(wait_for_status="green", params={"timeout": "120s"}, request_timeout=130)
    assert (health["status"], health["number_of_nodes"]) == ("green", settings.dev_opensearch_nodes)
    name = f"test-smoke-{uuid.uuid4().hex[:8]}"
    client.indices.create(index=name, body={
        "settings": {"index.knn": True},
        "mappings": {"properties": {"v": {"type": "knn_vector", "dimension": 2,
                                          "method": {"name": "hnsw", "engine": "lucene", "space_type": "l2"}}}},
    })
    try:
        body = []
        for doc_id, vector in (("near", [1.0, 1.0]), ("far", [9.0, 9.0]), ("mid", [4.0, 4.0])):
            body += [{"index": {"_index": name, "_id": doc_id}}, {"v": vector}]
        assert not client.bulk(body=body, refresh=True)["errors"]
        response = client.search(index=name, body={"size": 3, "query": {"knn": {"v": {"vector": [0.0, 0.0], "k": 3}}}})
        assert [hit["_id"] for hit in response["hits"]["hits"]] == ["near", "mid", "far"]
        assert response["_shards"]["failed"] == 0
    finally:
        client.indices.delete(index=name, ignore_unavailable=True)
