"""The broker, the job store and a real Celery worker over ``rediss://`` with a password.

The test starts its own Debian redis-server with TLS only (``--port 0 --tls-port``) and
``requirepass``, its certificate signed by a throwaway CA made here, and runs a backfill through
the CLI and a worker against it. A wrong password and a CA the client does not know are each one
``error:`` line naming the setting; the password appears in no output and no log.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from opensearchpy import OpenSearch
from pydantic import SecretStr

from mm_opensearch.backfill import JobStore, redis_client
from mm_opensearch.catalog import CatalogSchema, Product
from mm_opensearch.config import Settings
from mm_opensearch.devservices import RedisServer
from mm_opensearch.devservices.redis import RedisTLS
from mm_opensearch.devservices.security import generate_ca, issue_cert
from mm_opensearch.towers import MultimodalModel
from tests.integration.celery_worker import (
    WorkerProcess,
    assert_all_vectors_fresh,
    index_without_vectors,
    stamped_catalog,
)
from tests.ports import free_port as closed_port

pytestmark = pytest.mark.services

CLI = str(Path(sys.executable).with_name("mm-opensearch"))
# One of this checkout's spare ports (MMOS_TEST_REDIS_PORT + ... would collide across worktrees).
SECURE_REDIS_PORT = int(os.environ.get("MMOS_TEST_SECURE_REDIS_PORT", "0")) or closed_port()


@dataclass(frozen=True)
class SecureRedis:
    url: str
    password: str
    ca_file: Path
    other_ca_file: Path  # a CA that signed nothing this server presents


def _pem(path: Path, obj: object) -> Path:
    if hasattr(obj, "private_bytes"):
        path.write_bytes(obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,  # type: ignore[attr-defined]
                                           serialization.NoEncryption()))
        path.chmod(0o600)
    else:
        path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))  # type: ignore[attr-defined]
    return path


@pytest.fixture(scope="module")
def secure_redis(tmp_path_factory: pytest.TempPathFactory, settings: Settings) -> Iterator[SecureRedis]:
    home = tmp_path_factory.mktemp("secure-redis")
    ca_cert, ca_key = generate_ca("secure-redis test CA")
    server_cert, server_key = issue_cert(ca_cert, ca_key, "redis", server=True)
    other_ca, _ = generate_ca("a CA nobody uses")
    tls = RedisTLS(_pem(home / "redis.pem", server_cert), _pem(home / "redis.key", server_key),
                   _pem(home / "ca.pem", ca_cert))
    password = secrets.token_hex(16)
    server = RedisServer(settings.model_copy(update={"dev_dir": home, "dev_redis_port": SECURE_REDIS_PORT}),
                         password=password, tls=tls)
    server.start()
    try:
        yield SecureRedis(server.url, password, tls.ca_file, _pem(home / "other-ca.pem", other_ca))
    finally:
        server.stop()


def _env(secure: SecureRedis, **extra: str) -> dict[str, str]:
    return {**os.environ, "MMOS_REDIS_URL": secure.url, "MMOS_REDIS_CA_FILE": str(secure.ca_file),
            "COLUMNS": "200", **extra}


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=180, check=False)  # noqa: S603


def test_a_backfill_over_tls_with_a_password_finishes(
    client: OpenSearch, index_name: str, settings: Settings, secure_redis: SecureRedis, tiny_model_dir: Path,
    schema: CatalogSchema, myntra_dir: Path, tmp_path: Path,
) -> None:
    model = MultimodalModel.load(tiny_model_dir, settings=settings, use_feature_cache=False)
    products: list[Product] = stamped_catalog(myntra_dir, schema, 12)
    index_without_vectors(client, index_name, schema, products, model)
    worker = WorkerProcess(tiny_model_dir, tmp_path / "worker.log", MMOS_REDIS_URL=secure_redis.url,
                           MMOS_REDIS_CA_FILE=str(secure_redis.ca_file), MMOS_WORKER_METRICS_PORT=str(closed_port()))
    worker.start()
    try:
        done = _cli("backfill", index_name, "--batch-size", "4", "--timeout", "120",
                    env=_env(secure_redis, MMOS_MODEL_DIR=str(tiny_model_dir)))
    finally:
        worker.stop()

    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{worker.log_tail()}"
    assert f"backfill {index_name}: 12/12 products" in done.stdout, done.stdout  # a progress line, not a TTY
    assert_all_vectors_fresh(client, index_name, model, products)
    # The job lives in the secured Redis (not in the plain test one the env points at otherwise).
    secured = settings.model_copy(update={"redis_url": SecretStr(secure_redis.url), "redis_ca_file": secure_redis.ca_file})
    counts = JobStore(redis_client(secured)).counts(f"backfill-{index_name}")
    assert counts is not None and counts.written == len(products), counts
    for where, text in (("stdout", done.stdout), ("stderr", done.stderr), ("worker log", worker.log_tail(10**7))):
        assert secure_redis.password not in text, f"the Redis password leaked into the {where}"
    assert "rediss://" in worker.log_tail(10**7)  # the banner names the broker, masked


def test_a_wrong_password_is_one_line_naming_the_url_setting(secure_redis: SecureRedis) -> None:
    wrong = secure_redis.url.replace(secure_redis.password, "not-the-password")
    done = _cli("jobs", "status", "backfill-none", env={**_env(secure_redis), "MMOS_REDIS_URL": wrong})

    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error:") and "MMOS_REDIS_URL" in lines[0] and "credentials were refused" in lines[0]
    assert "not-the-password" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_an_unknown_ca_is_one_line_naming_the_ca_setting(secure_redis: SecureRedis) -> None:
    done = _cli("jobs", "status", "backfill-none", env=_env(secure_redis, MMOS_REDIS_CA_FILE=str(secure_redis.other_ca_file)))

    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error:") and "MMOS_REDIS_CA_FILE" in lines[0], lines[0]
    assert secure_redis.password not in done.stderr + done.stdout


def test_a_plain_client_is_refused_by_the_tls_only_server(secure_redis: SecureRedis) -> None:
    plain = secure_redis.url.replace("rediss://", "redis://", 1)
    done = _cli("jobs", "status", "backfill-none", env=_env(secure_redis, MMOS_REDIS_URL=plain))

    assert done.returncode == 1
    assert "MMOS_REDIS_URL" in done.stderr and secure_redis.password not in done.stderr
