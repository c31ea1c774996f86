"""Thin tasks: turn a JSON job into a library call, retry transient errors, dead-letter the rest.

The model is loaded once per worker process, after the fork (``worker_process_init``), so no
torch state is shared across processes and each process runs a bounded number of threads.
How long a batch retries is :class:`~mm_opensearch.backfill.RetryPolicy`'s call, from the
``MMOS_WORKER_RETRY_*`` settings; the time of its first failure travels with the retried message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from celery import Task
from celery.signals import worker_process_init

from mm_opensearch.backfill import (
    EmbedContext,
    EmbedJob,
    JobStore,
    RetryPolicy,
    WriteJob,
    classify_error,
    dead_letter,
    embed_step,
    write_step,
)
from mm_opensearch.catalog import CatalogSchema
from mm_opensearch.client import create_client
from mm_opensearch.config import Settings
from mm_opensearch_workers.app import CeleryJobQueue, app
from mm_opensearch_workers.metrics import metrics

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


def retry_policy(settings: Settings) -> RetryPolicy:
    """The worker's ``MMOS_WORKER_MAX_RETRIES``, ``_RETRY_BUDGET_S`` and ``_RETRY_BACKOFF_MAX_S``."""
    return RetryPolicy(settings.worker_max_retries, settings.worker_retry_budget_s, settings.worker_retry_backoff_max_s)


class BatchTask(Task):
    """Retries transient errors with capped exponential backoff within a budget; dead-letters the rest."""

    kind = ""
    max_retries = None  # Celery's default (3) would silently cut MMOS_WORKER_MAX_RETRIES short: the policy decides

    def run_step(self, step: Callable[[EmbedContext, T], R], ctx: EmbedContext, job: T,
                 failing_since: float | None) -> R:
        try:
            with metrics.seconds.labels(task=self.kind).time():
                result = step(ctx, job)
        except Exception as e:
            verdict, since = classify_error(e), failing_since or time.time()
            countdown = None
            if verdict.transient:
                countdown = retry_policy(_settings()).delay(self.request.retries, time.time() - since)
            if countdown is not None:
                log.warning("batch %s: %s; retry %d in %.1f s", job.batch_id, verdict.reason, self.request.retries + 1,
                            countdown, extra={"batch": job.batch_id, "task": self.kind, "retry": self.request.retries + 1})
                metrics.batches.labels(task=self.kind, outcome="retry").inc()
                raise self.retry(args=self.request.args, kwargs={"failing_since": since}, exc=e,
                                 countdown=countdown) from e
            raise
        metrics.batches.labels(task=self.kind, outcome="ok").inc()
        return result

    def on_failure(self, exc: Exception, task_id: str, args: tuple, kwargs: dict, einfo: Any) -> None:
        retries, verdict = self.request.retries, classify_error(exc)
        if verdict.transient:
            settings = _settings()
            spent = time.time() - ((kwargs or {}).get("failing_since") or time.time())
            reason = (f"{verdict.reason} (still failing after {retries} retries over {spent:.0f} s; "
                      f"MMOS_WORKER_MAX_RETRIES={settings.worker_max_retries}, "
                      f"MMOS_WORKER_RETRY_BUDGET_S={settings.worker_retry_budget_s:g})")
        elif retries:
            reason = f"{verdict.reason} (after {retries} retries)"
        else:
            reason = f"{verdict.reason} (not retried: it would fail again)"
        letter = dead_letter(context(with_model=False).store, self.kind, args[0], reason)
        metrics.batches.labels(task=self.kind, outcome="dead").inc()
        log.error("batch %s dead-lettered as %s: %s", args[0].get("batch_id"), letter, reason,
                  extra={"batch": args[0].get("batch_id"), "task": self.kind, "dead_letter": letter})


class EmbedTask(BatchTask):
    kind = "embed"


class WriteTask(BatchTask):
    kind = "write"


@app.task(base=EmbedTask, bind=True, name="mmos.embed_batch")
def embed_batch(self: BatchTask, job: dict[str, Any], failing_since: float | None = None) -> None:
    """Encode one batch of products of an index (ids only in the message)."""
    self.run_step(embed_step, context(with_model=True), EmbedJob.from_dict(job), failing_since)


@app.task(base=WriteTask, bind=True, name="mmos.write_batch")
def write_batch(self: BatchTask, job: dict[str, Any], failing_since: float | None = None) -> None:
    """Write one batch of vectors with ``if_seq_no`` guards."""
    metrics.settled(self.run_step(write_step, context(with_model=False), WriteJob.from_dict(job), failing_since))
