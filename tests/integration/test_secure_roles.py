"""The least-privilege roles of ``dev up --secure``, used for real over TLS with CA verification.

On the session's secured node (``secure_stack.py``): ``mmos_admin`` creates a BM25 index and runs
``index augment`` and ``index provision`` through the CLI, while a Celery worker authenticated by
the client certificate of ``mmos_worker`` embeds the products; then the API runs as ``mmos_search``.
Each role is refused what it must not do, and a wrong password, an unknown CA and a user without a
role give one clear line (CLI) or a JSON answer (API), never a traceback or a 500.
"""

from __future__ import annotations

import logging
import os
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient
from opensearchpy import AuthorizationException, OpenSearch

from mm_opensearch.api import create_app
from mm_opensearch.catalog import CatalogSchema, read_catalog
from mm_opensearch.client import create_client
from mm_opensearch.config import Settings
from mm_opensearch.devservices import OpenSearchNode
from mm_opensearch.devservices.security import ADMIN_USER, generate_ca
from mm_opensearch.errors import PermissionDeniedError
from mm_opensearch.hybrid import FusionOptions, HybridSearcher, SearchRequest
from mm_opensearch.hybrid.capabilities import ClusterCapabilities
from mm_opensearch.hybrid.pipelines import pipeline_body
from mm_opensearch.indexing.load import create_product_index, load_products
from mm_opensearch.indexing.mappings import VECTOR_FIELDS
from mm_opensearch.security_roles import ADMIN_ROLE, ROLES, SEARCH_ROLE, WORKER_ROLE
from mm_opensearch.towers import MultimodalModel
from tests.integration.celery_worker import WorkerProcess, purge_queues
from tests.integration.secure_stack import CLI, SECURE_INDEX

pytestmark = [pytest.mark.services, pytest.mark.secure]

PRODUCTS = 40
NOBODY = "mmos_nobody"  # a user with a password and no role


def _redis_url(dev_env: dict[str, str]) -> str:
    return f"redis://127.0.0.1:{dev_env['MMOS_DEV_REDIS_PORT']}/0"


def _settings(node: OpenSearchNode, dev_env: dict[str, str], user: str, **fields: object) -> Settings:
    """Client settings of ``user`` (password from its file) over TLS with the dev CA."""
    password = node.security.admin_password() if user == ADMIN_USER else node.security.user_password(user)
    base: dict[str, object] = {
        "opensearch_hosts": [node.url], "opensearch_ca_certs": node.security.ca_cert,
        "opensearch_user": user, "opensearch_password": password, "opensearch_max_retries": 0,
        "index_name": SECURE_INDEX, "redis_url": _redis_url(dev_env),
    }
    return Settings(**(base | fields))


def _env(node: OpenSearchNode, dev_env: dict[str, str], user: str, **extra: str) -> dict[str, str]:
    """The environment of a process running as ``user`` with its password."""
    return {
        "MMOS_OPENSEARCH_HOSTS": node.url, "MMOS_OPENSEARCH_CA_CERTS": str(node.security.ca_cert),
        "MMOS_OPENSEARCH_USER": user, "MMOS_OPENSEARCH_PASSWORD": node.security.user_password(user),
        "MMOS_INDEX_NAME": SECURE_INDEX, "MMOS_REDIS_URL": _redis_url(dev_env), "COLUMNS": "250", **extra,
    }


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own CLI
        [*CLI, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=300, check=False,
    )


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    return lines[0]


@pytest.fixture(scope="module")
def admin(secure_node: OpenSearchNode, secure_dev_env: dict[str, str]) -> Iterator[OpenSearch]:
    client = create_client(_settings(secure_node, secure_dev_env, ADMIN_ROLE))
    yield client
    client.close()


