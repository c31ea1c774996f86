"""The HTTP API through a real uvicorn server on a loopback port (and TestClient for failure set-ups)."""

from __future__ import annotations

import copy
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from schemathesis.checks import positive_data_acceptance
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from opensearchpy import OpenSearch
from pydantic import SecretStr

from mm_opensearch.api import RETRY_AFTER_S, create_app
from mm_opensearch.api.app import UNAVAILABLE
from mm_opensearch.catalog import CatalogSchema, read_catalog
from mm_opensearch.client import create_client
from mm_opensearch.config import Settings
from mm_opensearch.hybrid import HybridSearcher, MAX_QUERY_CHARS
from mm_opensearch.indexing.load import create_product_index, load_products
from mm_opensearch.towers import ModelConfig, MultimodalModel
from tests.ports import free_port as _free_port

pytestmark = pytest.mark.services

API_KEY = "s3cret-key"


@pytest.fixture(scope="module")
def model() -> MultimodalModel:
    return MultimodalModel.from_config(ModelConfig.tiny(), use_feature_cache=False)


@pytest.fixture(scope="module")
def api_index(
    client: OpenSearch, settings: Settings, model: MultimodalModel, myntra_dir: Path, server_pipelines: list[str]
) -> Iterator[str]:
    name = f"test-api-{uuid.uuid4().hex[:12]}"
    schema = CatalogSchema.from_settings(settings)
    products = list(read_catalog(myntra_dir / "products.jsonl.gz", schema, limit=60))
    create_product_index(client, name, schema, sample=products[0].source, model=model)
    assert not load_products(client, name, products, model=model, image_roots=[myntra_dir]).failed
    client.indices.refresh(index=name)
    yield name
    client.indices.delete(index=name, ignore_unavailable=True)


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


def test_hybrid_search_with_explain_over_http(http: httpx.Client, model: MultimodalModel, neural_search: bool) -> None:
    response = http.post(
        "/search",
        json={"query": "red floral dress", "mode": "hybrid", "filters": {"gender": "Women"}, "size": 5, "explain": True},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    # auto: server-side where the node has neural-search (2.x), else on the client (3.x)
    assert body["mode"] == "hybrid" and not body["degraded"]
    assert body["fusion_path"] == ("server" if neural_search else "client")
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
    # a library error's 422 reads like a validation 422: a list of {loc, msg, type}
    assert all({"loc", "msg", "type"} <= set(error) for error in response.json()["detail"])


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"query": "shirt", "filters": {"gender": "Women"}, "from": 50, "size": 10, "fusion_path": "server"},
                     marks=pytest.mark.neural_search),
        pytest.param({"query": "shirt", "from": 9_990, "size": 10, "k": 10_000, "fusion_path": "server"},
                     marks=pytest.mark.neural_search),
        {"query": "shirt", "from": 9_990, "size": 10, "k": 10_000, "fusion_path": "client"},
    ],
)
def test_a_page_past_the_end_of_the_fused_candidates_is_empty(http: httpx.Client, body: dict[str, Any]) -> None:
    response = http.post("/search", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["hits"] == [] and response.json()["fusion_path"] == body["fusion_path"]


@pytest.mark.parametrize(
    ("filters", "value"),
    [
        ({"price": "abc"}, '"abc"'),
        ({"price": [1, "x"]}, '"x"'),
        ({"price": True}, "true"),
        ({"price": {"gte": "now-1d"}}, '"now-1d"'),
    ],
)
@pytest.mark.parametrize("mode", ["bm25", "hybrid"])
def test_a_filter_value_the_field_cannot_take_gets_422_naming_the_field_and_its_type(
    http: httpx.Client, filters: dict[str, Any], value: str, mode: str
) -> None:
    response = http.post("/search", json={"query": "shirt", "mode": mode, "filters": filters})
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["msg"] == f"filter 'price': {value} is not a number, and 'price' is a number field (double); give a number"


def test_a_date_the_field_cannot_parse_gets_422_with_opensearchs_reason(
    client: OpenSearch, settings: Settings, model: MultimodalModel, api_index: str
) -> None:
    dated = settings.model_copy(update={"filter_fields": ["updated_at"]})
    app = create_app(dated, searcher=HybridSearcher(client, dated, index=api_index, tower=model))
    with _test_client(app) as http:
        for mode in ("bm25", "hybrid"):
            response = http.post("/search", json={"query": "shirt", "mode": mode, "filters": {"updated_at": {"gte": "yesterday"}}})
            assert response.status_code == 422, response.text
            assert "failed to parse date field [yesterday]" in response.json()["detail"][0]["msg"]


def test_a_body_over_the_limit_gets_413_before_it_is_read(http: httpx.Client) -> None:
    declared = http.post("/search", content=b" " * (65 * 1024), headers={"Content-Type": "application/json"})
    assert declared.status_code == 413 and "body over 65536 bytes" in declared.json()["detail"]
    chunked = http.post(
        "/search", content=iter([b" " * 10_000] * 10), headers={"Content-Type": "application/json"}
    )
    assert chunked.status_code == 413


def test_a_validation_error_does_not_echo_a_large_input(http: httpx.Client) -> None:
    response = http.post("/search", json={"query": "x" * 60_000})
    assert response.status_code == 422
    assert len(response.content) < 1_000
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "query"] and error["input"] == "x" * 100 + "..."
    missing = http.post("/search", json={"filters": {"brand": ["Nike"] * 1000}})
    assert missing.status_code == 422 and "input" not in missing.json()["detail"][0]


