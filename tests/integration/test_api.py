"""The HTTP API through a real uvicorn server on a loopback port (and TestClient for failure set-ups)."""

from __future__ import annotations

import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opensearchpy import OpenSearch
from pydantic import SecretStr

from mm_opensearch.api import RETRY_AFTER_S, create_app
from mm_opensearch.catalog import CatalogSchema, read_catalog
from mm_opensearch.client import create_client
from mm_opensearch.config import Settings
from mm_opensearch.hybrid import HybridSearcher, MAX_QUERY_CHARS
from mm_opensearch.indexing.load import create_product_index, load_products
from mm_opensearch.towers import ModelConfig, MultimodalModel

pytestmark = pytest.mark.services

API_KEY = "s3cret-key"


@pytest.fixture(scope="module")
def model() -> MultimodalModel:
    return MultimodalModel.from_config(ModelConfig.tiny(), use_feature_cache=False)


@pytest.fixture(scope="module")
def api_index(client: OpenSearch, settings: Settings, model: MultimodalModel, myntra_dir: Path) -> Iterator[str]:
    name = f"test-api-{uuid.uuid4().hex[:12]}"
    schema = CatalogSchema.from_settings(settings)
    products = list(read_catalog(myntra_dir / "products.jsonl.gz", schema, limit=60))
    create_product_index(client, name, schema, sample=products[0].source, model=model)
    assert not load_products(client, name, products, model=model, image_roots=[myntra_dir]).failed
    client.indices.refresh(index=name)
    yield name
    client.indices.delete(index=name, ignore_unavailable=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(
    settings: Settings, model: MultimodalModel, api_index: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """uvicorn serving create_app(settings): the lifespan loads the saved model from MMOS_MODEL_DIR."""
    model_dir = model.save(tmp_path_factory.mktemp("model") / "tiny")
    app_settings = settings.model_copy(update={"model_dir": model_dir, "index_name": api_index, "api_key": SecretStr(API_KEY)})
    port = _free_port()
    uv = uvicorn.Server(uvicorn.Config(create_app(app_settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers={"X-API-Key": API_KEY}, timeout=30) as client:
        yield client


def test_hybrid_search_with_explain_over_http(http: httpx.Client, model: MultimodalModel) -> None:
    response = http.post(
        "/search",
        json={"query": "red floral dress", "mode": "hybrid", "filters": {"gender": "Women"}, "size": 5, "explain": True},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == "hybrid" and body["fusion_path"] == "server" and not body["degraded"]
    assert len(body["hits"]) == 5
    for hit in body["hits"]:
        assert hit["source"]["gender"] == "Women"
        assert set(hit["explain"]) == {"lexical", "vector"}
        assert any(leg is not None for leg in hit["explain"].values())
        assert "mm_fused" not in hit["source"]
    health = http.get("/healthz").json()
    assert health["status"] == "ok" and health["model_id"] == model.model_id


def test_pages_over_http_follow_each_other(http: httpx.Client) -> None:
    pages = [
        http.post("/search", json={"query": "shirt", "size": 5, "from": start, "k": 20}).json()["hits"] for start in (0, 5, 10, 15)
    ]
    whole = http.post("/search", json={"query": "shirt", "size": 20, "k": 20}).json()["hits"]
    assert [h["id"] for page in pages for h in page] == [h["id"] for h in whole]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"query": "dress", "size": 10**9}, "size"),
        ({"query": "dress", "k": 10**6}, "k"),
        ({"query": "dress", "from": -1}, "from"),
        ({"query": "dress", "from": 9_995, "size": 10}, "from \\+ size must be <= 10000"),
        ({"query": "dress", "from": 20, "size": 10, "k": 25}, "depth must be in"),
        ({"query": "dress", "filters": {"colour": "red"}}, "'colour'.*allowed fields are"),
        ({"query": "dress", "filters": {"price": {"between": [1, 2]}}}, "range operators"),
        ({"query": "dress", "filters": {"brand": [{"$gt": ""}]}}, "must be a string, number or boolean"),
        ({"query": "x" * (MAX_QUERY_CHARS + 1)}, "query"),
        ({"query": ""}, "query"),
        ({"query": "   "}, "query is empty"),
        ({"query": "dress", "mode": "sparse"}, "mode"),
        ({"query": "dress", "fusion": {"method": "linear", "weights": [-1, 2]}}, "weights"),
        ({"query": "dress", "fusion": {"rank_constant": 0}}, "rank_constant"),
        ({"query": "dress", "script": "ctx._source"}, "script"),
        ({"query": "dress", "vector": "image"}, "only fused vectors"),
    ],
)
def test_hostile_or_malformed_requests_get_422_with_the_reason(http: httpx.Client, body: dict[str, Any], reason: str) -> None:
    response = http.post("/search", json=body)
    assert response.status_code == 422, response.text
    assert re.search(reason, response.text)


def test_an_unpaired_surrogate_and_broken_json_get_422(http: httpx.Client) -> None:
    surrogate = http.post("/search", content=b'{"query": "dress \\ud800"}', headers={"Content-Type": "application/json"})
    assert surrogate.status_code == 422 and "unicode" in surrogate.text
    broken = http.post("/search", content=b'{"query": "dr', headers={"Content-Type": "application/json"})
    assert broken.status_code == 422
    invalid_utf8 = http.post("/search", content=b'{"query": "\xff\xfe"}', headers={"Content-Type": "application/json"})
    assert 400 <= invalid_utf8.status_code < 500


@pytest.mark.parametrize("query", ["👗 ドレス", "\u202eserd der", "zero\u200bwidth", "nul\x00byte", "<script>alert(1)</script>"])
def test_odd_unicode_is_answered(http: httpx.Client, query: str) -> None:
    assert http.post("/search", json={"query": query}).status_code == 200


def test_the_api_key_is_required_when_configured(server: str) -> None:
    assert httpx.post(f"{server}/search", json={"query": "dress"}).status_code == 401
    assert httpx.post(f"{server}/search", json={"query": "dress"}, headers={"X-API-Key": "wrong"}).status_code == 401
    assert httpx.get(f"{server}/metrics").status_code == 401
    assert httpx.get(f"{server}/healthz").status_code == 200


def test_metrics_have_latency_per_mode_and_leg(http: httpx.Client) -> None:
    for mode in ("bm25", "vector", "hybrid"):
        assert http.post("/search", json={"query": "watch", "mode": mode, "fusion_path": "client"}).status_code == 200
    text = http.get("/metrics").text
    for mode, leg in [("bm25", "lexical"), ("vector", "vector"), ("vector", "encode"), ("hybrid", "lexical"), ("hybrid", "fuse")]:
        assert f'mmos_search_latency_seconds_count{{leg="{leg}",mode="{mode}"}}' in text


def test_the_openapi_schema_is_published(http: httpx.Client) -> None:
    schema = http.get("/openapi.json").json()
    assert {"/search", "/healthz", "/metrics"} <= set(schema["paths"])
    assert schema["components"]["schemas"]["SearchIn"]["properties"]["size"]["maximum"] == 100


def _test_client(app: FastAPI) -> TestClient:
    return TestClient(app, raise_server_exceptions=False)


def test_an_opensearch_outage_gives_503_with_retry_after(settings: Settings, model: MultimodalModel) -> None:
    dead = create_client(settings.model_copy(update={"opensearch_hosts": ["http://127.0.0.1:9"]}), max_retries=0)
    app = create_app(settings, searcher=HybridSearcher(dead, settings, index="products", tower=model))
    with _test_client(app) as http:
        response = http.post("/search", json={"query": "dress"})
        assert response.status_code == 503 and response.headers["Retry-After"] == str(RETRY_AFTER_S)
        assert "retry" in response.json()["detail"]
        assert http.get("/healthz").status_code == 503


def test_a_model_of_another_index_gives_409(client: OpenSearch, settings: Settings, api_index: str) -> None:
    other = MultimodalModel.from_config(ModelConfig.tiny(seed=7), use_feature_cache=False)
    app = create_app(settings, searcher=HybridSearcher(client, settings, index=api_index, tower=other))
    with _test_client(app) as http:
        response = http.post("/search", json={"query": "dress"})
        assert response.status_code == 409 and "holds vectors of model" in response.json()["detail"]


def test_without_a_model_the_api_answers_degraded(client: OpenSearch, settings: Settings, api_index: str) -> None:
    app = create_app(settings, searcher=HybridSearcher(client, settings, index=api_index, tower_error="no model"))
    with _test_client(app) as http:
        body = http.post("/search", json={"query": "shirt", "mode": "hybrid"}).json()
        assert body["degraded"] and body["mode"] == "bm25" and body["hits"]
        assert http.get("/healthz").json()["status"] == "degraded"
