"""The search install (``mm-opensearch[api]``) alone, in a fresh virtualenv: no torch, and it answers.

The wheel is built from this checkout and installed with its ``[api]`` extra only, pinned by
requirements.lock. Its dependencies come from a wheel folder keyed by the lock's hash under
``MMOS_CACHE_DIR`` (filled from PyPI on the first run; later runs install offline in seconds).
The index is built here with the tiny test model (torch), whose query graph is exported into the
model folder; the API then runs from the fresh venv (no PYTHONPATH: the installed code) and must
answer a hybrid query with vectors, not a BM25-only fallback.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opensearchpy import OpenSearch

from mm_opensearch.catalog import CatalogSchema, read_catalog
from mm_opensearch.config import Settings
from mm_opensearch.indexing.load import create_product_index, load_products
from mm_opensearch.towers import ModelConfig, MultimodalModel
from mm_opensearch.towers.onnx_text import export_query_graph
from tests.ports import free_port as _free_port

pytestmark = pytest.mark.services

REPO = Path(__file__).resolve().parents[2]


def _pip(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", *map(str, args)], capture_output=True, text=True, check=False)


def _outside_env() -> dict[str, str]:
    """This environment without PYTHONPATH, which points at the checkout."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _site_packages(venv: Path) -> Path:
    (site,) = venv.glob("lib/python*/site-packages")
    return site


def _du_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20


@pytest.fixture(scope="module")
def api_venv(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding mm-opensearch[api] from a wheel of this checkout, and nothing else."""
    out = tmp_path_factory.mktemp("role")
    built = _pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, REPO)
    assert built.returncode == 0, built.stderr
    (wheel,) = out.glob("mm_opensearch-*.whl")
    lock = REPO / "requirements.lock"
    wheels = settings.cache_dir / f"role-wheels-{hashlib.sha256(lock.read_bytes()).hexdigest()[:12]}"
    venv = out / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin/python"
    install = ("--python", python, "install", "-q", "--no-compile", "--no-index", "--find-links", wheels, "-c", lock, f"{wheel}[api]")
    done = _pip(*install)
    if done.returncode != 0:  # first run for this lock: fetch the [api] wheels from PyPI, then offline again
        fetched = _pip("download", "-q", "-d", wheels, "-c", lock, f"{wheel}[api]")
        assert fetched.returncode == 0, fetched.stderr
        done = _pip(*install)
    assert done.returncode == 0, done.stderr
    return venv


def test_the_api_install_has_no_torch_and_is_smaller(api_venv: Path) -> None:
    python = api_venv / "bin/python"
    run = {"env": _outside_env(), "cwd": api_venv, "capture_output": True, "text": True}  # never this checkout
    torch = subprocess.run([python, "-c", "import torch"], check=False, **run)
    assert torch.returncode != 0 and "No module named 'torch'" in torch.stderr
    where = subprocess.run([python, "-c", "import mm_opensearch; print(mm_opensearch.__file__)"], check=True, **run).stdout
    assert where.startswith(str(api_venv)), where  # the installed package, not this checkout
    api, full = _du_mib(_site_packages(api_venv)), _du_mib(Path(sys.prefix).glob("lib/python*/site-packages").__next__())
    print(f"site-packages: [api] {api:.0f} MiB, this full install {full:.0f} MiB")  # for docs (pytest -s)
    assert api < full / 4


@pytest.fixture(scope="module")
def tiny_index(client: OpenSearch, settings: Settings, myntra_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, MultimodalModel]]:
    """An index embedded by the tiny model, and that model's folder with its exported query graph."""
    model = MultimodalModel.from_config(ModelConfig.tiny(), use_feature_cache=False)
    folder = model.save(tmp_path_factory.mktemp("model") / "tiny")
    export_query_graph(model, folder)
    name = f"test-role-{uuid.uuid4().hex[:12]}"
    schema = CatalogSchema.from_settings(settings)
    products = list(read_catalog(myntra_dir / "products.jsonl.gz", schema, limit=40))
    create_product_index(client, name, schema, sample=products[0].source, model=model)
    assert not load_products(client, name, products, model=model, image_roots=[myntra_dir]).failed
    client.indices.refresh(index=name)
    yield name, folder, model
    client.indices.delete(index=name, ignore_unavailable=True)


def test_the_api_install_answers_a_hybrid_query(api_venv: Path, tiny_index: tuple[str, Path, MultimodalModel], tmp_path: Path) -> None:
    index, folder, model = tiny_index
    port = _free_port()
    env = _outside_env()
    # a generous search deadline: the shared test machine can be slow, what is tested is the install
    env.update({"MMOS_MODEL_DIR": str(folder), "MMOS_INDEX_NAME": index, "MMOS_CACHE_DIR": str(tmp_path / "cache"),
                "MMOS_SEARCH_TIMEOUT_S": "30"})
    log = (tmp_path / "serve.log").open("w+")
    server = subprocess.Popen([api_venv / "bin/mm-opensearch", "serve", "--port", str(port)],  # noqa: S603
                              stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 90
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            while True:
                assert server.poll() is None, f"the API exited: {log.seek(0) or log.read()}"
                assert time.monotonic() < deadline, f"the API did not answer: {log.seek(0) or log.read()}"
                try:
                    health = http.get("/healthz")
                    break
                except httpx.TransportError:
                    time.sleep(0.2)
            assert health.json()["status"] == "ok", health.text
            assert health.json()["model_id"] == model.model_id
            assert http.get("/readyz").json()["ready"]  # what the compose healthcheck asks
            response = http.post("/search", json={"query": "red floral dress", "mode": "hybrid", "size": 5, "explain": True})
        assert response.status_code == 200, f"{response.text}\n{log.seek(0) or log.read()}"
        body = response.json()
        assert body["mode"] == "hybrid" and not body["degraded"] and len(body["hits"]) == 5
        assert any(hit["explain"]["vector"] is not None for hit in body["hits"])
    finally:
        server.terminate()
        server.wait(timeout=30)
    log.seek(0)
    assert "Traceback" not in log.read()
