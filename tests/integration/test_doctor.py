"""`mm-opensearch doctor` against real deployments, and certificate rotation in a running API.

Doctor: a healthy secured stack, then one fault at a time.
The secured stack is the module's own `dev up --secure` (node and Redis on free ports, like
test_secure_node), an index built with the tiny model and provisioned as `index create` does, and a
real Celery worker. Each fault is made the way it happens: settings pointing at a closed port, a
user whose role lacks a permission (created through the security REST API), a model other than
the one that built the index. The plain (unsecured) suite node gets a run too. The rotation test
shares the secured node (one node start for the module): an in-process API whose client
certificate files are replaced while it runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opensearchpy import OpenSearch

from mm_opensearch.api.app import create_app
from mm_opensearch.catalog import CatalogSchema
from mm_opensearch.client import create_client
from mm_opensearch.config import Settings
from mm_opensearch.devservices import OpenSearchNode
from mm_opensearch.devservices.security import ADMIN_USER, generate_ca, issue_cert
from mm_opensearch.hybrid.capabilities import default_fusions, provision_index
from mm_opensearch.towers import ModelConfig, MultimodalModel
from tests.integration.celery_worker import WorkerProcess, index_without_vectors, stamped_catalog
from tests.ports import free_port as closed_port

pytestmark = [pytest.mark.services]

_SCRIPT = Path(sys.executable).with_name("mm-opensearch")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-c", "from mm_opensearch.cli.app import main; main()"]
READER_PASSWORD = "Qx7-zeta-Lumen-42"  # the plugin refuses passwords that are short or like the user name
READER_ROLE = {  # what a search process needs, and nothing to write with
    "cluster_permissions": ["cluster:monitor/main", "cluster:monitor/health", "indices:data/read/msearch",
                            "indices:data/read/mget"],
    "index_permissions": [{"index_patterns": ["doctor-*"], "allowed_actions": [
        "indices:data/read/search", "indices:data/read/get", "indices:data/read/mget*", "indices:admin/mappings/get",
        "indices:admin/get", "indices:admin/aliases/get"]}],
}


def _doctor(env: dict[str, str], *args: str) -> tuple[int, dict[str, tuple[str, str, str]], str]:
    """Run the command; (exit code, check -> (status, detail, fix), the whole output)."""
    done = subprocess.run(  # noqa: S603
        [*CLI, "doctor", *args], env={**os.environ, "COLUMNS": "1000", **env},
        capture_output=True, text=True, timeout=180, check=False,
    )
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    rows: dict[str, tuple[str, str, str]] = {}
    for line in done.stdout.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if len(cells) == 4 and cells[1] in {"ok", "warn", "fail", "skip"}:
            rows[cells[0]] = (cells[1], cells[2], cells[3])
    assert rows, output
    return done.returncode, rows, output


def _not_ok(rows: dict[str, tuple[str, str, str]]) -> dict[str, tuple[str, str, str]]:
    """Rows that are not ok, less what a 3.x node rightly warns about: no neural-search exists for it here."""
    return {name: row for name, row in rows.items()
            if row[0] != "ok" and not (name == "plugins" and _on_3x(rows) and "no neural-search" in row[1])}


def _on_3x(rows: dict[str, tuple[str, str, str]]) -> bool:
    return "OpenSearch 3." in rows.get("cluster", ("", "", ""))[1]


@pytest.fixture(scope="module")
def dev_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`dev up --secure` in a dev dir of its own on free ports; `dev down` afterwards."""
    env = {"MMOS_DEV_DIR": str(tmp_path_factory.mktemp("doctor-dev")), "MMOS_DEV_OPENSEARCH_PORT": str(closed_port()),
           "MMOS_DEV_OPENSEARCH_TRANSPORT_PORT": str(closed_port()), "MMOS_DEV_REDIS_PORT": str(closed_port())}
    run = {"capture_output": True, "text": True, "timeout": 400, "check": False, "env": {**os.environ, **env}}
    try:
        done = subprocess.run([*CLI, "dev", "up", "--secure"], **run)  # noqa: S603
        assert done.returncode == 0, done.stdout + done.stderr
        yield env
    finally:
        subprocess.run([*CLI, "dev", "down"], **run)  # noqa: S603


