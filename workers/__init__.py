"""The Celery app moved to :mod:`mm_opensearch_workers` (installed under the project's own name).

This folder stays in the repository so ``celery -A workers.app`` and ``import workers.app`` in a
checkout keep working: each module here *is* its ``mm_opensearch_workers`` twin (the same module
object, put in ``sys.modules``), so tasks, metrics and private names are never duplicated. The
wheel does not install this folder (see tests/unit/test_packaging.py).
"""

from mm_opensearch_workers import IO_QUEUE, MODEL_QUEUE, CeleryJobQueue, check_time_limits, create_app

__all__ = ["IO_QUEUE", "MODEL_QUEUE", "CeleryJobQueue", "check_time_limits", "create_app"]
