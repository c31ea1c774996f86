"""The Celery app: Redis broker and backend, JSON only, late acks, two queues.

Late acks make a task killed mid-way (worker SIGKILLed, machine lost) run again, which is safe
because every write is idempotent and guarded by ``if_seq_no``. Redis redelivers an unacknowledged
task after ``visibility_timeout``; if that were shorter than the hard time limit (plus the longest
retry backoff, which a worker waits out holding the message), a slow but healthy task would be
handed to a second worker while the first still runs it, so the worker refuses to start with such
a config.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from mm_opensearch_workers.metrics import serve_metrics  # first: it sets up prometheus_client's multiprocess mode

from celery import Celery
from celery.signals import setup_logging, worker_init

from mm_opensearch.backfill import EmbedJob, WriteJob
from mm_opensearch.client import create_client
from mm_opensearch.config import Settings, get_settings
from mm_opensearch.errors import ConfigError
from mm_opensearch.health import log_cluster_health
from mm_opensearch.logs import configure_logging
from mm_opensearch.redis_tls import redis_ssl_options
from mm_opensearch_workers.broker import pending_batch_ids

__all__ = ["IO_QUEUE", "MODEL_QUEUE", "CeleryJobQueue", "app", "check_time_limits", "create_app"]

MODEL_QUEUE = "mmos.model"  # encoding: CPU/GPU bound, one task per process at a time
IO_QUEUE = "mmos.io"  # bulk writes to OpenSearch: network bound


def create_app(settings: Settings) -> Celery:
    """A Celery app configured from ``settings`` (passed in, never read behind the caller's back)."""
    url = settings.redis_url.get_secret_value()
    visibility = settings.worker_visibility_timeout_s
    # kombu scans for unacknowledged tasks every 10th restore interval; a tenth of the timeout keeps
    # the redelivery of a killed worker's task within about twice the visibility timeout.
    # A worker killed while holding kombu's restore mutex blocks restores until the mutex expires.
    transport = {
        "visibility_timeout": visibility,
        "unacked_restore_interval": min(10, max(1, visibility // 100)),
        "unacked_mutex_expire": min(300, visibility),
    }
    celery = Celery("mm_opensearch", broker=url, backend=url, include=["mm_opensearch_workers.tasks"], set_as_current=False)
    celery.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.worker_task_time_limit_s,
        task_soft_time_limit=max(1, int(settings.worker_task_time_limit_s * 0.9)),
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # ride out a Redis restart
        task_publish_retry_policy={"max_retries": 60, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2},
        task_ignore_result=True,  # progress lives in the job store, not in results
        result_expires=3600,
        task_default_queue=IO_QUEUE,
        task_routes={"mmos.embed_batch": {"queue": MODEL_QUEUE}, "mmos.write_batch": {"queue": IO_QUEUE}},
        worker_hijack_root_logger=False,
    )
    if ssl_options := redis_ssl_options(url, settings.redis_ca_file):
        celery.conf.update(broker_use_ssl=ssl_options, redis_backend_use_ssl=ssl_options)
    celery.conf.mmos_settings = settings
    return celery


def check_time_limits(conf: Any) -> None:
    """Refuse a visibility timeout that a task, or a retry waiting out its backoff, can outlast.

    A retry is a new message with a countdown, held unacknowledged by the worker that took it until
    it is due: its backoff and then its run both count against the visibility timeout.
    """
    hard = conf.task_time_limit
    visibility = conf.broker_transport_options.get("visibility_timeout")
    settings: Settings | None = conf.get("mmos_settings")
    backoff = settings.worker_retry_backoff_max_s if settings is not None else 0
    if hard is None or visibility is None or visibility <= hard + backoff:
        msg = (
            f"visibility_timeout ({visibility} s) must be longer than the hard task time limit ({hard} s) plus the "
            f"longest retry backoff ({backoff:g} s), or Redis hands a running task to a second worker; raise "
            "MMOS_WORKER_VISIBILITY_TIMEOUT_S or lower MMOS_WORKER_TASK_TIME_LIMIT_S or MMOS_WORKER_RETRY_BACKOFF_MAX_S"
        )
        raise ConfigError(msg)


class CeleryJobQueue:
    """The library's :class:`~mm_opensearch.backfill.JobQueue` on this app's two queues."""

    def __init__(self, celery: Celery, *, scan_limit: int | None = None) -> None:
        """``scan_limit``: queued messages per list read to find pending batches (default: the app's
        ``MMOS_BACKFILL_RESEND_SCAN_LIMIT``)."""
        self.celery = celery
        self.scan_limit = scan_limit if scan_limit is not None else celery.conf.mmos_settings.backfill_resend_scan_limit

    def submit_embed(self, job: EmbedJob) -> None:
        self.celery.send_task("mmos.embed_batch", args=[job.to_dict()], queue=MODEL_QUEUE)

    def submit_write(self, job: WriteJob) -> None:
        self.celery.send_task("mmos.write_batch", args=[job.to_dict()], queue=IO_QUEUE)

    def pending_batch_ids(self, batch_ids: Collection[str]) -> set[str]:
        """Batches whose embed or write message is queued or taken by a worker (see :mod:`mm_opensearch_workers.broker`)."""
        if not batch_ids:
            return set()
        with self.celery.connection_for_read() as connection:
            return pending_batch_ids(connection.default_channel, (MODEL_QUEUE, IO_QUEUE), batch_ids,
                                     limit=self.scan_limit)


app = create_app(get_settings())


@setup_logging.connect
def _logging(**_: Any) -> None:
    """Celery leaves logging to us when this signal has a receiver: the same format as every command."""
    settings: Settings = app.conf.mmos_settings
    configure_logging(settings.log_format, settings.log_level)


@worker_init.connect
def _refuse_inconsistent_limits(sender: Any = None, **_: Any) -> None:
    try:
        check_time_limits(app.conf)
    except ConfigError as e:
        # Celery logs and swallows Exceptions raised by signal handlers; SystemExit stops the worker.
        raise SystemExit(f"mm-opensearch worker refuses to start: {e}") from e
    serve_metrics(app.conf.mmos_settings)
    _log_cluster_health(app.conf.mmos_settings)


def _log_cluster_health(settings: Settings) -> None:
    """One start-up line when the cluster is yellow or red; a quick probe, so a down cluster does not
    hold the worker's start (its tasks retry their own connection errors)."""
    client = create_client(settings, max_retries=0, timeout=settings.connect_timeout_s, retry_on_timeout=False)
    try:
        log_cluster_health(client)
    finally:
        client.close()
