"""A secured dev node (``dev up --secure``): TLS on HTTP and transport, basic and client-certificate auth.

The module starts its own node with the security plugin (the release of MMOS_DEV_OPENSEARCH_VERSION,
so each leg of the test matrix: 2.19.1 and 3.4.0), on free ports in a temporary dev dir, so it runs
beside the suite's unsecured node. What a client sees is checked with the
project's own client and CLI: the admin over TLS with CA verification, a client certificate, and
the errors of plain http, a wrong password and an unknown CA (one line each, no traceback).
"""

from __future__ import annotations

import os
import ssl
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opensearchpy import OpenSearch

from mm_opensearch.client import create_client
from mm_opensearch.config import Settings
from mm_opensearch.devservices import OpenSearchNode
from mm_opensearch.devservices.security import ADMIN_USER, CLIENT_USER, generate_ca
from tests.integration.celery_worker import CLI, closed_port

pytestmark = [pytest.mark.services, pytest.mark.secure]




@pytest.fixture(scope="module")
def dev_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a dev dir of its own, on free ports."""
    return {
        "MMOS_DEV_DIR": str(tmp_path_factory.mktemp("secure-dev")), "MMOS_DEV_OPENSEARCH_PORT": str(closed_port()),
        "MMOS_DEV_OPENSEARCH_TRANSPORT_PORT": str(closed_port()), "MMOS_DEV_REDIS_PORT": str(closed_port()),
        "COLUMNS": "250",
    }


@pytest.fixture(scope="module")
def up_output(dev_env: dict[str, str]) -> Iterator[str]:
    """`mm-opensearch dev up --secure`, as a developer runs it; `dev down` afterwards."""
    run = {"capture_output": True, "text": True, "timeout": 400, "check": False, "env": {**os.environ, **dev_env}}
    try:
        done = subprocess.run([*CLI, "dev", "up", "--secure"], **run)  # noqa: S603
        assert done.returncode == 0, done.stdout + done.stderr
        yield done.stdout
    finally:
        subprocess.run([*CLI, "dev", "down"], **run)  # noqa: S603


@pytest.fixture(scope="module")
def node(dev_env: dict[str, str], up_output: str) -> OpenSearchNode:
    return OpenSearchNode(Settings(
        dev_dir=Path(dev_env["MMOS_DEV_DIR"]), dev_opensearch_port=int(dev_env["MMOS_DEV_OPENSEARCH_PORT"]),
        dev_opensearch_secure=True,
    ))


def _settings(node: OpenSearchNode, **fields: object) -> Settings:
    """Client settings for the secured node; the admin with the dev CA unless ``fields`` say otherwise."""
    base: dict[str, object] = {
        "opensearch_hosts": [node.url], "opensearch_ca_certs": node.security.ca_cert,
        "opensearch_user": ADMIN_USER, "opensearch_password": node.security.admin_password(),
        "opensearch_max_retries": 0,
    }
    return Settings(**(base | fields))


def _cli(node: OpenSearchNode, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real command against the secured node (admin over TLS unless ``env`` overrides it)."""
    base = {
        "MMOS_OPENSEARCH_HOSTS": node.url, "MMOS_OPENSEARCH_CA_CERTS": str(node.security.ca_cert),
        "MMOS_OPENSEARCH_USER": ADMIN_USER, "MMOS_OPENSEARCH_PASSWORD": node.security.admin_password(),
        "COLUMNS": "200",
    }
    return subprocess.run(  # noqa: S603
        [*CLI, *args], env={**os.environ, **base, **env}, capture_output=True, text=True, timeout=120, check=False,
    )


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    return lines[0]


def test_dev_up_prints_settings_that_reach_the_node(node: OpenSearchNode, up_output: str) -> None:
    """The printed `export` line, pasted as it is (the password through its file), is a working client."""
    exports = next(line for line in up_output.splitlines() if line.startswith("export "))
    assert f"MMOS_OPENSEARCH_PASSWORD=$(cat {node.security.password_file})" in exports
    assert node.security.admin_password() not in up_output  # the secret itself is never printed
    shell = subprocess.run(  # noqa: S603
        ["bash", "-c", f"{exports} && env"], capture_output=True, text=True, timeout=30, check=True,  # noqa: S607
        env={"PATH": os.environ["PATH"]},
    )
    env = dict(line.split("=", 1) for line in shell.stdout.splitlines() if line.startswith("MMOS_OPENSEARCH_"))
    assert env["MMOS_OPENSEARCH_CA_CERTS"] == str(node.security.ca_cert)
    client = create_client(Settings(**{k.removeprefix("MMOS_").lower(): v for k, v in env.items()}))
    assert client.info()["version"]["number"] == node.release.version