@pytest.fixture(scope="module")
def augmented(
    secure_node: OpenSearchNode, secure_dev_env: dict[str, str], admin: OpenSearch, tiny_model_dir: Path,
    myntra_dir: Path, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, str]]:
    """A BM25 index made by mmos_admin, augmented through the CLI (mmos_admin) with the embedding done by
    a worker that authenticates with mmos_worker's client certificate only (no user, no password in
    its environment); the CLI's outputs by step."""
    node, dev_env = secure_node, secure_dev_env
    schema = CatalogSchema.from_settings(Settings())
    products = list(read_catalog(myntra_dir / "products_without_images.jsonl.gz", schema, limit=PRODUCTS))
    first = f"{SECURE_INDEX}_v1"
    create_product_index(admin, first, schema, sample=products[0].source)
    admin.indices.put_alias(index=first, name=SECURE_INDEX)
    assert not load_products(admin, first, products).failed
    admin.indices.refresh(index=first)

    purge_queues(Settings(redis_url=_redis_url(dev_env)))
    worker = WorkerProcess(
        tiny_model_dir, tmp_path_factory.mktemp("secure-worker") / "worker.log",
        MMOS_OPENSEARCH_HOSTS=node.url, MMOS_OPENSEARCH_CA_CERTS=str(node.security.ca_cert),
        MMOS_OPENSEARCH_CLIENT_CERT=str(node.security.user_cert(WORKER_ROLE)),
        MMOS_OPENSEARCH_CLIENT_KEY=str(node.security.user_key(WORKER_ROLE)),
        MMOS_REDIS_URL=_redis_url(dev_env),
        MMOS_INDEX_NAME=SECURE_INDEX,
    )
    worker.start()
    try:
        as_admin = _env(node, dev_env, ADMIN_ROLE, MMOS_MODEL_DIR=str(tiny_model_dir))
        augment = _cli(as_admin, "index", "augment", SECURE_INDEX, "--yes", "--timeout", "180")
        assert augment.returncode == 0, augment.stdout + augment.stderr + worker.log_tail()
        provision = _cli(as_admin, "index", "provision", SECURE_INDEX)
        assert provision.returncode == 0, provision.stdout + provision.stderr
        yield {"augment": augment.stdout, "provision": provision.stdout, "worker_log": str(worker.log)}
    finally:
        worker.stop()
        admin.indices.delete(index=f"{SECURE_INDEX}_v*", ignore_unavailable=True, allow_no_indices=True)


@pytest.fixture(scope="module")
def superuser(secure_node: OpenSearchNode, secure_dev_env: dict[str, str]) -> Iterator[OpenSearch]:
    """The dev node's `admin` (all_access): only for the security REST API, which no mmos role may use."""
    client = create_client(_settings(secure_node, secure_dev_env, ADMIN_USER))
    yield client
    client.close()


@pytest.fixture(scope="module")
def neural(admin: OpenSearch) -> bool:
    return any("neural" in row["component"].lower() for row in admin.cat.plugins(format="json"))


def _search_app(node: OpenSearchNode, dev_env: dict[str, str], model_dir: Path, user: str, **fields: object) -> TestClient:
    # a deadline for a busy shared machine: TLS and the password check made 1 s searches time out there
    settings = _settings(node, dev_env, user, model_dir=model_dir, search_timeout_s=30.0, **fields)
    return TestClient(create_app(settings), raise_server_exceptions=False)


def test_dev_up_created_each_role_and_its_user_with_a_private_password(
    secure_node: OpenSearchNode, superuser: OpenSearch
) -> None:
    for name, role in ROLES.items():
        body = superuser.transport.perform_request("GET", f"/_plugins/_security/api/roles/{name}")[name]
        assert sorted(body["cluster_permissions"]) == sorted(role.cluster_actions)
        assert sorted(body["index_permissions"][0]["allowed_actions"]) == sorted(role.index_actions)
        assert SECURE_INDEX in body["index_permissions"][0]["index_patterns"]
        mapping = superuser.transport.perform_request("GET", f"/_plugins/_security/api/rolesmapping/{name}")[name]
        assert mapping["users"] == [name]
        assert oct(secure_node.security.user_password_file(name).stat().st_mode & 0o777) == "0o600"
        who = create_client(_settings_for(secure_node, name)).transport.perform_request(
            "GET", "/_plugins/_security/authinfo")
        assert who["user_name"] == name and who["roles"] == [name]


def _settings_for(node: OpenSearchNode, user: str) -> Settings:
    return Settings(opensearch_hosts=[node.url], opensearch_ca_certs=node.security.ca_cert, opensearch_user=user,
                    opensearch_password=node.security.user_password(user), opensearch_max_retries=0)


