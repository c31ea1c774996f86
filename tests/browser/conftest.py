"""Fixtures of the browser tests: the real API (uvicorn) over a real index of a few hundred demo
products embedded by the tiny test model, and Debian's chromium driven by Playwright.

Chromium is the system one (``/usr/bin/chromium``, or ``MMOS_TEST_CHROMIUM``), never a download;
axe-core comes from ``tests/browser/node_modules`` (``npm ci --prefix tests/browser``, run by
scripts/setup.sh). Screenshots go to ``test-artifacts/browser`` (git-ignored).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from opensearchpy import OpenSearch
from pydantic import SecretStr

from mm_opensearch.api import create_app
from mm_opensearch.catalog import CatalogSchema, Product, read_catalog
from mm_opensearch.client import create_client
from mm_opensearch.config import Settings
from mm_opensearch.indexing.load import create_product_index, load_products
from mm_opensearch.judgments import load_qrels, load_queries
from mm_opensearch.towers import ModelConfig, MultimodalModel
from tests.ports import free_port as _free_port

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "browser"
AXE = REPO / "tests" / "browser" / "node_modules" / "axe-core" / "axe.min.js"
PRODUCTS = 200
XSS_TITLE = "<img src=x onerror=alert(1)>"


@dataclass
class Shop:
    index: str
    products: list[Product]
    xss_id: str
    missing_image_id: str
    broken_url_id: str
    queries_file: Path
    qrels_file: Path
    judged_ids: list[str]  # judged queries, most labels among the indexed products first
    qrels: dict[str, dict[str, int]]
    xss_title: str = XSS_TITLE


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def client(settings: Settings) -> Iterator[OpenSearch]:
    client = create_client(settings)
    if not client.ping():
        pytest.fail(f"OpenSearch does not answer at {settings.opensearch_hosts}; start it with `mm-opensearch dev up`")
    yield client
    client.close()


@pytest.fixture(scope="session")
def model() -> MultimodalModel:
    return MultimodalModel.from_config(ModelConfig.tiny(), use_feature_cache=False)


@pytest.fixture(scope="session")
def shop(
    client: OpenSearch, settings: Settings, model: MultimodalModel, myntra_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Shop]:
    """A few hundred demo products, three of them altered after indexing: a script as title, an image
    file that does not exist, an image URL nothing answers."""
    name = f"test-page-{uuid.uuid4().hex[:12]}"
    schema = CatalogSchema.from_settings(settings)
    products = list(read_catalog(myntra_dir / "products.jsonl.gz", schema, limit=PRODUCTS))
    # per-modality vectors too, as the demo index has them (the third column's image-only and text-only choices)
    create_product_index(client, name, schema, sample=products[0].source, model=model, modalities=True)
    assert not load_products(client, name, products, model=model, modalities=True, image_roots=[myntra_dir]).failed
    xss, missing, broken = products[-1].id, products[-2].id, products[-3].id
    client.update(index=name, id=xss, body={"doc": {"title": XSS_TITLE}})
    client.update(index=name, id=missing, body={"doc": {"image": "images/no-such-file.jpg"}})
    client.update(index=name, id=broken, body={"doc": {"image": "http://127.0.0.1:9/gone.jpg"}})
    client.indices.refresh(index=name)
    # judged queries: the eval files, cut to the queries with most labels among the indexed products
    qrels = load_qrels(myntra_dir / "qrels.tsv.gz")
    indexed = {p.id for p in products}
    ranked = sorted(
        (q for q in load_queries(myntra_dir / "queries.tsv") if qrels.get(q.id)),
        key=lambda q: (-len(indexed & set(qrels[q.id])), q.id),
    )[:20]
    folder = tmp_path_factory.mktemp("judged")
    queries_file, qrels_file = folder / "queries.tsv", folder / "qrels.tsv"
    queries_file.write_text("query_id\tsplit\ttemplate\tquery\n" + "".join(f"{q.id}\t{q.split}\t{q.template}\t{q.text}\n" for q in ranked))
    qrels_file.write_text("query_id\tproduct_id\tgrade\n" + "".join(
        f"{q.id}\t{pid}\t{grade}\n" for q in ranked for pid, grade in qrels[q.id].items()
    ))
    yield Shop(name, products, xss, missing, broken, queries_file, qrels_file, [q.id for q in ranked],
               {q.id: qrels[q.id] for q in ranked})
    client.indices.delete(index=name, ignore_unavailable=True)


@pytest.fixture(scope="session")
def app_settings(settings: Settings, model: MultimodalModel, shop: Shop, myntra_dir: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Settings:
    model_dir = model.save(tmp_path_factory.mktemp("model") / "tiny")
    return settings.model_copy(update={
        "model_dir": model_dir, "index_name": shop.index, "data_dir": myntra_dir,
        "page_queries": shop.queries_file, "page_qrels": shop.qrels_file,
        "search_timeout_s": 20.0,  # CI machines run this beside other suites; the page is not what is timed here
    })


def serve(app_settings: Settings) -> Iterator[str]:
    """uvicorn serving ``create_app(app_settings)`` on a free loopback port, until the generator closes."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(app_settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 90
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="session")
def server(app_settings: Settings) -> Iterator[str]:
    yield from serve(app_settings)


PAGE_KEY = "page-key-123"


@pytest.fixture(scope="session")
def keyed_server(app_settings: Settings) -> Iterator[str]:
    """The same app with an API key (``PAGE_KEY``): the page asks for it once and keeps a cookie."""
    yield from serve(app_settings.model_copy(update={"api_key": SecretStr(PAGE_KEY)}))


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def _chromium() -> str:
    found = os.environ.get("MMOS_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("no chromium on PATH; scripts/setup.sh installs Debian's (apt-get install chromium chromium-driver)")
    return found


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 - only the browser tests need it

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--headless", "--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser: object, request: pytest.FixtureRequest) -> Iterator[object]:
    """A fresh page (1280x900) that fails the test on any console error or dialog; screenshot at the end."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    context.set_default_timeout(90_000)  # a loaded CI machine; every wait is on a condition
    page = context.new_page()
    page.dialogs = []  # type: ignore[attr-defined]
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))  # type: ignore[attr-defined]
    yield page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()


@pytest.fixture(scope="session")
def axe_source() -> str:
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing; run `npm ci --prefix tests/browser` (scripts/setup.sh does)")
    return AXE.read_text()
