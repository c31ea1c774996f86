"""The local services are real: OpenSearch with k-NN (lucene engine) and Redis."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import redis
from opensearchpy import OpenSearch

from mm_opensearch.catalog import CatalogSchema
from mm_opensearch.config import Settings
from mm_opensearch.devservices import OpenSearchNode, RedisServer
from mm_opensearch.devservices.opensearch import find_java
from mm_opensearch.errors import DevServiceError
from mm_opensearch.indexing import bulk_write, index_action, product_index_body
from tests.ports import free_port as _free_port

pytestmark = pytest.mark.services

SCHEMA = CatalogSchema(
    text_fields={"title": 1.0, "description": 1.0}, filter_fields=("colour", "price"), image_field=None
)


def test_node_runs_the_configured_release_with_knn(client: OpenSearch, settings: Settings) -> None:
    info = client.info()
    assert info["version"]["number"] == settings.dev_opensearch_version
    assert client.cluster.health()["status"] in {"green", "yellow"}
    plugins = {row["component"] for row in client.cat.plugins(format="json")}
    assert any("KNNPlugin" in p or p == "opensearch-knn" for p in plugins)


def _docs() -> list[dict]:
    return [
        {"id": "1", "title": "red floral dress", "description": "summer cotton", "colour": "red", "price": 20.0,
         "mm_fused": [1.0, 0.0, 0.0]},
        {"id": "2", "title": "blue denim jeans", "description": "slim fit", "colour": "blue", "price": 40.0,
         "mm_fused": [0.9, 0.1, 0.0]},
        {"id": "3", "title": "red running shoes", "description": "red red mesh", "colour": "red", "price": 60.0,
         "mm_fused": [0.0, 1.0, 0.0]},
        {"id": "4", "title": "black leather belt", "description": "classic", "colour": "black", "price": 15.0,
         "mm_fused": [0.0, 0.0, 1.0]},
    ]


@pytest.fixture
def small_index(client: OpenSearch, index_name: str) -> str:
    body = product_index_body(SCHEMA, sample=_docs()[0], dim=3, model_id="test-model")
    client.indices.create(index=index_name, body=body)
    report = bulk_write(client, [index_action(index_name, d["id"], d) for d in _docs()], refresh="wait_for")
    assert report.succeeded == 4 and not report.failed
    return index_name


def test_index_mapping_has_bm25_text_and_lucene_knn_vector(client: OpenSearch, small_index: str) -> None:
    mapping = client.indices.get_mapping(index=small_index)[small_index]["mappings"]
    assert mapping["properties"]["title"]["type"] == "text"
    vector = mapping["properties"]["mm_fused"]
    assert vector["type"] == "knn_vector" and vector["dimension"] == 3
    assert vector["method"]["engine"] == "lucene"
    assert mapping["_meta"]["mm_opensearch"]["model_id"] == "test-model"
    settings = client.indices.get_settings(index=small_index)[small_index]["settings"]["index"]
    assert settings["knn"] == "true"


def test_knn_query_with_filter_returns_the_nearest_matching_document(client: OpenSearch, small_index: str) -> None:
    unfiltered = client.search(
        index=small_index, body={"size": 2, "query": {"knn": {"mm_fused": {"vector": [1.0, 0.05, 0.0], "k": 2}}}}
    )
    assert [h["_id"] for h in unfiltered["hits"]["hits"]] == ["1", "2"]
    filtered = client.search(
        index=small_index,
        body={
            "size": 2,
            "query": {"knn": {"mm_fused": {"vector": [1.0, 0.05, 0.0], "k": 2,
                                           "filter": {"term": {"colour": "blue"}}}}},
        },
    )
    assert [h["_id"] for h in filtered["hits"]["hits"]] == ["2"]


def _store_bytes(client: OpenSearch, index: str) -> int:
    client.indices.forcemerge(index=index, max_num_segments=1)
    return int(client.indices.stats(index=index, metric="store")["indices"][index]["total"]["store"]["size_in_bytes"])


def test_vectors_are_derived_not_stored_yet_read_back_exactly(client: OpenSearch, index_name: str) -> None:
    """The stored _source leaves the vectors out; get, partial update and _reindex still see them exactly."""
    rng = np.random.default_rng(7)
    docs = [{"id": str(i), "title": f"product {i}", "colour": "red", "price": float(i),
             "mm_fused": [float(x) for x in rng.normal(size=128).astype(np.float32)]} for i in range(300)]
    sizes = {}
    for derived in (True, False):
        name = f"{index_name}-{'derived' if derived else 'stored'}"
        body = product_index_body(SCHEMA, sample=docs[0], dim=128, model_id="test-model")
        body["settings"]["index"]["knn.derived_source.enabled"] = derived
        client.indices.create(index=name, body=body)
        assert bulk_write(client, [index_action(name, d["id"], d) for d in docs], refresh="wait_for").succeeded == 300
        sizes[derived] = _store_bytes(client, name)
    assert sizes[True] < 0.75 * sizes[False], sizes  # the vectors' JSON was most of each stored document

    def same_vector(read: list[float]) -> bool:  # float32 values, read back as their shortest decimals
        return np.array_equal(np.asarray(read, dtype=np.float32), np.asarray(docs[5]["mm_fused"], dtype=np.float32))

    name = f"{index_name}-derived"
    assert same_vector(client.get(index=name, id="5")["_source"]["mm_fused"])
    client.update(index=name, id="5", body={"doc": {"title": "renamed product"}}, refresh="wait_for")
    updated = client.get(index=name, id="5")["_source"]
    assert updated["title"] == "renamed product" and updated["price"] == 5.0
    assert same_vector(updated["mm_fused"])  # an update rebuilds _source with the vector in it
    client.reindex(body={"source": {"index": name}, "dest": {"index": f"{index_name}-copy"}}, refresh=True)
    copied = client.get(index=f"{index_name}-copy", id="5")["_source"]
    assert same_vector(copied["mm_fused"]) and copied["title"] == "renamed product"
    nearest = client.search(index=name, body={"size": 1, "query": {"knn": {"mm_fused": {"vector": docs[9]["mm_fused"], "k": 1}}}})
    assert nearest["hits"]["hits"][0]["_id"] == "9"


def test_match_query_ranks_by_bm25(client: OpenSearch, small_index: str) -> None:
    result = client.search(
        index=small_index,
        body={"query": {"multi_match": {"query": "red", "fields": SCHEMA.multi_match_fields()}}},
    )
    ids = [h["_id"] for h in result["hits"]["hits"]]
    # "red" occurs three times in product 3 and once in product 1: term frequency wins.
    assert ids == ["3", "1"]
    scores = [h["_score"] for h in result["hits"]["hits"]]
    assert scores[0] > scores[1] > 0


def test_redis_round_trip(redis_client: redis.Redis) -> None:
    redis_client.set("mmos:test:key", "value", ex=30)
    assert redis_client.get("mmos:test:key") == b"value"


def test_dev_up_twice_is_harmless(settings: Settings) -> None:
    node, server = OpenSearchNode(settings), RedisServer(settings)
    before = (node.status().pid, server.status().pid)
    assert node.start().running and server.start().running
    assert (node.status().pid, server.status().pid) == before


def _listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_port_in_use_gives_a_clear_error(tmp_path: Path) -> None:
    with _listening_socket() as sock:
        port = sock.getsockname()[1]
        busy = Settings(dev_dir=tmp_path, dev_opensearch_port=port, dev_redis_port=port)
        with pytest.raises(DevServiceError, match=rf"port {port} .*MMOS_DEV_OPENSEARCH_PORT"):
            OpenSearchNode(busy).start()
        with pytest.raises(DevServiceError, match=rf"port {port} .*MMOS_DEV_REDIS_PORT"):
            RedisServer(busy).start()


def test_missing_jdk_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(DevServiceError, match="2.19.1 needs a JDK 11-23.*openjdk-17-jdk-headless.*MMOS_DEV_JAVA_HOME"):
        find_java(Settings(dev_java_home=tmp_path / "no-jdk", dev_opensearch_version="2.19.1"))


def test_3x_without_a_jdk_21_says_so(tmp_path: Path) -> None:
    """3.x needs Java 21+: a JDK 17 given explicitly is refused by name, not started to fail later."""
    jdk17 = Path("/usr/lib/jvm/java-17-openjdk-amd64")
    if not (jdk17 / "bin" / "java").exists():
        pytest.fail(f"this test needs the JDK 17 that scripts/setup.sh expects at {jdk17}")
    with pytest.raises(DevServiceError, match=r"(?s)java-17.*\(Java 17\).*3\.4\.0 needs a JDK 21 or later"):
        find_java(Settings(dev_java_home=jdk17, dev_opensearch_version="3.4.0"))


def test_maven_failure_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = OpenSearchNode(Settings(cache_dir=tmp_path / "cache", dev_dir=tmp_path))
    broken = tmp_path / "launcher"
    (broken / "src").mkdir(parents=True)
    (broken / "pom.xml").write_text("<project>not a valid pom")
    monkeypatch.setattr(node, "source", broken)
    with pytest.raises(DevServiceError, match=r"(?s)Maven could not fetch.*mm-opensearch dev fetch"):
        node.fetch()


def test_missing_maven_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = OpenSearchNode(Settings(cache_dir=tmp_path / "cache", dev_dir=tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DevServiceError, match="apt-get install -y maven"):
        node.fetch()


def test_a_second_node_starts_and_stops_without_leaving_a_process(tmp_path: Path, settings: Settings) -> None:
    own = settings.model_copy(update={
        "dev_dir": tmp_path, "dev_opensearch_port": _free_port(), "dev_opensearch_transport_port": _free_port(),
        "dev_redis_port": _free_port(), "dev_opensearch_heap": "512m",
    })
    node, server = OpenSearchNode(own), RedisServer(own)
    try:
        assert node.start().running and server.start().running
        pids = [node.status().pid, server.status().pid]
    finally:
        node.stop()
        server.stop()
    for pid in pids:
        assert pid is not None and not Path(f"/proc/{pid}").exists()
    assert not node.status().running and node.status().pid is None
    assert not server.status().running