def test_admin_augments_and_provisions_and_the_worker_embeds_with_its_certificate(
    augmented: dict[str, str], admin: OpenSearch, neural: bool
) -> None:
    alias = admin.indices.get_alias(index=SECURE_INDEX)  # GET _alias/<name> resolves over every index: refused
    assert list(alias) == [f"{SECURE_INDEX}_v2"], alias
    embedded = admin.count(index=SECURE_INDEX, body={"query": {"exists": {"field": VECTOR_FIELDS["fused"]}}})
    assert embedded["count"] == PRODUCTS, augmented["augment"]
    mapping = admin.indices.get_mapping(index=SECURE_INDEX)[f"{SECURE_INDEX}_v2"]["mappings"]
    recorded = ClusterCapabilities.from_mapping(mapping)
    assert recorded is not None
    assert ("mmos-rrf-k60" in recorded.pipelines) is neural, recorded


def test_the_api_as_the_search_user_answers_hybrid_on_each_path(
    augmented: dict[str, str], secure_node: OpenSearchNode, secure_dev_env: dict[str, str], tiny_model_dir: Path,
    neural: bool, caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING), _search_app(secure_node, secure_dev_env, tiny_model_dir, SEARCH_ROLE) as api:
        assert api.get("/healthz").json()["status"] == "ok"
        client_path = api.post("/search", json={"query": "shirt", "fusion_path": "client"})
        assert client_path.status_code == 200, client_path.text
        assert client_path.json()["fusion_path"] == "client" and client_path.json()["hits"]
        auto = api.post("/search", json={"query": "shirt"})
        assert auto.status_code == 200, auto.text
        assert auto.json()["fusion_path"] == ("server" if neural and secure_node.release.major == 2 else "client")
        if neural and secure_node.release.major == 2:
            server = api.post("/search", json={"query": "shirt", "fusion_path": "server"})
            assert server.status_code == 200 and server.json()["fusion_path"] == "server", server.text
    assert not [r for r in caplog.records if "fused on the client" in r.getMessage()]  # nothing missing here


