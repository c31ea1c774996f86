"""Prometheus metrics of the workers: batches by outcome, products by outcome, batch durations.

A prefork worker runs its tasks in child processes, so the counters use prometheus_client's
multiprocess mode: every process writes to files under ``PROMETHEUS_MULTIPROC_DIR`` and the main
process serves their sum. That variable must be set before prometheus_client is first imported,
hence this module sets it (when metrics are on) before importing it, and ``mm_opensearch_workers.app`` imports
this module first.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from mm_opensearch.config import Settings, get_settings

__all__ = ["WorkerMetrics", "serve_metrics"]

_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _multiproc_dir(settings: Settings) -> Path | None:
    if settings.worker_metrics_port is None:
        return None
    if _MULTIPROC_ENV not in os.environ:
        if "prometheus_client" in sys.modules:
            msg = f"prometheus_client was imported before mm_opensearch_workers.metrics; set {_MULTIPROC_ENV} for worker metrics"
            raise RuntimeError(msg)
        folder = settings.cache_dir / "worker-metrics" / str(settings.worker_metrics_port)  # one worker a port
        os.environ[_MULTIPROC_ENV] = str(folder)
    return Path(os.environ[_MULTIPROC_ENV])


_DIR = _multiproc_dir(get_settings())

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, start_http_server  # noqa: E402

_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class WorkerMetrics:
    """What an operator watches during a backfill: throughput, retries, dead letters, slow batches."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.batches = Counter(
            "mmos_worker_batches", "Batches by task (embed, write) and outcome (ok, retry, dead)",
            ["task", "outcome"], registry=registry,
        )
        self.products = Counter(
            "mmos_worker_products", "Products of written batches by outcome (written, skipped, missing, failed)",
            ["outcome"], registry=registry,
        )
        self.seconds = Histogram(
            "mmos_worker_batch_seconds", "Wall time of one batch step", ["task"], buckets=_BUCKETS, registry=registry,
        )

    def zeros(self) -> None:
        """Create every series at 0, so a dashboard's rate() sees a worker before its first batch."""
        for task in ("embed", "write"):
            self.seconds.labels(task=task)
            for outcome in ("ok", "retry", "dead"):
                self.batches.labels(task=task, outcome=outcome)
        for outcome in ("written", "skipped", "missing", "failed"):
            self.products.labels(outcome=outcome)

    def settled(self, counts: dict[str, int]) -> None:
        for outcome, n in counts.items():
            self.products.labels(outcome=outcome).inc(n)


def serve_metrics(settings: Settings) -> Any:
    """In the worker's main process: empty the multiprocess folder, then serve the sum of all processes."""
    if _DIR is None or settings.worker_metrics_port is None:
        return None
    shutil.rmtree(_DIR, ignore_errors=True)  # counters of an earlier run would be added in
    _DIR.mkdir(parents=True, exist_ok=True)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(_DIR))
    return start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_host, registry=registry)


metrics = WorkerMetrics()  # the default registry: in multiprocess mode its values live in _DIR's files