@pytest.fixture(scope="module")
def node(dev_env: dict[str, str]) -> OpenSearchNode:
    return OpenSearchNode(Settings(dev_dir=Path(dev_env["MMOS_DEV_DIR"]),
                                   dev_opensearch_port=int(dev_env["MMOS_DEV_OPENSEARCH_PORT"]),
                                   dev_opensearch_secure=True))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("doctor-model")
    MultimodalModel.from_config(ModelConfig.tiny(), use_feature_cache=False).save(folder)
    return folder


def _build_index(client: OpenSearch, settings: Settings, model_dir: Path, myntra_dir: Path, index: str) -> None:
    """An index of 20 products mapped for the tiny model, provisioned as `index create` does."""
    schema = CatalogSchema.from_settings(settings)
    products = stamped_catalog(myntra_dir, schema, 20)
    index_without_vectors(client, index, schema, products, MultimodalModel.load(model_dir))
    provision_index(client, index, default_fusions())


@pytest.fixture(scope="module")
def secure_env(node: OpenSearchNode, dev_env: dict[str, str], model_dir: Path, myntra_dir: Path) -> dict[str, str]:
    """The environment of a healthy secured deployment: admin over TLS, the index, its Redis, the model."""
    index = f"doctor-{uuid.uuid4().hex[:8]}"
    env = {
        "MMOS_OPENSEARCH_HOSTS": node.url, "MMOS_OPENSEARCH_CA_CERTS": str(node.security.ca_cert),
        "MMOS_OPENSEARCH_USER": ADMIN_USER, "MMOS_OPENSEARCH_PASSWORD": node.security.admin_password(),
        "MMOS_REDIS_URL": f"redis://127.0.0.1:{dev_env['MMOS_DEV_REDIS_PORT']}/0",
        "MMOS_INDEX_NAME": index, "MMOS_MODEL_DIR": str(model_dir), "MMOS_CONNECT_TIMEOUT_S": "15",
    }
    settings = Settings(**{k.removeprefix("MMOS_").lower(): v for k, v in env.items()})
    client = create_client(settings)
    _build_index(client, settings, model_dir, myntra_dir, index)
    client.transport.perform_request("PUT", "/_plugins/_security/api/roles/doctor_reader", body=READER_ROLE)
    client.transport.perform_request("PUT", "/_plugins/_security/api/internalusers/doctor-reader",
                                     body={"password": READER_PASSWORD})
    client.transport.perform_request("PUT", "/_plugins/_security/api/rolesmapping/doctor_reader",
                                     body={"users": ["doctor-reader"]})
    client.close()
    return env