@pytest.mark.neural_search
def test_a_pipeline_nobody_provisioned_falls_back_to_the_client_and_says_so_once(
    augmented: dict[str, str], secure_node: OpenSearchNode, secure_dev_env: dict[str, str], tiny_model_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = _settings(secure_node, secure_dev_env, SEARCH_ROLE)
    model = MultimodalModel.load(tiny_model_dir, settings=settings, use_feature_cache=False)
    searcher = HybridSearcher(create_client(settings), settings, tower=model)
    unprovisioned = FusionOptions(method="linear", weights=(0.2, 0.8))
    try:
        with caplog.at_level(logging.WARNING, logger="mm_opensearch.hybrid.search"):
            paths = [searcher.search(SearchRequest(q, fusion=unprovisioned)).fusion_path for q in ("shirt", "watch")]
        assert paths == ["client", "client"]
        told = [r.getMessage() for r in caplog.records if "fused on the client" in r.getMessage()]
        assert len(told) == 1 and "index provision" in told[0], told
        with pytest.raises(Exception, match="fusion_path 'server' is not possible here.*index provision"):
            searcher.search(SearchRequest("shirt", fusion=unprovisioned, fusion_path="server"))
    finally:
        searcher.close()


def test_a_capabilities_probe_the_search_user_may_not_make_falls_back_once(
    augmented: dict[str, str], secure_node: OpenSearchNode, secure_dev_env: dict[str, str], admin: OpenSearch,
    tiny_model_dir: Path, myntra_dir: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """An index nobody provisioned: the searcher would ask `_cat/plugins`, which mmos_search may not."""
    settings = _settings(secure_node, secure_dev_env, SEARCH_ROLE)
    model = MultimodalModel.load(tiny_model_dir, settings=settings, use_feature_cache=False)
    schema = CatalogSchema.from_settings(settings)
    products = list(read_catalog(myntra_dir / "products_without_images.jsonl.gz", schema, limit=20))
    name = f"{SECURE_INDEX}_v9"
    create_product_index(admin, name, schema, sample=products[0].source, model=model)
    assert not load_products(admin, name, products, model=model).failed
    admin.indices.refresh(index=name)
    searcher = HybridSearcher(create_client(settings), settings, index=name, tower=model)
    try:
        with caplog.at_level(logging.WARNING, logger="mm_opensearch.hybrid.search"):
            responses = [searcher.search(SearchRequest(q)) for q in ("shirt", "watch", "shoe")]
        assert [r.fusion_path for r in responses] == ["client"] * 3 and all(r.hits for r in responses)
        told = [r.getMessage() for r in caplog.records if "fused on the client" in r.getMessage()]
        assert len(told) == 1 and "cluster:monitor/" in told[0] and "index provision" in told[0], told
    finally:
        searcher.close()
        admin.indices.delete(index=name, ignore_unavailable=True)


def test_each_role_is_refused_what_it_must_not_do(
    augmented: dict[str, str], secure_node: OpenSearchNode, secure_dev_env: dict[str, str], admin: OpenSearch
) -> None:
    search = create_client(_settings(secure_node, secure_dev_env, SEARCH_ROLE))
    worker = create_client(_settings(secure_node, secure_dev_env, WORKER_ROLE))
    target = f"{SECURE_INDEX}_v2"
    refused = {
        "search: create a pipeline": lambda: search.transport.perform_request(
            "PUT", "/_search/pipeline/mmos-not-allowed", body=pipeline_body(FusionOptions())),
        "search: read a pipeline": lambda: search.transport.perform_request("GET", "/_search/pipeline/mmos-rrf-k60"),
        "search: write a document": lambda: search.index(index=SECURE_INDEX, id="x", body={"title": "x"}),
        "search: bulk": lambda: search.bulk(body=[{"index": {"_index": target, "_id": "x"}}, {"title": "x"}]),
        "search: create an index": lambda: search.indices.create(index=f"{SECURE_INDEX}_v7"),
        "search: move the alias": lambda: search.indices.put_alias(index=target, name=f"{SECURE_INDEX}_other"),
        "worker: create an index": lambda: worker.indices.create(index=f"{SECURE_INDEX}_v7"),
        "worker: move the alias": lambda: worker.indices.delete_alias(index=target, name=SECURE_INDEX),
        "worker: create a pipeline": lambda: worker.transport.perform_request(
            "PUT", "/_search/pipeline/mmos-not-allowed", body=pipeline_body(FusionOptions())),
        "worker: another index": lambda: worker.search(index=".opendistro_security"),
    }
    for what, call in refused.items():
        with pytest.raises(AuthorizationException):
            call()
            pytest.fail(f"allowed: {what}")
    # and what they are for
    assert worker.index(index=target, id="worker-write", body={"title": "written"}, refresh=True)["result"] == "created"
    found = search.search(index=SECURE_INDEX, body={"query": {"ids": {"values": ["worker-write"]}}})
    assert [hit["_source"]["title"] for hit in found["hits"]["hits"]] == ["written"]
    # removed through bulk, as augment's clean-up of removed products does (no role holds the single-document delete)
    done = admin.bulk(body=[{"delete": {"_index": target, "_id": "worker-write"}}], refresh=True)
    assert not done["errors"], done


@pytest.fixture(scope="module")
def nobody(superuser: OpenSearch) -> Iterator[str]:
    password = "Nobody-has-1-role-here"
    superuser.transport.perform_request("PUT", f"/_plugins/_security/api/internalusers/{NOBODY}",
                                    body={"password": password})
    yield password
    superuser.transport.perform_request("DELETE", f"/_plugins/_security/api/internalusers/{NOBODY}")


def test_a_user_without_the_role_gets_the_missing_privilege_named(
    augmented: dict[str, str], secure_node: OpenSearchNode, secure_dev_env: dict[str, str], tiny_model_dir: Path,
    nobody: str,
) -> None:
    env = {**_env(secure_node, secure_dev_env, SEARCH_ROLE), "MMOS_OPENSEARCH_USER": NOBODY,
           "MMOS_OPENSEARCH_PASSWORD": nobody, "MMOS_MODEL_DIR": str(tiny_model_dir)}
    line = _one_error_line(_cli(env, "search", "shirt"))
    assert f"user '{NOBODY}' lacks the privilege indices:" in line and "docs/security.md" in line, line

    with _search_app(secure_node, secure_dev_env, tiny_model_dir, SEARCH_ROLE,
                     opensearch_user=NOBODY, opensearch_password=nobody) as api:
        answer = api.post("/search", json={"query": "shirt"})
    assert answer.status_code == 403, answer.text
    assert f"user '{NOBODY}' lacks the privilege indices:" in answer.json()["detail"]

    searcher = HybridSearcher(create_client(_settings(secure_node, secure_dev_env, SEARCH_ROLE,
                                                      opensearch_user=NOBODY, opensearch_password=nobody)),
                              Settings(index_name=SECURE_INDEX))
    with pytest.raises(PermissionDeniedError) as refused:
        searcher.search(SearchRequest("shirt", mode="bm25"))
    assert refused.value.privilege is not None and refused.value.privilege.startswith("indices:")
    searcher.close()


def test_the_search_user_running_provisioning_is_one_line_naming_the_privilege(
    augmented: dict[str, str], secure_node: OpenSearchNode, secure_dev_env: dict[str, str]
) -> None:
    line = _one_error_line(_cli(_env(secure_node, secure_dev_env, SEARCH_ROLE), "index", "provision", SECURE_INDEX))
    assert f"user '{SEARCH_ROLE}' lacks the privilege cluster:" in line, line


def test_a_wrong_password_is_one_line_and_a_json_403(
    augmented: dict[str, str], secure_node: OpenSearchNode, secure_dev_env: dict[str, str], tiny_model_dir: Path
) -> None:
    env = {**_env(secure_node, secure_dev_env, SEARCH_ROLE), "MMOS_OPENSEARCH_PASSWORD": "not-the-password",
           "MMOS_MODEL_DIR": str(tiny_model_dir)}
    line = _one_error_line(_cli(env, "search", "shirt"))
    assert "401" in line and "MMOS_OPENSEARCH_PASSWORD" in line and "not-the-password" not in line, line
    with _search_app(secure_node, secure_dev_env, tiny_model_dir, SEARCH_ROLE,
                     opensearch_password="not-the-password") as api:
        answer = api.post("/search", json={"query": "shirt"})
    assert answer.status_code == 403, answer.text
    assert "MMOS_OPENSEARCH_PASSWORD" in answer.json()["detail"] and "not-the-password" not in answer.text


def test_an_unknown_ca_is_one_line_and_a_json_503(
    augmented: dict[str, str], secure_node: OpenSearchNode, secure_dev_env: dict[str, str], tiny_model_dir: Path,
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """The API's caller cannot fix the server's CA: a 503 (logged with the fix), not a 500."""
    other_ca, _ = generate_ca("some other CA")
    ca_file = tmp_path / "other-ca.pem"
    ca_file.write_bytes(other_ca.public_bytes(serialization.Encoding.PEM))
    env = {**_env(secure_node, secure_dev_env, SEARCH_ROLE), "MMOS_OPENSEARCH_CA_CERTS": str(ca_file),
           "MMOS_MODEL_DIR": str(tiny_model_dir)}
    line = _one_error_line(_cli(env, "search", "shirt"))
    assert "TLS" in line and "MMOS_OPENSEARCH_CA_CERTS" in line, line
    with caplog.at_level(logging.WARNING), _search_app(
        secure_node, secure_dev_env, tiny_model_dir, SEARCH_ROLE, opensearch_ca_certs=ca_file
    ) as api:
        answer = api.post("/search", json={"query": "shirt"})
    assert answer.status_code == 503, answer.text
    assert answer.json()["detail"]
    assert any("MMOS_OPENSEARCH_CA_CERTS" in r.getMessage() for r in caplog.records)


def test_plain_https_without_credentials_is_refused(secure_node: OpenSearchNode) -> None:
    trusted = ssl.create_default_context(cafile=str(secure_node.security.ca_cert))
    assert httpx.get(f"{secure_node.url}/{SECURE_INDEX}/_search", verify=trusted, timeout=10).status_code == 401
