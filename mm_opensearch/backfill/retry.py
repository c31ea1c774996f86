"""Which failures of a batch pass on their own, and how long a batch waits for them.

Errors are classified by what OpenSearch says they are, not by HTTP status alone: a 403 is a
write block (``cluster_block_exception``: ``index.blocks.write``, a flood-stage disk watermark),
which an operator or the cluster lifts, or missing privileges (``security_exception``), which no
retry fixes. A whole response and one item of a bulk or multi-get response go through
the same :func:`classify_response`.

A transient failure is retried with capped exponential backoff and equal jitter (half the delay
fixed, half random), so the waits add up to a known span however the dice fall: full jitter could
spend a whole retry count in a few seconds and dead-letter a batch in the middle of a short outage.
A batch stops retrying when its retry count or its time budget is spent, whichever comes first.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Literal

import opensearchpy
import redis

from mm_opensearch.client import TRANSIENT_STATUSES
from mm_opensearch.errors import MMOpenSearchError

__all__ = [
    "ErrorVerdict",
    "RefusedItemsError",
    "RetryPolicy",
    "classify_error",
    "classify_response",
    "is_transient",
    "missing_privilege",
]

# Blocks are lifted (by an operator, a freed disk); a shard is unavailable while a restarted node recovers it;
# a node leaving (a rolling restart) takes its connections and its search contexts (a scan's PIT) with it.
TRANSIENT_TYPES = frozenset({
    "cluster_block_exception", "no_shard_available_action_exception", "unavailable_shards_exception",
    "node_disconnected_exception", "node_not_connected_exception", "node_closed_exception",
    "connect_transport_exception", "search_context_missing_exception",
})
# A search whose shards failed: a server error (500 and up) is the shards' nodes, not the request
# (a malformed search is a 400 of the same type), so a later attempt can succeed.
_SHARDS_FAILED = "search_phase_execution_exception"
PERMANENT_TYPES = frozenset({"security_exception"})
_PRIVILEGE = re.compile(r"no permissions for \[(.*?)\](?: and |$)")


@dataclass(frozen=True)
class ErrorVerdict:
    """What a failure was: one line (with the fix when there is one) and whether it passes.

    ``kind`` is ``transient`` (retry later), ``denied`` (credentials or privileges: no document of
    the batch can be written, dead-letter it at once) or ``permanent`` (this request or document is
    wrong).
    """

    kind: Literal["transient", "denied", "permanent"]
    reason: str

    @property
    def transient(self) -> bool:
        return self.kind == "transient"


class RefusedItemsError(MMOpenSearchError):
    """Items of a bulk write or a multi-get failed for a reason about the cluster, not the documents: a
    429, a write block, a shard not started yet (retry the batch) or missing privileges (dead-letter it)."""

    def __init__(self, verdict: ErrorVerdict, refused: int, what: str) -> None:
        super().__init__(f"{refused} {what} were refused: {verdict.reason}")
        self.verdict, self.refused, self.what = verdict, refused, what

    def __reduce__(self) -> tuple[type[RefusedItemsError], tuple[ErrorVerdict, int, str]]:
        """Pickle with the verdict: Celery pickles a task's exception, and would otherwise fall back to
        the base class, so the dead letter of a write block outlasting the retry budget read as permanent."""
        return type(self), (self.verdict, self.refused, self.what)


def missing_privilege(reason: str) -> str | None:
    """The privilege a ``security_exception`` names ("no permissions for [indices:data/write/bulk[s]] and User ...")."""
    match = _PRIVILEGE.search(reason)
    return match.group(1) if match and match.group(1) else None


def _type_and_reason(error: Any) -> tuple[str, str]:
    """``(type, reason)`` of OpenSearch's ``error`` member: an object (with ``root_cause``) or a plain string."""
    if isinstance(error, dict):
        return str(error.get("type") or ""), str(error.get("reason") or error.get("type") or "")
    return "", str(error or "")


def classify_response(status: int, error: Any) -> ErrorVerdict:
    """Classify an error response (or a bulk item) from its HTTP ``status`` and OpenSearch's ``error`` member."""
    kind, reason = _type_and_reason(error)
    label = f"{status} {kind}".strip()
    if kind in PERMANENT_TYPES or status == 401:
        privilege = missing_privilege(reason)
        if privilege:
            fix = f"missing privilege {privilege}; grant it to the role of MMOS_OPENSEARCH_USER"
        elif status == 401:
            fix = "authentication failed; check MMOS_OPENSEARCH_USER and MMOS_OPENSEARCH_PASSWORD"
        else:
            fix = "the user lacks a privilege; check the roles of MMOS_OPENSEARCH_USER"
        return ErrorVerdict("denied", f"{fix} ({label}: {reason}); then `mm-opensearch jobs dead-letters --retry`")
    if kind in TRANSIENT_TYPES or status in TRANSIENT_STATUSES or (kind == _SHARDS_FAILED and status >= 500):
        return ErrorVerdict("transient", f"{label}: {reason}")
    return ErrorVerdict("permanent", f"{label}: {reason}")


def classify_error(error: BaseException) -> ErrorVerdict:
    """Classify an exception raised by a step: connection trouble and passing refusals are transient."""
    if isinstance(error, opensearchpy.ConnectionError | redis.ConnectionError | redis.TimeoutError):
        return ErrorVerdict("transient", f"{type(error).__name__}: {error}")  # refused, reset, timeout
    if isinstance(error, RefusedItemsError):
        return ErrorVerdict(error.verdict.kind, str(error))
    if isinstance(error, opensearchpy.TransportError) and isinstance(error.status_code, int):
        info = error.info if isinstance(error.info, dict) else {}
        return classify_response(error.status_code, info.get("error", error.error))
    return ErrorVerdict("permanent", f"{type(error).__name__}: {error}")


def is_transient(error: BaseException) -> bool:
    """Errors worth retrying: the cluster or Redis was unreachable, overloaded, restarting or write-blocked."""
    return classify_error(error).transient


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff within a retry count and a time budget (``MMOS_WORKER_RETRY_*``)."""

    max_retries: int
    budget_s: float
    backoff_max_s: float
    backoff_base_s: float = 1.0

    def delay(self, retries: int, elapsed_s: float, rng: random.Random | None = None) -> float | None:
        """Seconds to wait before retry number ``retries + 1``, or None when the count or the budget is spent.

        ``elapsed_s`` is the time since the batch first failed. The last wait is cut to what is
        left of the budget, so a batch is given up close to ``budget_s``, not a whole backoff later.
        """
        left = self.budget_s - elapsed_s
        if retries >= self.max_retries or left <= 0:
            return None
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2.0**retries)
        jittered = ceiling / 2 + (rng or random).uniform(0, ceiling / 2)
        return min(jittered, left)
