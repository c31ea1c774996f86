"""Batches the broker lost: noticed because the queue went past them, and sent again.

A Redis restart can lose a message outright, even with append-only persistence and late acks.
Measured with Celery and kombu 5.7: 30 restarts while a worker drained 20,000 messages lost 2 to 4
of them, neither queued nor listed as unacknowledged, so no visibility timeout brings them back
(probably popped by BRPOP as Redis shut down, before kombu could list them as unacknowledged).
A worker SIGKILLed while a popped message's reply is still unread loses it the same way (seen once
in CI under load).
The job store keeps every batch's message and send time until the batch settles, so whoever
watches a job (a waiting backfill, the change feed) can send the lost ones again. That is safe:
the embed step skips products whose vector is already current, and a batch counts once however
often it settles. It is not free, though: a batch that merely waits behind slow or stopped workers
looks just as overdue, and sending it again only lengthens the queue (a break-test saw 30 tasks
for 24 batches). So before a resend the guard asks the queue which of the overdue batches it still
holds (:meth:`~mm_opensearch.backfill.jobs.JobQueue.pending_batch_ids`) and sends only the others.
"""

from __future__ import annotations

import logging
import time

from mm_opensearch.backfill.jobs import EmbedJob, JobQueue
from mm_opensearch.backfill.store import JobCounts, JobStore

__all__ = ["StallGuard"]

log = logging.getLogger(__name__)


class StallGuard:
    """Sends again a job's batches that are presumed lost.

    A batch is presumed lost once it has been unsettled for ``after_s`` and either a batch sent
    after it has settled (the queue went past it) or no batch of the job has settled for
    ``after_s`` (the job stalled; this catches the last batch). ``after_s`` should exceed the
    task time limit, so a batch still running is never duplicated. Each resend doubles that
    batch's wait, so workers that are merely down get a few duplicates, not one per poll.

    An overdue batch whose message the queue still holds is not sent: its clock restarts, so the
    broker is looked at again only after another ``after_s``. One the queue does not hold is sent
    only when it is still missing at the next poll: a worker takes a message off the queue a moment
    before it lists it as taken, and a look at that moment must not cause a duplicate.
    """

    def __init__(self, store: JobStore, queue: JobQueue, job_id: str, *, after_s: float) -> None:
        self.store, self.queue, self.job_id, self.after_s = store, queue, job_id, after_s
        self._settled = -1
        self._since = time.monotonic()
        self._missing: set[str] = set()  # overdue and not in the broker at the last look

    def check(self, counts: JobCounts) -> int:
        """Call on every poll of the job; returns how many batches it sent again."""
        now = time.monotonic()
        if counts.batches_settled != self._settled:
            self._settled, self._since = counts.batches_settled, now
        if counts.settled or counts.status not in ("scanned", "finished"):
            return 0  # nothing unsettled, or still scanning: its batches are being sent right now
        stalled = now - self._since > self.after_s
        overdue = self.store.overdue(
            self.job_id, after_s=self.after_s, sent_before=None if stalled else counts.settled_sent_at
        )
        if not overdue:
            self._missing.clear()
            return 0
        pending = self.queue.pending_batch_ids([batch.batch_id for batch in overdue])
        waiting = [batch.batch_id for batch in overdue if batch.batch_id in pending]
        if waiting:
            self.store.postpone(self.job_id, waiting)
            log.info("job %s: %d batches unsettled after %.0f s are still queued or being run; not sent again",
                     self.job_id, len(waiting), self.after_s, extra={"job": self.job_id, "batches": waiting})
        missing = {batch.batch_id for batch in overdue if batch.batch_id not in pending}
        lost = [batch for batch in overdue if batch.batch_id in missing & self._missing]
        self._missing = missing - {batch.batch_id for batch in lost}
        for batch in lost:
            self.queue.submit_embed(EmbedJob.from_dict(batch.message))  # a lost write is read and encoded afresh
            self.store.mark_resent(self.job_id, batch.batch_id)
        if lost:
            reason = "the job stalled" if stalled else "later batches have settled"
            log.warning("job %s: %d batches unsettled after %.0f s while %s, and not in the broker; sent them again",
                        self.job_id, len(lost), self.after_s, reason,
                        extra={"job": self.job_id, "batches": [batch.batch_id for batch in lost]})
        return len(lost)
