"""The real ``mm-opensearch`` command in a subprocess: one-line errors, masked settings, the demo's alias.

Every failure a user can cause by configuration or input must end in one ``error:`` line naming
the setting or the file, exit code 1, no traceback, and (for a host that never answers) within
seconds instead of the minutes the patient clients would retry.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from opensearchpy import OpenSearch

from mm_opensearch.config import Settings
from tests.ports import free_port as _free_port

pytestmark = pytest.mark.services

_SCRIPT = Path(sys.executable).with_name("mm-opensearch")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-c", "from mm_opensearch.cli.app import main; main()"]
FAST_S = 20.0  # connect timeout 5 s + interpreter start on a busy 2-core machine; the old clients took 36 s to 2 min


@dataclass(frozen=True)
class Run:
    rc: int
    output: str  # stdout and stderr together
    seconds: float

    def error_line(self) -> str:
        lines = [line for line in self.output.splitlines() if line.startswith("error:")]
        assert len(lines) == 1, self.output
        return lines[0]


def run_cli(*args: str, timeout: float = 120, **env: str) -> Run:
    started = time.monotonic()
    done = subprocess.run(  # noqa: S603
        [*CLI, *args], env={**os.environ, "COLUMNS": "200", **env}, capture_output=True, text=True,
        timeout=timeout, check=False,
    )
    return Run(done.returncode, done.stdout + done.stderr, time.monotonic() - started)


def assert_one_line_failure(run: Run, *needles: str, secret: str = "hunter2") -> str:
    """Exit 1, no traceback, the secret nowhere, and one ``error:`` line holding every needle."""
    assert run.rc == 1, run.output
    assert "Traceback" not in run.output
    assert secret not in run.output
    line = run.error_line()
    for needle in needles:
        assert needle in line, line
    return line


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers a byte."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield s.getsockname()[1]


# --- MMOS_OPENSEARCH_HOSTS ---------------------------------------------------------------------


@pytest.mark.parametrize("case", ["refused", "transport port", "silent", "not a url"])
def test_a_wrong_opensearch_url_is_one_line_naming_the_setting(case: str, settings: Settings, silent_port: int) -> None:
    hosts = {
        "refused": f"http://admin:hunter2@127.0.0.1:{_free_port()}",
        "transport port": f"http://admin:hunter2@127.0.0.1:{settings.dev_opensearch_transport_port}",
        "silent": f"http://admin:hunter2@127.0.0.1:{silent_port}",
        "not a url": "not a url",
    }[case]
    run = run_cli("index", "inspect", "products", MMOS_OPENSEARCH_HOSTS=hosts)
    line = assert_one_line_failure(run, "MMOS_OPENSEARCH_HOSTS")
    if case != "not a url":
        assert "admin:****@127.0.0.1" in line  # which host, without its password
    assert run.seconds < FAST_S


# --- MMOS_REDIS_URL ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["refused", "silent", "not redis"])
def test_a_wrong_redis_url_fails_in_seconds_naming_the_setting(case: str, silent_port: int) -> None:
    url = {
        "refused": f"redis://:hunter2@127.0.0.1:{_free_port()}/0",
        "silent": f"redis://:hunter2@127.0.0.1:{silent_port}/0",
        "not redis": "http://admin:hunter2@127.0.0.1:6379",
    }[case]
    run = run_cli("jobs", "status", "backfill-products", MMOS_REDIS_URL=url, timeout=90)
    line = assert_one_line_failure(run, "MMOS_REDIS_URL")
    assert ":****@127.0.0.1" in line
    assert run.seconds < FAST_S


# --- catalogs ----------------------------------------------------------------------------------


def _lines(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b'{"id": "1", "title": "a"}\n["not", "an", "object"]\n', ":2 holds a JSON array, not an object"),
        (b'{"id": "1", "title": "a"}\n"just a string"\n', ":2 holds a JSON string"),
        (b'{"id": "1", "title": "a"}\n{"id": "2", "title": "caf\xe9"}\n', ":2 is not UTF-8 (byte 0xe9 at offset 51"),
    ],
    ids=["array", "string", "latin-1"],
)
def test_a_malformed_catalog_names_the_file_and_line(
    content: bytes, needle: str, tmp_path: Path, index_name: str, client: OpenSearch
) -> None:
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_bytes(content)
    run = run_cli("index", "create", index_name, "--catalog", str(catalog), "--no-vectors", "--yes")
    assert_one_line_failure(run, f"{catalog}{needle}")
    assert not client.indices.exists(index=index_name)  # refused before anything was created


def test_index_create_that_loads_nothing_says_why_and_exits_non_zero(
    tmp_path: Path, index_name: str, client: OpenSearch
) -> None:
    catalog = tmp_path / "empty.jsonl"
    catalog.write_text("\n\n")
    run = run_cli("index", "create", index_name, "--catalog", str(catalog), "--no-vectors", "--yes")
    assert_one_line_failure(run, str(catalog), "holds no products")
    assert not client.indices.exists(index=index_name)


def test_index_create_exits_non_zero_when_products_fail_to_load(tmp_path: Path, index_name: str) -> None:
    catalog = _lines(tmp_path / "c.jsonl", [
        {"id": "1", "title": "shirt", "price": 10.5},
        {"id": "2", "title": "dress", "price": "not a number"},  # price is mapped as a number from the first
    ])
    run = run_cli("index", "create", index_name, "--catalog", str(catalog), "--no-vectors", "--yes")
    assert_one_line_failure(run, "1 products", "failed to load", index_name)
    assert "loaded 1 of 2 products" in run.output
    assert "2: [400]" in run.output  # the failed product and why


def test_duplicate_ids_are_counted_and_the_last_line_wins(tmp_path: Path, index_name: str, client: OpenSearch) -> None:
    catalog = _lines(tmp_path / "c.jsonl", [
        {"id": "1", "title": "first"}, {"id": "2", "title": "other"}, {"id": "1", "title": "last"},
    ])
    run = run_cli("index", "create", index_name, "--catalog", str(catalog), "--no-vectors", "--yes")
    assert run.rc == 0, run.output
    assert "loaded 2 of 2 products" in run.output
    assert "1 duplicate ids (3 lines), the last one wins" in run.output
    client.indices.refresh(index=index_name)
    assert client.count(index=index_name)["count"] == 2
    assert client.get(index=index_name, id="1")["_source"]["title"] == "last"


# --- config show -------------------------------------------------------------------------------


def test_config_show_masks_credentials_inside_urls() -> None:
    run = run_cli(
        "config", "show",
        MMOS_OPENSEARCH_HOSTS="http://admin:hunter2@search-1:9200,https://search-2:9200",
        MMOS_REDIS_URL="redis://default:s3cret@redis:6379/0", MMOS_OPENSEARCH_PASSWORD="pw-hunter2",
    )
    assert run.rc == 0, run.output
    assert "hunter2" not in run.output and "s3cret" not in run.output
    shown = json.loads(run.output)
    assert shown["opensearch_hosts"] == ["http://admin:****@search-1:9200", "https://search-2:9200"]
    assert shown["redis_url"] == "redis://default:****@redis:6379/0"  # where it points, not the password


# --- demo --------------------------------------------------------------------------------------


def test_demo_refuses_a_cluster_that_is_not_the_dev_node(settings: Settings) -> None:
    run = run_cli("demo", "--limit", "5", MMOS_OPENSEARCH_HOSTS="http://admin:hunter2@search.example.invalid:9200")
    assert_one_line_failure(run, "admin:****@search.example.invalid:9200", "not the local dev node", "--yes")
    assert run.seconds < FAST_S  # refused before a service starts or a model loads

    # Our node, but not where `dev up` puts it: a local port can be a tunnel to a team's cluster.
    elsewhere = str(settings.dev_opensearch_port + 1)
    run = run_cli("demo", "--limit", "5", MMOS_DEV_OPENSEARCH_PORT=elsewhere)
    assert_one_line_failure(run, f"127.0.0.1:{settings.dev_opensearch_port} is not the local dev node", "--yes")


@pytest.fixture
def team_alias(client: OpenSearch, index_name: str) -> Iterator[str]:
    """A team's index behind the alias ``products`` (with its write flag), as on a production cluster."""
    client.indices.create(index=index_name)
    client.index(index=index_name, id="team-1", body={"title": "team product"}, refresh=True)
    assert not client.indices.exists_alias(name="products"), "the test node must not have a products alias already"
    client.indices.update_aliases(body={"actions": [
        {"add": {"index": index_name, "alias": "products", "is_write_index": True}}]})
    yield index_name
    client.indices.delete_alias(index=index_name, name="products", ignore=[404])


