"""Thin tasks: turn a JSON job into a library call, retry transient errors, dead-letter the rest.

The model is loaded once per worker process, after the fork (``worker_process_init``), so no
torch state is shared across processes and each process runs a bounded number of threads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from celery import Task
from celery.signals import worker_process_init
from celery.utils.time import get_exponential_backoff_interval

from mm_opensearch.backfill import (
    EmbedContext,
    EmbedJob,
    JobStore,
    WriteJob,
    dead_letter,
    embed_step,
    is_transient,
    write_step,
)
from mm_opensearch.catalog import CatalogSchema
from mm_opensearch.client import create_client
from mm_opensearch.config import Settings
from workers.app import CeleryJobQueue, app
from workers.metrics import metrics

__all__ = ["embed_batch", "write_batch"]

log = logging.getLogger(__name__)


class _Batch(Protocol):
    batch_id: str


T = TypeVar("T", bound=_Batch)
R = TypeVar("R")
_contexts: dict[bool, EmbedContext] = {}


def _settings() -> Settings:
    return app.conf.mmos_settings


def _load_model(settings: Settings) -> Any:
    """``MMOS_MODEL_DIR`` or the packaged default, on one torch thread unless ``MMOS_TORCH_THREADS`` says more.

    A prefork worker runs one process per slot; torch's default of a thread per core in each of
    them would oversubscribe the machine (``mm-opensearch worker`` sets cores / concurrency).
    """
    from mm_opensearch.towers import load_default_model  # noqa: PLC0415 - only model workers pay for torch

    threads = settings.torch_threads or 1
    return load_default_model(settings.model_copy(update={"torch_threads": threads}), use_feature_cache=False)


def context(*, with_model: bool) -> EmbedContext:
    """This process's context; the model is loaded on first need and kept."""
    key = with_model or bool(_contexts.get(True))
    if key not in _contexts:
        settings = _settings()
        _contexts[key] = EmbedContext(
            client=create_client(settings),
            store=JobStore.from_settings(settings),
            queue=CeleryJobQueue(app),
            schema=CatalogSchema.from_settings(settings),
            model=_load_model(settings) if with_model else None,
            image_dir=settings.data_dir,
            image_roots=settings.image_roots_or(settings.data_dir),
        )
    return _contexts[key]


@worker_process_init.connect
def _load_after_fork(**_: Any) -> None:
    metrics.zeros()
    if _settings().model_dir is not None:  # I/O-only workers run without a model
        context(with_model=True)


class BatchTask(Task):
    """Retries transient errors with exponential backoff and full jitter; dead-letters the rest."""

    kind = ""

    def run_step(self, step: Callable[[EmbedContext, T], R], ctx: EmbedContext, job: T) -> R:
        try:
            with metrics.seconds.labels(task=self.kind).time():
                result = step(ctx, job)
        except Exception as e:
            if is_transient(e) and self.request.retries < _settings().worker_max_retries:
                countdown = get_exponential_backoff_interval(
                    factor=1, retries=self.request.retries, maximum=_settings().worker_retry_backoff_max_s,
                    full_jitter=True,
                )
                log.warning("batch %s: %s; retry %d in %d s", job.batch_id, e, self.request.retries + 1, countdown,
                            extra={"batch": job.batch_id, "task": self.kind, "retry": self.request.retries + 1})
                metrics.batches.labels(task=self.kind, outcome="retry").inc()
                raise self.retry(exc=e, countdown=countdown) from e
            raise
        metrics.batches.labels(task=self.kind, outcome="ok").inc()
        return result

    def on_failure(self, exc: Exception, task_id: str, args: tuple, kwargs: dict, einfo: Any) -> None:
        reason = f"{type(exc).__name__}: {exc} (after {self.request.retries} retries)"
        letter = dead_letter(context(with_model=False).store, self.kind, args[0], reason)
        metrics.batches.labels(task=self.kind, outcome="dead").inc()
        log.error("batch %s dead-lettered as %s: %s", args[0].get("batch_id"), letter, reason,
                  extra={"batch": args[0].get("batch_id"), "task": self.kind, "dead_letter": letter})


class EmbedTask(BatchTask):
    kind = "embed"


class WriteTask(BatchTask):
    kind = "write"


@app.task(base=EmbedTask, bind=True, name="mmos.embed_batch")
def embed_batch(self: BatchTask, job: dict[str, Any]) -> None:
    """Encode one batch of products of an index (ids only in the message)."""
    self.run_step(embed_step, context(with_model=True), EmbedJob.from_dict(job))


@app.task(base=WriteTask, bind=True, name="mmos.write_batch")
def write_batch(self: BatchTask, job: dict[str, Any]) -> None:
    """Write one batch of vectors with ``if_seq_no`` guards."""
    metrics.settled(self.run_step(write_step, context(with_model=False), WriteJob.from_dict(job)))
