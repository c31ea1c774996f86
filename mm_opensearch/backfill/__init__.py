"""Embedding existing indices: backfill, incremental updates, change feed, dead letters.

The library decides what to embed and writes it safely; a :class:`JobQueue` (Celery in
``workers/``, or :class:`InlineQueue`) decides where the work runs.
"""

from mm_opensearch.backfill.changes import changes_job_id, follow_changes, poll_changes
from mm_opensearch.backfill.embedder import QueueEmbedder
from mm_opensearch.backfill.jobs import EmbedJob, JobQueue, WriteJob, new_job_id
from mm_opensearch.backfill.pipeline import (
    EmbedContext,
    InlineQueue,
    dead_letter,
    embed_step,
    enqueue,
    retry_dead_letters,
    submit_embed,
    write_step,
)
from mm_opensearch.backfill.recovery import StallGuard
from mm_opensearch.backfill.retry import ErrorVerdict, RefusedItemsError, RetryPolicy, classify_error, is_transient
from mm_opensearch.backfill.run import BackfillTimeoutError, backfill_job_id, run_backfill, wait_for_job
from mm_opensearch.backfill.store import DeadLetter, JobCounts, JobStore, redis_client
from mm_opensearch.backfill.tuning import bulk_load_settings, restore_index_settings

__all__ = [
    "BackfillTimeoutError",
    "DeadLetter",
    "EmbedContext",
    "EmbedJob",
    "ErrorVerdict",
    "InlineQueue",
    "JobCounts",
    "JobQueue",
    "JobStore",
    "QueueEmbedder",
    "RefusedItemsError",
    "RetryPolicy",
    "StallGuard",
    "WriteJob",
    "backfill_job_id",
    "bulk_load_settings",
    "changes_job_id",
    "classify_error",
    "dead_letter",
    "embed_step",
    "enqueue",
    "follow_changes",
    "is_transient",
    "new_job_id",
    "poll_changes",
    "redis_client",
    "restore_index_settings",
    "retry_dead_letters",
    "run_backfill",
    "submit_embed",
    "wait_for_job",
    "write_step",
]
