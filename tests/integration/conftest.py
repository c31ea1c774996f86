"""Fixtures for tests against the real OpenSearch node and Redis (started by scripts/test.sh)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from opensearchpy import OpenSearch

from mm_opensearch.backfill import JobStore
from mm_opensearch.backfill import redis_client as store_client
from mm_opensearch.catalog import CatalogSchema
from mm_opensearch.client import create_client
from mm_opensearch.config import Settings
from mm_opensearch.hybrid.capabilities import default_fusions, detect_capabilities, provision_pipelines
from mm_opensearch.hybrid.fusion import FusionOptions
from mm_opensearch.towers import ModelConfig, MultimodalModel
from tests.integration.celery_worker import WorkerProcess, purge_queues
from tests.integration.secure_stack import secure_dev_env, secure_node, secure_up_output  # noqa: F401 - fixtures


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def client(settings: Settings) -> Iterator[OpenSearch]:
    client = create_client(settings)
    if not client.ping():
        pytest.fail(
            f"OpenSearch does not answer at {settings.opensearch_hosts}; run the tests with scripts/test.sh "
            "(it starts the node) or start one with `mm-opensearch dev up`"
        )
    yield client
    client.close()


@pytest.fixture(scope="session")
def cluster_version(client: OpenSearch) -> tuple[int, ...]:
    """The release the test node runs (the matrix runs the suite on 2.x and 3.x)."""
    return tuple(int(part) for part in client.info()["version"]["number"].split(".")[:3])


@pytest.fixture(scope="session")
def neural_search(client: OpenSearch) -> bool:
    """Whether the node has neural-search, so the server fusion path is there."""
    return any("neural" in row["component"].lower() for row in client.cat.plugins(format="json"))


# The fusions the suite's server-path tests run: the defaults and the weights its modules use.
SERVER_FUSIONS = [
    FusionOptions(method="rrf", rank_constant=60),
    FusionOptions(method="linear", normalization="min_max", weights=(0.3, 0.7)),
    FusionOptions(method="linear", normalization="l2", weights=(0.6, 0.4)),
    FusionOptions(method="linear", normalization="l2", weights=(0.3, 0.7)),
]


@pytest.fixture(scope="session")
def server_pipelines(client: OpenSearch) -> list[str]:
    """The search pipelines of :data:`SERVER_FUSIONS`, created as `index provision` does: the searcher
    creates none, so an index the tests make without provisioning finds them on the cluster."""
    return list(provision_pipelines(client, detect_capabilities(client), default_fusions(SERVER_FUSIONS)).pipelines)


@pytest.fixture
def index_name(client: OpenSearch) -> Iterator[str]:
    """A fresh index name per test, deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    client.indices.delete(index=f"{name}*", ignore_unavailable=True, allow_no_indices=True)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved random-init tiny model (what workers load through MMOS_MODEL_DIR)."""
    folder = tmp_path_factory.mktemp("model")
    MultimodalModel.from_config(ModelConfig.tiny(), use_feature_cache=False).save(folder)
    return folder


@pytest.fixture
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(settings.redis_url.get_secret_value())
    yield r
    r.close()


@pytest.fixture(scope="session")
def schema(settings: Settings) -> CatalogSchema:
    return CatalogSchema.from_settings(settings)


@pytest.fixture
def store(settings: Settings) -> JobStore:
    """The job store on the test Redis, with the default retention."""
    return JobStore(store_client(settings))


@pytest.fixture
def start_worker(tiny_model_dir: Path, settings: Settings, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start a worker with these settings (each call one more); all stopped after the test. The queues
    are emptied before the test, of the retries an earlier test's worker left queued."""
    purge_queues(settings)
    started: list[WorkerProcess] = []

    def start(**env: str) -> WorkerProcess:
        worker = WorkerProcess(tiny_model_dir, tmp_path / f"worker-{len(started)}.log", **env)
        started.append(worker)
        worker.start()
        return worker

    yield start
    for worker in started:
        worker.stop()
