"""The augment's :class:`~mm_opensearch.augment.run.Embedder` on top of a job queue."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from opensearchpy import OpenSearch

from mm_opensearch.backfill.jobs import JobQueue
from mm_opensearch.backfill.pipeline import enqueue
from mm_opensearch.backfill.run import ProgressCallback, run_backfill, wait_for_job
from mm_opensearch.backfill.store import JobStore
from mm_opensearch.catalog import CatalogSchema
from mm_opensearch.config import RESUBMIT_AFTER_S

__all__ = ["QueueEmbedder"]


@dataclass
class QueueEmbedder:
    """Backfills and embeds through ``queue`` and waits until the workers have written everything."""

    client: OpenSearch
    store: JobStore
    queue: JobQueue
    schema: CatalogSchema
    image_dir: Path | None = None
    batch_size: int = 64
    slices: int = 2
    timeout_s: float | None = None
    resubmit_after_s: float = RESUBMIT_AFTER_S
    on_progress: ProgressCallback | None = None

    def backfill(self, index: str, *, tune: bool) -> None:
        run_backfill(
            self.client, self.store, self.queue, index, schema=self.schema, image_dir=self.image_dir,
            slices=self.slices, batch_size=self.batch_size, tune=tune, timeout_s=self.timeout_s,
            resubmit_after_s=self.resubmit_after_s, on_progress=self.on_progress,
        )

    def embed(self, index: str, ids: list[str]) -> None:
        job_id = enqueue(self.store, self.queue, index, ids, batch_size=self.batch_size)
        wait_for_job(self.store, job_id, timeout_s=self.timeout_s, on_progress=self.on_progress, queue=self.queue,
                     resubmit_after_s=self.resubmit_after_s)
        self.client.indices.refresh(index=index)
