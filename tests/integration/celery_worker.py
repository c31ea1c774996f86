"""A real ``celery worker`` subprocess for the integration tests, with a tiny model on disk."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import redis
from opensearchpy import OpenSearch

from mm_opensearch.config import Settings
from mm_opensearch.indexing.mappings import VECTOR_FIELDS
from workers.app import IO_QUEUE, MODEL_QUEUE

REPO = Path(__file__).resolve().parents[2]
TEST_LIMITS = {"MMOS_WORKER_TASK_TIME_LIMIT_S": "10", "MMOS_WORKER_VISIBILITY_TIMEOUT_S": "12"}


class WorkerProcess:
    """Start, SIGKILL and restart one worker (its own process group, so children die with it)."""

    def __init__(self, model_dir: Path, log: Path, **env: str) -> None:
        self.env = {**os.environ, "MMOS_MODEL_DIR": str(model_dir), "MMOS_TORCH_THREADS": "1",
                    "MMOS_WORKER_MAX_RETRIES": "3", "MMOS_WORKER_RETRY_BACKOFF_MAX_S": "1",
                    "PYTHONPATH": str(REPO), **TEST_LIMITS, **env}
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", f"{MODEL_QUEUE},{IO_QUEUE}",
                "--concurrency", "1", "--pool", "prefork", "--loglevel", "info", "--without-gossip",
                "--without-mingle", "--without-heartbeat"]

    def start(self, timeout_s: float = 60) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.argv(), env=self.env, stdout=out, stderr=subprocess.STDOUT,  # noqa: S603
                                            cwd=REPO, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if b" ready." in self.log.read_bytes()[offset:]:
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready after {timeout_s} s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children), as an OOM killer would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def purge_queues(settings: Settings) -> None:
    """Drop messages left by earlier runs (they would target deleted indices)."""
    r = redis.Redis.from_url(settings.redis_url.get_secret_value())
    r.delete(MODEL_QUEUE, IO_QUEUE, "unacked", "unacked_index")
    r.close()


def fused_vectors(client: OpenSearch, index: str) -> dict[str, np.ndarray]:
    """id -> stored fused vector of every document that has one."""
    client.indices.refresh(index=index)
    body = {"size": 10_000, "_source": [VECTOR_FIELDS["fused"]], "query": {"exists": {"field": VECTOR_FIELDS["fused"]}}}
    hits = client.search(index=index, body=body)["hits"]["hits"]
    return {hit["_id"]: np.asarray(hit["_source"][VECTOR_FIELDS["fused"]], dtype=np.float32) for hit in hits}