def test_error_responses_are_json_and_counted_by_status(http: httpx.Client) -> None:
    refused = http.post("/search", json={"query": "shirt", "filters": {"price": "abc"}})
    too_large = http.post("/search", content=b" " * (65 * 1024), headers={"Content-Type": "application/json"})
    not_utf8 = http.post("/search", content=b'{"query": "\xff\xfe"}', headers={"Content-Type": "application/json"})
    for response in (refused, too_large, not_utf8):
        assert response.headers["content-type"] == "application/json", response.text
    text = http.get("/metrics").text
    assert re.search(r'mmos_http_responses_total\{route="/search",status="422"\} [1-9]', text)
    assert re.search(r'mmos_http_responses_total\{route="unmatched",status="413"\} [1-9]', text)
    assert re.search(r'mmos_http_responses_total\{route="/search",status="400"\} [1-9]', text)


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
    assert set(schema["paths"]["/search"]["post"]["responses"]) == {"200", "400", "401", "403", "409", "413", "422", "500", "503"}
    assert set(schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    components = schema["components"]["schemas"]
    assert components["SearchIn"]["properties"]["k"]["anyOf"][0]["minimum"] == 1
    weights = components["FusionIn"]["properties"]["weights"]["anyOf"][0]["prefixItems"]
    assert [weight["minimum"] for weight in weights] == [0, 0]


@pytest.fixture(scope="module")
def api_schema(client: OpenSearch, settings: Settings, model: MultimodalModel, api_index: str) -> Any:
    """The app's own OpenAPI schema, loaded from the app, which answers from the test node."""
    app_settings = settings.model_copy(update={"api_key": SecretStr(API_KEY)})
    app = create_app(app_settings, searcher=HybridSearcher(client, settings, index=api_index, tower=model))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize(("method", "path"), [("POST", "/search"), ("GET", "/healthz"), ("GET", "/metrics")])
def test_the_api_answers_as_its_openapi_schema_says(api_schema: Any, method: str, path: str) -> None:
    """schemathesis' checks (no 5xx, documented statuses, content types, headers and bodies) on generated requests.

    Through hypothesis directly: schemathesis' pytest plugin does not run under pytest 9. Not
    checked: that every schema-valid body is accepted, as the cross-field rules (``from + size <=
    k``, the filterable fields and their types) are the library's, beyond what JSON Schema says.
    """

    @given(case=api_schema[path][method].as_strategy())
    @examples(max_examples=60, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
    def answers_as_documented(case: schemathesis.Case) -> None:
        case.call_and_validate(headers={"X-API-Key": API_KEY}, excluded_checks=[positive_data_acceptance])

    answers_as_documented()


def _test_client(app: FastAPI) -> TestClient:
    return TestClient(app, raise_server_exceptions=False)


def test_an_opensearch_outage_gives_503_with_retry_after(settings: Settings, model: MultimodalModel) -> None:
    dead = create_client(settings.model_copy(update={"opensearch_hosts": ["http://127.0.0.1:9"]}), max_retries=0)
    app = create_app(settings, searcher=HybridSearcher(dead, settings, index="products", tower=model))
    with _test_client(app) as http:
        response = http.post("/search", json={"query": "dress"})
        assert response.status_code == 503 and response.headers["Retry-After"] == str(RETRY_AFTER_S)
        assert response.json() == {"detail": UNAVAILABLE}  # no host, port or exception class: those go to the log
        assert http.get("/healthz").status_code == 503


def test_a_model_of_another_index_gives_409(client: OpenSearch, settings: Settings, api_index: str) -> None:
    other = MultimodalModel.from_config(ModelConfig.tiny(seed=7), use_feature_cache=False)
    app = create_app(settings, searcher=HybridSearcher(client, settings, index=api_index, tower=other))
    with _test_client(app) as http:
        response = http.post("/search", json={"query": "dress"})
        assert response.status_code == 409 and "holds vectors of model" in response.json()["detail"]


def test_a_fusion_method_named_gets_that_methods_tuned_fields(
    settings: Settings, model: MultimodalModel, api_index: str, tmp_path: Path
) -> None:
    """What `eval --tune` stored reaches a request by the method it names (the lifespan's open_searcher)."""
    tuned = copy.copy(model)  # the same weights, another hybrid config (not part of the model id)
    tuned.config = model.config.model_copy(update={"hybrid": {
        "default": "linear",
        "linear": {"normalization": "l2", "weights": [0.3, 0.7]},
        "rrf": {"weights": [1.0, 2.0], "rank_constant": 20},
    }})
    app_settings = settings.model_copy(update={"model_dir": tuned.save(tmp_path / "tuned"), "index_name": api_index})
    with _test_client(create_app(app_settings)) as http:
        def fusion(body: dict[str, Any]) -> dict[str, Any]:
            response = http.post("/search", json={"query": "shirt", **body})
            assert response.status_code == 200, response.text
            return response.json()["fusion"]

        assert fusion({}) == {"method": "linear", "normalization": "l2", "weights": [0.3, 0.7], "rank_constant": 60}
        rrf = {"method": "rrf", "normalization": "min_max", "weights": [1.0, 2.0], "rank_constant": 20}
        assert fusion({"fusion": {"method": "rrf"}}) == rrf
        assert fusion({"fusion": {"method": "linear", "weights": [0.5, 0.5]}})["normalization"] == "l2"


def test_without_a_model_the_api_answers_degraded(client: OpenSearch, settings: Settings, api_index: str) -> None:
    app = create_app(settings, searcher=HybridSearcher(client, settings, index=api_index, tower_error="no model"))
    with _test_client(app) as http:
        body = http.post("/search", json={"query": "shirt", "mode": "hybrid"}).json()
        assert body["degraded"] and body["mode"] == "bm25" and body["hits"]
        assert http.get("/healthz").json()["status"] == "degraded"


def test_readyz_needs_opensearch_the_index_and_the_model(
    client: OpenSearch, settings: Settings, model: MultimodalModel, api_index: str
) -> None:
    """/healthz stays 200 while degraded; /readyz (the compose healthcheck) is 503 naming what is missing."""
    def ready(searcher: HybridSearcher) -> tuple[int, dict[str, Any]]:
        with _test_client(create_app(settings, searcher=searcher)) as http:
            response = http.get("/readyz")
            return response.status_code, response.json()

    status, body = ready(HybridSearcher(client, settings, index=api_index, tower=model))
    assert status == 200 and body["ready"] and body["model_id"] == model.model_id and body["reason"] is None
    status, body = ready(HybridSearcher(client, settings, index=api_index, tower_error="no model"))
    assert status == 503 and body["index_exists"] and body["reason"] == "no query tower: no model"
    status, body = ready(HybridSearcher(client, settings, index=f"{api_index}-missing", tower=model))
    assert status == 503 and not body["index_exists"] and "does not exist" in body["reason"]
    dead = create_client(settings.model_copy(update={"opensearch_hosts": ["http://127.0.0.1:9"]}), max_retries=0)
    status, body = ready(HybridSearcher(dead, settings, index=api_index, tower=model))
    assert status == 503 and body["reason"] == "OpenSearch does not answer"