@pytest.fixture(scope="module")
def worker(secure_env: dict[str, str], model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A real Celery worker on the secured stack's Redis (it answers the doctor's ping)."""
    process = WorkerProcess(model_dir, tmp_path_factory.mktemp("doctor-worker") / "worker.log", **secure_env)
    process.start()
    yield
    process.stop()


@pytest.mark.secure
def test_a_healthy_secured_stack_is_all_ok(secure_env: dict[str, str], worker: None) -> None:
    code, rows, output = _doctor(secure_env, "--ping-timeout", "3")
    assert code == 0, output
    assert _not_ok(rows) == {}, output
    assert {"cluster", "tls", "credentials", "plugins", "index", "privileges: search", "privileges: worker",
            "privileges: admin", "search pipelines", "redis", "workers", "dead letters"} <= set(rows), output
    assert "verified against" in rows["tls"][1] and f"'{ADMIN_USER}'" in rows["credentials"][1]
    assert "1 answer a ping" in rows["workers"][1], output


@pytest.mark.secure
def test_a_node_that_is_down_is_named_with_its_setting(secure_env: dict[str, str]) -> None:
    code, rows, output = _doctor({**secure_env, "MMOS_OPENSEARCH_HOSTS": f"https://127.0.0.1:{closed_port()}"})
    assert code == 1, output
    status, detail, fix = rows["cluster"]
    assert status == "fail" and "connection refused" in detail and "MMOS_OPENSEARCH_HOSTS" in fix, output
    assert rows["redis"][0] == "ok", output  # the rest still reports


@pytest.mark.secure
def test_redis_down_is_named_with_its_setting(secure_env: dict[str, str]) -> None:
    code, rows, output = _doctor({**secure_env, "MMOS_REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0"})
    assert code == 1, output
    status, detail, fix = rows["redis"]
    assert status == "fail" and "MMOS_REDIS_URL" in detail + fix, output
    assert rows["workers"][0] == "skip" and rows["dead letters"][0] == "skip", output
    assert rows["cluster"][0] == "ok", output


@pytest.mark.secure
def test_a_user_without_a_privilege_is_told_which(secure_env: dict[str, str]) -> None:
    reader = {**secure_env, "MMOS_OPENSEARCH_USER": "doctor-reader", "MMOS_OPENSEARCH_PASSWORD": READER_PASSWORD}
    code, rows, output = _doctor(reader, "--role", "worker")
    assert code == 1, output
    status, detail, fix = rows["privileges: worker"]
    assert status == "fail" and "indices:data/write/bulk" in detail, output
    assert "indices:data/read/point_in_time/create" in detail and "mmos_worker" in fix, output
    assert "privileges: search" not in rows and "privileges: admin" not in rows, output

    # The same user as a search process: its privileges are enough; what it may not see is a warning.
    code, rows, output = _doctor(reader, "--role", "search")
    assert code == 0, output
    assert rows["privileges: search"][0] == "ok", output
    if not _on_3x(rows):  # 3.x records client-side fusion at provisioning: no pipeline to read
        assert rows["search pipelines"][0] == "warn" and "cluster:admin/search/pipeline/get" in rows["search pipelines"][1]


@pytest.mark.secure
def test_a_wrong_password_is_a_credentials_failure(secure_env: dict[str, str]) -> None:
    code, rows, output = _doctor({**secure_env, "MMOS_OPENSEARCH_PASSWORD": "not-the-password"})
    assert code == 1, output
    assert rows["credentials"][0] == "fail" and "MMOS_OPENSEARCH_PASSWORD" in rows["credentials"][2], output
    assert "not-the-password" not in output


@pytest.mark.secure
def test_a_model_other_than_the_index_s_is_a_mismatch(secure_env: dict[str, str], tmp_path: Path) -> None:
    other = MultimodalModel.from_config(ModelConfig.tiny().model_copy(update={"seed": 1}), use_feature_cache=False)
    other.save(tmp_path)
    assert other.model_id != MultimodalModel.load(Path(secure_env["MMOS_MODEL_DIR"])).model_id
    code, rows, output = _doctor({**secure_env, "MMOS_MODEL_DIR": str(tmp_path)}, "--role", "search")
    assert code == 1, output
    status, detail, fix = rows["index"]
    assert status == "fail" and other.model_id in detail and "MMOS_MODEL_DIR" in fix, output


def test_the_plain_dev_node_without_security(settings: Settings, client: OpenSearch, model_dir: Path,
                                             myntra_dir: Path, index_name: str) -> None:
    """The suite's unsecured node: no TLS, no authentication, both said as ok; no worker is a warning.

    Redis database 15: Celery's broadcasts are per database, so a worker another module left on
    the suite's Redis does not answer this ping.
    """
    _build_index(client, settings, model_dir, myntra_dir, index_name)
    redis_url = settings.redis_url.get_secret_value().rsplit("/", 1)[0] + "/15"
    env = {"MMOS_INDEX_NAME": index_name, "MMOS_MODEL_DIR": str(model_dir), "MMOS_CONNECT_TIMEOUT_S": "15",
           "MMOS_REDIS_URL": redis_url}
    code, rows, output = _doctor(env, "--role", "search")
    assert code == 0, output
    assert rows["tls"] == ("ok", "plain http to a local node", ""), output
    assert rows["credentials"][0] == "ok" and "no security plugin" in rows["credentials"][1], output
    assert rows["workers"][0] == "warn" and "mm-opensearch worker" in rows["workers"][2], output
    assert {name for name, row in _not_ok(rows).items()} <= {"workers"}, output


# --- certificate rotation in a running API ------------------------------------------------------

def _write_pair(cert_path: Path, key_path: Path, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> None:
    """Replace the files as a rotation tool does: each written aside, then renamed over the old one."""
    for path, data in ((key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption())),
                       (cert_path, cert.public_bytes(serialization.Encoding.PEM))):
        aside = path.with_suffix(".new")
        aside.write_bytes(data)
        os.replace(aside, path)


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.05)


@pytest.mark.secure
def test_the_api_reloads_rotated_client_certificates_without_a_restart(
    node: OpenSearchNode, secure_env: dict[str, str], tmp_path: Path,
) -> None:
    """Certificate A answers; B is written over A's files; the next search is authenticated as B, same process."""
    ca_cert = x509.load_pem_x509_certificate(node.security.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(node.security.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    admin = create_client(Settings(opensearch_hosts=[node.url], opensearch_ca_certs=node.security.ca_cert,
                                   opensearch_user=ADMIN_USER, opensearch_password=node.security.admin_password()))
    admin.transport.perform_request("PUT", "/_plugins/_security/api/rolesmapping/doctor_reader",
                                    body={"users": ["doctor-reader", "rotation-a", "rotation-b"]})
    cert_file, key_file, ca_file = tmp_path / "client.pem", tmp_path / "client-key.pem", tmp_path / "ca.pem"
    ca_file.write_bytes(node.security.ca_cert.read_bytes())
    _write_pair(cert_file, key_file, *issue_cert(ca_cert, ca_key, "rotation-a", server=False))
    settings = Settings(
        opensearch_hosts=[node.url], opensearch_ca_certs=ca_file, opensearch_client_cert=cert_file,
        opensearch_client_key=key_file, index_name=secure_env["MMOS_INDEX_NAME"],
        model_dir=Path(secure_env["MMOS_MODEL_DIR"]), opensearch_cert_reload_s=0.1,
    )

    def whoami(app: FastAPI) -> str:
        return app.state.searcher.client.transport.perform_request("GET", "/_plugins/_security/authinfo")["user_name"]

    app = create_app(settings)
    with TestClient(app) as api:
        assert api.post("/search", json={"query": "shirt", "mode": "bm25"}).status_code == 200
        assert whoami(app) == "rotation-a"
        reloader = app.state.cert_reloader

        # Half a rotation (B's certificate over A's, A's key still there) is not loaded: A keeps answering.
        cert_b, key_b = issue_cert(ca_cert, ca_key, "rotation-b", server=False)
        aside = cert_file.with_suffix(".new")
        aside.write_bytes(cert_b.public_bytes(serialization.Encoding.PEM))
        os.replace(aside, cert_file)
        _wait_for(lambda: reloader._refused is not None, "the reloader sees the inconsistent files")
        assert reloader.reloads == 0
        assert api.post("/search", json={"query": "shirt", "mode": "bm25"}).status_code == 200
        assert whoami(app) == "rotation-a"

        # The whole of B, and a CA bundle with a second (new) CA beside the old one, as step 1 of a CA rotation.
        new_ca, _ = generate_ca("mm-opensearch rotation CA 2")
        ca_file.write_bytes(node.security.ca_cert.read_bytes() + new_ca.public_bytes(serialization.Encoding.PEM))
        _write_pair(cert_file, key_file, cert_b, key_b)
        _wait_for(lambda: reloader.reloads == 1, "the client is rebuilt with certificate B")
        response = api.post("/search", json={"query": "shirt", "mode": "bm25"})
        assert response.status_code == 200, response.text
        assert whoami(app) == "rotation-b"
    admin.close()