@pytest.fixture
def tiny_shop(tmp_path: Path) -> Path:
    """A data folder as the demo reads it: products.jsonl.gz, queries.tsv, qrels.tsv.gz (no images)."""
    colours = ("red", "blue", "green", "black")
    with gzip.open(tmp_path / "products.jsonl.gz", "wt") as f:
        for i in range(12):
            f.write(json.dumps({"id": str(i), "title": f"{colours[i % 4]} dress {i}", "brand": "acme",
                                "description": "cotton", "image": None}) + "\n")
    (tmp_path / "queries.tsv").write_text("query_id\tsplit\ttemplate\tquery\nq1\tval\tcolour\tred dress\n"
                                          "q2\tval\tcolour\tblue dress\n")
    with gzip.open(tmp_path / "qrels.tsv.gz", "wt") as f:
        f.write("query_id\tproduct_id\tgrade\nq1\t0\t2\nq1\t4\t2\nq2\t1\t2\n")
    return tmp_path


def _demo_indices(client: OpenSearch) -> list[str]:
    return sorted(client.indices.get(index="mmos-demo-*", allow_no_indices=True, ignore_unavailable=True))


def test_demo_serves_its_own_alias_and_leaves_the_teams_alias_alone(
    client: OpenSearch, team_alias: str, tiny_shop: Path, tiny_model_dir: Path
) -> None:
    before = client.indices.get_alias(name="products")
    env = {"MMOS_MODEL_DIR": str(tiny_model_dir), "MMOS_FILTER_FIELDS": "brand"}
    page_pid = 0
    try:
        port = _free_port()
        run = run_cli("demo", "--data-dir", str(tiny_shop), "--limit", "8", "--port", str(port), timeout=400, **env)
        assert run.rc == 0, run.output
        # it ends with the search page running in the background, serving the demo alias, and says where
        page = re.search(rf"search page: (http://127\.0\.0\.1:{port}) .*kill (\d+)", " ".join(run.output.split()))
        assert page, run.output
        page_pid = int(page.group(2))
        shown = httpx.get(page.group(1) + "/", params={"q": "red dress"}, timeout=30)
        assert shown.status_code == 200 and "index mmos-demo" in shown.text and "red dress 0" in shown.text
        assert client.indices.get_alias(name="products") == before  # same index, write flag and all
        served = sorted(client.indices.get_alias(name="mmos-demo"))
        assert len(served) == 1 and served[0].startswith("mmos-demo-multimodal-")
        assert client.count(index="mmos-demo")["count"] == 8
        assert "--index mmos-demo" in run.output  # the hint it prints finds the demo index

        found = run_cli("search", "red dress", "--index", "mmos-demo", "--mode", "bm25", **env)
        assert found.rc == 0, found.output
        assert "red dress 0" in found.output

        # Told to serve under the team's alias, it refuses before indexing anything.
        refused = run_cli("demo", "--data-dir", str(tiny_shop), "--limit", "8", "--index", "products", **env)
        assert_one_line_failure(refused, "alias 'products' points at", team_alias, "not at a demo index")
        assert client.indices.get_alias(name="products") == before
    finally:
        if page_pid:
            os.kill(page_pid, signal.SIGTERM)
        for name in _demo_indices(client):
            client.indices.delete(index=name)
