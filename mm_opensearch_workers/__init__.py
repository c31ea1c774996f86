"""Celery adapter for the embedding pipeline: the app, its queues and thin tasks.

Run with ``mm-opensearch worker`` (or ``celery -A mm_opensearch_workers.app worker``). The logic lives in
:mod:`mm_opensearch.backfill`; this package only moves its jobs through Redis.
"""

from mm_opensearch_workers.app import IO_QUEUE, MODEL_QUEUE, CeleryJobQueue, check_time_limits, create_app

__all__ = ["IO_QUEUE", "MODEL_QUEUE", "CeleryJobQueue", "check_time_limits", "create_app"]
