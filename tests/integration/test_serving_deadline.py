"""One deadline for serving: a stuck node (its JVM stopped with SIGSTOP) gives a 503 within it, then recovers."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn
from opensearchpy import OpenSearch

from mm_opensearch.api import create_app
from mm_opensearch.catalog import CatalogSchema, read_catalog
from mm_opensearch.config import Settings
from mm_opensearch.devservices.opensearch import OpenSearchNode
from mm_opensearch.errors import SearchUnavailableError
from mm_opensearch.hybrid import HybridSearcher, SearchRequest, open_searcher
from mm_opensearch.indexing.load import create_product_index, load_products
from mm_opensearch.towers import MultimodalModel
from tests.ports import free_port

pytestmark = pytest.mark.services

DEADLINE_S = 2.0
MARGIN_S = 1.0


@pytest.fixture(scope="module")
def jvm_pid(settings: Settings) -> int:
    """The test node's JVM, as `mm-opensearch dev up` (scripts/test.sh) recorded it."""
    node = OpenSearchNode(settings)
    pid = node.process.pid()
    if pid is None or not any(host.rstrip("/").endswith(f":{node.port}") for host in settings.opensearch_hosts):
        pytest.skip(f"no node started here (MMOS_DEV_DIR {settings.dev_dir}) serves {settings.opensearch_hosts}")
    return pid


@contextlib.contextmanager
def stuck(pid: int) -> Iterator[None]:
    """The node accepts connections (the kernel does) but answers nothing until the block ends."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def serving_settings(
    client: OpenSearch, settings: Settings, tiny_model_dir: Path, myntra_dir: Path
) -> Iterator[Settings]:
    name = f"test-deadline-{uuid.uuid4().hex[:12]}"
    schema = CatalogSchema.from_settings(settings)
    products = list(read_catalog(myntra_dir / "products.jsonl.gz", schema, limit=40))
    model = MultimodalModel.load(tiny_model_dir, settings=settings, use_feature_cache=False)
    create_product_index(client, name, schema, sample=products[0].source, model=model)
    assert not load_products(client, name, products, model=model).failed
    client.indices.refresh(index=name)
    yield settings.model_copy(update={"model_dir": tiny_model_dir, "index_name": name, "search_timeout_s": DEADLINE_S})
    client.indices.delete(index=name, ignore_unavailable=True)


@pytest.fixture(scope="module")
def server(serving_settings: Settings) -> Iterator[str]:
    """uvicorn serving create_app(settings), whose lifespan opens the serving searcher."""
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(create_app(serving_settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    started = time.monotonic()
    while not uv.started:
        assert thread.is_alive() and time.monotonic() - started < 60, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(timeout=10)


def _wait_for_node(client: OpenSearch, timeout_s: float = 60) -> None:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        with contextlib.suppress(Exception):
            if client.cluster.health(request_timeout=2)["status"] in ("green", "yellow"):
                return
        time.sleep(0.2)
    pytest.fail("the node did not answer again within 60 s of SIGCONT")


def _answers(http: httpx.Client, body: dict[str, str], request: SearchRequest, searcher: HybridSearcher) -> None:
    """Both the API and the searcher answer, within 30 s: a 2 s deadline can pass on a loaded machine's cold node."""
    started = time.monotonic()
    while True:
        try:
            response = http.post("/search", json=body)
            if response.status_code == 200 and searcher.search(request).hits:
                return
        except SearchUnavailableError:
            pass
        assert time.monotonic() - started < 30, f"{body}: no answer within 30 s ({response.status_code})"
        time.sleep(0.2)


def test_a_stuck_node_gives_503_within_the_deadline_then_searches_recover(
    client: OpenSearch, serving_settings: Settings, server: str, jvm_pid: int
) -> None:
    searcher = open_searcher(serving_settings)
    bodies = [{"query": "shirt"}, {"query": "shirt", "fusion_path": "client"}, {"query": "shirt", "mode": "bm25"}]
    requests = [SearchRequest("shirt"), SearchRequest("shirt", fusion_path="client"), SearchRequest("shirt", mode="bm25")]
    with httpx.Client(base_url=server, timeout=DEADLINE_S + MARGIN_S + 2) as http, ThreadPoolExecutor(3) as pool:
        for body, request in zip(bodies, requests, strict=True):  # warm: index facts, plugins, pipelines cached
            _answers(http, body, request, searcher)
        try:
            with stuck(jvm_pid):
                for body, request in zip(bodies, requests, strict=True):
                    started = time.monotonic()
                    response = http.post("/search", json=body)
                    elapsed = time.monotonic() - started
                    assert response.status_code == 503, response.text
                    assert response.headers["Retry-After"] and response.json()
                    assert elapsed < DEADLINE_S + MARGIN_S, f"{body}: 503 after {elapsed:.1f} s"

                    started = time.monotonic()
                    future = pool.submit(searcher.search, request)  # the old client held it ~2 minutes
                    with pytest.raises(SearchUnavailableError):
                        future.result(timeout=DEADLINE_S + MARGIN_S + 2)
                    elapsed = time.monotonic() - started
                    assert elapsed < DEADLINE_S + MARGIN_S, f"{request}: raised after {elapsed:.1f} s"
        finally:
            _wait_for_node(client)
        for body, request in zip(bodies, requests, strict=True):  # recovered: nothing is left stuck
            _answers(http, body, request, searcher)
    searcher.close()


def test_a_refused_connection_is_retried_on_another_configured_host(serving_settings: Settings) -> None:
    """Connection refused is immediate, so trying the next host fits in the deadline (a timeout would not)."""
    live = serving_settings.opensearch_hosts[0]
    searcher = open_searcher(serving_settings.model_copy(update={"opensearch_hosts": ["http://127.0.0.1:9", live]}))
    try:
        for _ in range(4):  # whichever host the pool picks first
            started = time.monotonic()
            assert searcher.search(SearchRequest("shirt", fusion_path="client")).hits
            assert time.monotonic() - started < DEADLINE_S
    finally:
        searcher.close()