def test_a_plain_dev_up_on_the_secured_home_is_one_clear_line(dev_env: dict[str, str], node: OpenSearchNode) -> None:
    done = subprocess.run(  # noqa: S603
        [*CLI, "dev", "up"], env={**os.environ, **dev_env, "MMOS_DEV_OPENSEARCH_SECURE": "false"},
        capture_output=True, text=True, timeout=120, check=False,
    )
    line = _one_error_line(done)
    assert "dev up --secure" in line, line


def test_node_starts_secured_with_its_files_private(node: OpenSearchNode) -> None:
    assert node.url.startswith("https://")
    status = node.status()
    assert status.running, status.detail
    assert node.release.version in status.detail
    assert "org.opensearch.security.OpenSearchSecurityPlugin" in node.plugins()
    for secret in (node.security.password_file, node.security.ca_key, node.security.node_key):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret


def test_dev_status_speaks_tls_with_the_admin_credentials(dev_env: dict[str, str], node: OpenSearchNode) -> None:
    """`dev status` without --secure: the home says it is secured, so status uses https and the admin."""
    done = subprocess.run(  # noqa: S603
        [*CLI, "dev", "status"], capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, **dev_env, "MMOS_DEV_OPENSEARCH_SECURE": "false"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    row = next(line for line in done.stdout.splitlines() if "opensearch" in line)
    assert "yes" in row and node.release.version in row and "cluster green" in row, done.stdout


def test_plain_http_is_refused(node: OpenSearchNode) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(node.url.replace("https://", "http://"), timeout=5)
    with pytest.raises(httpx.HTTPError):  # TLS but no credentials: 401, not an answer
        trusted = ssl.create_default_context(cafile=str(node.security.ca_cert))
        httpx.get(node.url, verify=trusted, timeout=5).raise_for_status()
    line = _one_error_line(_cli(node, "index", "inspect", "products",
                                MMOS_OPENSEARCH_HOSTS=node.url.replace("https://", "http://")))
    assert "https://" in line and "MMOS_OPENSEARCH_HOSTS" in line, line


def test_admin_over_tls_creates_an_index_and_searches_with_knn(node: OpenSearchNode) -> None:
    client = create_client(_settings(node))
    index = "secure-knn"
    client.indices.create(index=index, body={
        "settings": {"index": {"knn": True, "number_of_shards": 1}},
        "mappings": {"properties": {"title": {"type": "text"}, "vec": {
            "type": "knn_vector", "dimension": 3,
            "method": {"name": "hnsw", "engine": "lucene", "space_type": "l2"}}}},
    })
    for doc_id, (title, vec) in enumerate([("red shoe", [1, 0, 0]), ("blue shirt", [0, 1, 0]), ("hat", [0, 0, 1])]):
        client.index(index=index, id=str(doc_id), body={"title": title, "vec": vec})
    client.indices.refresh(index=index)
    hits = client.search(index=index, body={"size": 1, "query": {"knn": {"vec": {"vector": [0, 0.9, 0.1], "k": 1}}}})
    assert [h["_source"]["title"] for h in hits["hits"]["hits"]] == ["blue shirt"]
    client.indices.delete(index=index)


def test_a_client_certificate_authenticates(node: OpenSearchNode) -> None:
    client = create_client(_settings(
        node, opensearch_user=None, opensearch_password=None,
        opensearch_client_cert=node.security.client_cert, opensearch_client_key=node.security.client_key,
    ))
    who = client.transport.perform_request("GET", "/_plugins/_security/authinfo")
    assert who["user_name"] == CLIENT_USER
    assert client.cluster.health()["status"] in {"green", "yellow"}


def test_a_wrong_password_is_one_clear_line(node: OpenSearchNode) -> None:
    client: OpenSearch = create_client(_settings(node, opensearch_password="not-the-password"))
    assert client.ping() is False
    line = _one_error_line(_cli(node, "index", "inspect", "products", MMOS_OPENSEARCH_PASSWORD="not-the-password"))
    assert "401" in line and "MMOS_OPENSEARCH_PASSWORD" in line, line
    assert "not-the-password" not in line


def test_an_unknown_ca_is_a_clear_tls_error(node: OpenSearchNode, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    other_ca, _ = generate_ca("some other CA")
    ca_file = tmp_path / "other-ca.pem"
    ca_file.write_bytes(other_ca.public_bytes(serialization.Encoding.PEM))
    line = _one_error_line(_cli(node, "index", "inspect", "products", MMOS_OPENSEARCH_CA_CERTS=str(ca_file)))
    assert "TLS" in line and "not signed by a CA" in line and "MMOS_OPENSEARCH_CA_CERTS" in line, line
