"""One secured dev node per test session (``dev up --secure`` on free ports in a temporary dev dir).

A secured start takes about a minute on the shared machine (the plugin's TLS setup, its security
index, the roles and users), so the modules that need one share it: ``conftest.py`` imports these
fixtures. The node runs the release of MMOS_DEV_OPENSEARCH_VERSION (each leg of the test matrix) and
its roles cover the product index :data:`SECURE_INDEX` (the alias and its versions).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mm_opensearch.config import Settings
from mm_opensearch.devservices import OpenSearchNode
from tests.ports import free_port

__all__ = ["CLI", "SECURE_INDEX", "free_port", "secure_dev_env", "secure_node", "secure_up_output"]

SECURE_INDEX = "mmsec"  # MMOS_INDEX_NAME of `dev up --secure`: the index its roles are about

_SCRIPT = Path(sys.executable).with_name("mm-opensearch")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-c", "from mm_opensearch.cli.app import main; main()"]


@pytest.fixture(scope="session")
def secure_dev_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a dev dir of its own, on free ports."""
    return {
        "MMOS_DEV_DIR": str(tmp_path_factory.mktemp("secure-dev")), "MMOS_DEV_OPENSEARCH_PORT": str(free_port()),
        "MMOS_DEV_OPENSEARCH_TRANSPORT_PORT": str(free_port()), "MMOS_DEV_REDIS_PORT": str(free_port()),
        "MMOS_INDEX_NAME": SECURE_INDEX, "COLUMNS": "250",
    }


@pytest.fixture(scope="session")
def secure_up_output(secure_dev_env: dict[str, str]) -> Iterator[str]:
    """`mm-opensearch dev up --secure`, as a developer runs it; `dev down` at the end of the session."""
    run = {"capture_output": True, "text": True, "timeout": 600, "check": False, "env": {**os.environ, **secure_dev_env}}
    try:
        done = subprocess.run([*CLI, "dev", "up", "--secure"], **run)  # noqa: S603
        assert done.returncode == 0, done.stdout + done.stderr
        yield done.stdout
    finally:
        subprocess.run([*CLI, "dev", "down"], **run)  # noqa: S603


@pytest.fixture(scope="session")
def secure_node(secure_dev_env: dict[str, str], secure_up_output: str) -> OpenSearchNode:
    return OpenSearchNode(Settings(
        dev_dir=Path(secure_dev_env["MMOS_DEV_DIR"]),
        dev_opensearch_port=int(secure_dev_env["MMOS_DEV_OPENSEARCH_PORT"]),
        dev_opensearch_secure=True,
    ))
