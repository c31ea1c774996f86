"""Job state in Redis: progress, scan checkpoints, saved index settings and dead letters.

Redis is already there as the Celery broker, and keeping the state beside the queue means a
restarted backfill (or a restarted worker) resumes from it. A batch counts once however often it
is delivered: settling is a set insertion and the counters move only on the first one (Lua script,
atomic), so redelivery after a crash never double counts. Until it settles, a batch's message is
kept here too, with the time it was sent, because a broker restart can lose a message a worker
had already taken (:mod:`~mm_opensearch.backfill.recovery` sends such batches again).

What a job leaves is bounded. A job finishes when its last batch settles after the scan (or when
it is waited for); its keys then expire after ``retention_s``. The change feed's job is open
ended: it never finishes, so instead of sets of every batch it keeps counters, and remembers a
settled batch only for ``settled_window_s`` (longer than a redelivery can take); its keys expire
when the feed has been idle for ``retention_s``. Dead letters never expire.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from mm_opensearch.config import JOB_RETENTION_S, SETTLED_WINDOW_S, Settings
from mm_opensearch.redis_tls import redis_ssl_options

__all__ = ["JobStore", "JobCounts", "DeadLetter", "Overdue", "redis_client"]

log = logging.getLogger(__name__)

COUNTERS = ("written", "skipped", "missing", "failed", "dead")

# A job's keys, in the order every script gets them as KEYS.
_PARTS = ("enqueued", "settled", "recent", "in_flight", "in_flight_at", "in_flight_resent", "cursors", "errors")

# Shared by the scripts. KEYS: job hash, enqueued set, settled set, recently settled (open-ended jobs:
# batch -> settle time), in-flight messages, in-flight send times, in-flight resend counts, cursors, errors.
_LIB = """
local function now() local t = redis.call('TIME') return t[1] + t[2] / 1e6 end
local function open_ended() return redis.call('HGET', KEYS[1], 'open_ended') == '1' end
-- jobs recorded before the batch counters were kept in the hash counted their sets
local function counters_from_sets()
  if redis.call('HEXISTS', KEYS[1], 'batches_enqueued') == 0 then
    redis.call('HSET', KEYS[1], 'batches_enqueued', redis.call('SCARD', KEYS[2]),
               'batches_settled', redis.call('SCARD', KEYS[3]))
  end
end
-- every key of the job expires after ms milliseconds, or (nil) never
local function keep(ms)
  for i = 1, #KEYS do
    if ms then redis.call('PEXPIRE', KEYS[i], ms) else redis.call('PERSIST', KEYS[i]) end
  end
end
local function finish(ms)
  redis.call('HSET', KEYS[1], 'status', 'finished', 'finished_at', now())
  keep(ms)
end
-- a job of fixed size whose scan is done and whose every batch has settled has finished
local function finish_if_settled(ms)
  if not open_ended() and redis.call('HGET', KEYS[1], 'status') == 'scanned'
      and tonumber(redis.call('HGET', KEYS[1], 'batches_settled'))
          >= tonumber(redis.call('HGET', KEYS[1], 'batches_enqueued')) then
    finish(ms)
  end
end
"""

# ARGV: batch id, counters as name/value pairs..., retention (ms), settled window (s). The send time of
# the newest settled batch is kept in the job hash: an older batch still unsettled has been overtaken by
# the queue (see recovery.StallGuard). Returns 1 on the first settle, 0 on a redelivery, -1 for a job
# that is gone (expired or deleted: nothing is recreated).
_SETTLE = _LIB + """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
counters_from_sets()
local retention, window = ARGV[#ARGV - 1], tonumber(ARGV[#ARGV])
local sent = redis.call('ZSCORE', KEYS[6], ARGV[1])
if sent then
  if tonumber(sent) > tonumber(redis.call('HGET', KEYS[1], 'settled_sent_at') or '0') then
    redis.call('HSET', KEYS[1], 'settled_sent_at', sent)
  end
  redis.call('ZREM', KEYS[6], ARGV[1])
  redis.call('HDEL', KEYS[5], ARGV[1])
  redis.call('HDEL', KEYS[7], ARGV[1])
end
local first
if open_ended() then
  local t = now()
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', t - window)
  first = redis.call('ZADD', KEYS[4], 'NX', t, ARGV[1]) == 1
else
  first = redis.call('SADD', KEYS[3], ARGV[1]) == 1
end
if first then
  redis.call('HINCRBY', KEYS[1], 'batches_settled', 1)
  for i = 2, #ARGV - 2, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
if open_ended() then keep(retention) else finish_if_settled(retention) end
if first then return 1 end
return 0
"""

# ARGV: batch id, its message ('' for none), retention (ms). Times are the Redis server's, so producers
# and watchers on other machines agree on them. A finished job that takes a batch again (a retried dead
# letter) is waiting on workers again and keeps its keys until it finishes anew.
_ENQUEUE = _LIB + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
counters_from_sets()
local new
if open_ended() then  -- no set of every batch: new unless in flight or recently settled
  new = not redis.call('ZSCORE', KEYS[6], ARGV[1]) and not redis.call('ZSCORE', KEYS[4], ARGV[1])
else
  new = redis.call('SADD', KEYS[2], ARGV[1]) == 1
end
if new then redis.call('HINCRBY', KEYS[1], 'batches_enqueued', 1) end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[5], ARGV[1], ARGV[2])
  redis.call('ZADD', KEYS[6], now(), ARGV[1])
end
if redis.call('HGET', KEYS[1], 'status') == 'finished' then redis.call('HSET', KEYS[1], 'status', 'scanned') end
if open_ended() then keep(ARGV[3]) else keep(nil) end
return 1
"""

# ARGV: retention (ms). The scan has sent every batch; the job finishes now if they have all settled.
_SCANNED = _LIB + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
counters_from_sets()
redis.call('HSET', KEYS[1], 'status', 'scanned')
finish_if_settled(ARGV[1])
return 1
"""

# ARGV: retention (ms).
_FINISH = _LIB + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
finish(ARGV[1])
return 1
"""

# ARGV: retention (ms). From now on the job keeps counters, not sets of its batches (dropped here).
_OPEN_ENDED = _LIB + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
counters_from_sets()
redis.call('HSET', KEYS[1], 'open_ended', '1')
redis.call('DEL', KEYS[2], KEYS[3])
keep(ARGV[1])
return 1
"""

# KEYS: job hash, errors. ARGV: how many to keep, errors... A list written after the job finished
# expires with it; a job that is gone gets none (it would never expire).
_ERRORS = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 then return 0 end
for i = 2, #ARGV do redis.call('LPUSH', KEYS[2], ARGV[i]) end
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[1]) - 1)
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
"""

# KEYS: in-flight send times, in-flight resend counts. Only a batch that has not settled meanwhile.
_RESENT = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[1], t[1] + t[2] / 1e6, ARGV[1])
  return redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
end
return 0
"""

# KEYS: in-flight send times. Batches found still queued: their clock restarts (the resend count does not
# move), so the broker is looked at again only after another wait, not on every poll.
_POSTPONE = """
local t = redis.call('TIME')
for i = 1, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then redis.call('ZADD', KEYS[1], t[1] + t[2] / 1e6, ARGV[i]) end
end
"""

# KEYS: dead letters, their order, the letter's job hash. ARGV: letter id, its product count. The
# products leave the job's dead count (they count again when the retry settles), never below zero
# (a job restarted meanwhile began its counts afresh) and never for a job deleted meanwhile.
_RETRACT_DEAD = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[3]) == 1 then
  local take = math.min(tonumber(redis.call('HGET', KEYS[3], 'dead') or '0'), tonumber(ARGV[2]))
  if take > 0 then redis.call('HINCRBY', KEYS[3], 'dead', -take) end  -- Redis refuses the increment '-0'
end
return 1
"""


def redis_client(settings: Settings) -> redis.Redis:
    """A client that rides out a Redis restart: connection errors are retried for ~30 s."""
    url = settings.redis_url.get_secret_value()
    return redis.Redis.from_url(
        url,
        **redis_ssl_options(url, settings.redis_ca_file),
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=20),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=10,
    )


@dataclass(frozen=True)
class JobCounts:
    """Progress of one job: batches enqueued/settled and product counters."""

    job_id: str
    index: str
    status: str
    total: int
    scanned: int
    batches_enqueued: int
    batches_settled: int
    written: int
    skipped: int
    missing: int
    failed: int
    dead: int
    started_at: float
    settled_sent_at: float = 0.0  # when the newest settled batch was sent (Redis server time)
    expires_in_s: float | None = None  # a finished (or idle open-ended) job's record is deleted then

    @property
    def settled(self) -> bool:
        """The scan has finished and every batch it enqueued has been written or dead-lettered."""
        return self.status in ("scanned", "finished") and self.batches_settled >= self.batches_enqueued


@dataclass(frozen=True)
class Overdue:
    """An unsettled batch due to be sent again: its message and how often it was resent already."""

    batch_id: str
    message: dict[str, Any]
    resent: int


@dataclass(frozen=True)
class DeadLetter:
    """A batch that failed for good: what it was, why, and how often it was tried."""

    id: str
    kind: str  # "embed" or "write"
    payload: dict[str, Any]
    reason: str
    failed_at: float


class JobStore:
    """Typed access to the ``mmos:*`` keys; every method is one or two Redis round trips.

    ``retention_s``: how long a finished job (or an idle open-ended one, or an unpolled change-feed
    checkpoint) is kept. ``settled_window_s``: how long an open-ended job remembers a settled batch
    to count a redelivery once; it must exceed the broker's visibility timeout.
    """

    def __init__(self, client: redis.Redis, *, prefix: str = "mmos", retention_s: float = JOB_RETENTION_S,
                 settled_window_s: float = SETTLED_WINDOW_S) -> None:
        self.redis = client
        self.prefix = prefix
        self.retention_ms = max(1, int(retention_s * 1000))
        self.settled_window_s = settled_window_s
        self._settle = client.register_script(_SETTLE)
        self._enqueue = client.register_script(_ENQUEUE)
        self._scanned = client.register_script(_SCANNED)
        self._finish = client.register_script(_FINISH)
        self._open_ended = client.register_script(_OPEN_ENDED)
        self._errors = client.register_script(_ERRORS)
        self._resent = client.register_script(_RESENT)
        self._postpone = client.register_script(_POSTPONE)
        self._retract_dead = client.register_script(_RETRACT_DEAD)

    @classmethod
    def from_settings(cls, settings: Settings) -> JobStore:
        """The store on ``MMOS_REDIS_URL`` with ``MMOS_JOB_RETENTION_S`` and ``MMOS_JOB_SETTLED_WINDOW_S``."""
        return cls(redis_client(settings), retention_s=settings.job_retention_s,
                   settled_window_s=settings.job_settled_window_s)

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _job_keys(self, job_id: str) -> list[str]:
        """The job hash and its parts, in the order the scripts expect."""
        return [self._key("job", job_id), *(self._key("job", job_id, part) for part in _PARTS)]

    # --- jobs -------------------------------------------------------------------------------

    def start_job(self, job_id: str, index: str, *, total: int = 0, resume: bool = True) -> bool:
        """Create the job, or keep an unfinished one when ``resume``; True when it was resumed."""
        meta = self._key("job", job_id)
        status = self.redis.hget(meta, "status")
        if resume and status is not None and status.decode() != "finished":
            self.redis.hset(meta, mapping={"total": total, "status": "running"})
            return True
        self.redis.delete(*self._job_keys(job_id))
        fields: dict[str, Any] = {"index": index, "status": "running", "total": total, "scanned": 0,
                                  "started_at": time.time(), "batches_enqueued": 0, "batches_settled": 0}
        fields.update(dict.fromkeys(COUNTERS, 0))
        self.redis.hset(meta, mapping=fields)
        return False

    def ensure_job(self, job_id: str, index: str, *, open_ended: bool = False) -> None:
        """Create a job that takes batches as they come (no scan) unless it exists.

        ``open_ended``: it never finishes (the change feed), so it keeps counters instead of sets of
        its batches and forgets settled batches after the settled window (see the module docstring).
        """
        meta = self._key("job", job_id)
        if not self.redis.exists(meta):
            self.redis.hset(meta, mapping={"index": index, "status": "scanned", "total": 0, "scanned": 0,
                                           "started_at": time.time(), "batches_enqueued": 0, "batches_settled": 0,
                                           **dict.fromkeys(COUNTERS, 0)})
        if open_ended:
            self._open_ended(keys=self._job_keys(job_id), args=[self.retention_ms])

    def set_status(self, job_id: str, status: str) -> None:
        self.redis.hset(self._key("job", job_id), "status", status)

    def mark_scanned(self, job_id: str) -> None:
        """Every batch of the job has been sent; it finishes now if they have all settled already."""
        self._scanned(keys=self._job_keys(job_id), args=[self.retention_ms])

    def finish(self, job_id: str) -> None:
        """Mark the job finished; its keys expire after the retention."""
        self._finish(keys=self._job_keys(job_id), args=[self.retention_ms])

    def add_scanned(self, job_id: str, n: int) -> None:
        self.redis.hincrby(self._key("job", job_id), "scanned", n)

    def _in_flight_keys(self, job_id: str) -> list[str]:
        return [self._key("job", job_id, part) for part in ("in_flight", "in_flight_at", "in_flight_resent")]

    def mark_enqueued(self, job_id: str, batch_id: str, message: dict[str, Any] | None = None) -> None:
        """Count a batch as enqueued; its ``message`` is kept (for :meth:`overdue`) until it settles.

        A job that is gone (expired, deleted, never created) gets no keys: the batch still runs,
        uncounted, rather than leaving records that would never expire.
        """
        args = [batch_id, json.dumps(message) if message is not None else "", self.retention_ms]
        if not self._enqueue(keys=self._job_keys(job_id), args=args):
            log.warning("job %s does not exist (expired after MMOS_JOB_RETENTION_S, or deleted): batch %s runs "
                        "without being counted", job_id, batch_id, extra={"job": job_id, "batch": batch_id})

    def overdue(self, job_id: str, *, after_s: float, sent_before: float | None = None) -> list[Overdue]:
        """Unsettled batches sent more than ``after_s * 2**resent`` seconds ago (and before ``sent_before``)."""
        messages, sent_at, resent = self._in_flight_keys(job_id)
        seconds, micros = self.redis.time()
        now = seconds + micros / 1e6
        cutoff = now - after_s if sent_before is None else min(now - after_s, sent_before)
        candidates = self.redis.zrange(sent_at, "-inf", f"({cutoff}", byscore=True, withscores=True)
        if not candidates:
            return []
        ids = [batch_id for batch_id, _ in candidates]
        counts = [int(n or 0) for n in self.redis.hmget(resent, ids)]
        due = [(batch_id, n) for (batch_id, sent), n in zip(candidates, counts, strict=True)
               if now - sent > after_s * 2**n]
        if not due:
            return []
        raws = self.redis.hmget(messages, [batch_id for batch_id, _ in due])
        return [Overdue(batch_id.decode(), json.loads(raw), n) for (batch_id, n), raw in zip(due, raws, strict=True)
                if raw is not None]

    def in_flight(self, job_id: str) -> list[str]:
        """Ids of the job's batches that were sent and have not settled, oldest send first."""
        return [raw.decode() for raw in self.redis.zrange(self._in_flight_keys(job_id)[1], 0, -1)]

    def oldest_in_flight(self, job_id: str) -> tuple[str, float] | None:
        """The unsettled batch sent longest ago and how many seconds ago, for ``jobs status``.

        A resend, or finding the batch still queued (:meth:`postpone`), restarts its clock.
        """
        oldest = self.redis.zrange(self._in_flight_keys(job_id)[1], 0, 0, withscores=True)
        if not oldest:
            return None
        seconds, micros = self.redis.time()
        (batch_id, sent_at), = oldest
        return batch_id.decode(), seconds + micros / 1e6 - sent_at

    def mark_resent(self, job_id: str, batch_id: str) -> None:
        """Restart the batch's clock and count the resend, unless it settled meanwhile."""
        self._resent(keys=self._in_flight_keys(job_id)[1:], args=[batch_id])

    def postpone(self, job_id: str, batch_ids: list[str]) -> None:
        """Restart the clock of batches found still waiting in the broker (not a resend)."""
        if batch_ids:
            self._postpone(keys=self._in_flight_keys(job_id)[1:2], args=batch_ids)

    def settle(self, job_id: str, batch_id: str, **counts: int) -> bool:
        """Count a finished batch once; False when it had been counted before (a redelivery)."""
        unknown = set(counts) - set(COUNTERS)
        if unknown:
            msg = f"unknown counters {sorted(unknown)}; use {COUNTERS}"
            raise ValueError(msg)
        args: list[Any] = [batch_id]
        for name, value in counts.items():
            args += [name, value]
        args += [self.retention_ms, self.settled_window_s]
        return self._settle(keys=self._job_keys(job_id), args=args) == 1

    def counts(self, job_id: str) -> JobCounts | None:
        """The job's progress; None when it does not exist (never did, or expired after finishing)."""
        pipe = self.redis.pipeline()
        pipe.hgetall(self._key("job", job_id))
        pipe.scard(self._key("job", job_id, "enqueued"))
        pipe.scard(self._key("job", job_id, "settled"))
        pipe.pttl(self._key("job", job_id))
        meta, enqueued, settled, ttl_ms = pipe.execute()
        if not meta:
            return None
        data = {k.decode(): v.decode() for k, v in meta.items()}
        return JobCounts(
            job_id=job_id,
            index=data["index"],
            status=data["status"],
            total=int(data.get("total", 0)),
            scanned=int(data.get("scanned", 0)),
            batches_enqueued=int(data.get("batches_enqueued", enqueued)),  # older records: the sets' sizes
            batches_settled=int(data.get("batches_settled", settled)),
            started_at=float(data.get("started_at", 0)),
            settled_sent_at=float(data.get("settled_sent_at", 0)),
            expires_in_s=ttl_ms / 1000 if ttl_ms >= 0 else None,
            **{name: int(data.get(name, 0)) for name in COUNTERS},
        )

    def record_errors(self, job_id: str, errors: list[dict[str, Any]], *, keep: int = 10_000) -> None:
        """Per-product errors (refused writes, unencodable products), newest first."""
        if not errors:
            return
        keys = [self._key("job", job_id), self._key("job", job_id, "errors")]
        self._errors(keys=keys, args=[keep, *(json.dumps(error) for error in errors)])

    def errors(self, job_id: str, limit: int = 100) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.redis.lrange(self._key("job", job_id, "errors"), 0, limit - 1)]

    # --- scan checkpoints -------------------------------------------------------------------

    def save_cursor(self, job_id: str, slice_id: int, after: list[Any] | None, *, done: bool = False) -> None:
        value = json.dumps({"after": after, "done": done})
        self.redis.hset(self._key("job", job_id, "cursors"), str(slice_id), value)

    def cursor(self, job_id: str, slice_id: int) -> tuple[list[Any] | None, bool]:
        raw = self.redis.hget(self._key("job", job_id, "cursors"), str(slice_id))
        if raw is None:
            return None, False
        data = json.loads(raw)
        return data["after"], bool(data["done"])

    # --- index settings changed for a bulk load (restored even after a crash) --------------

    def save_index_settings(self, index: str, original: dict[str, Any]) -> dict[str, Any]:
        """Remember ``original`` unless an earlier (crashed) run already did; returns the kept one."""
        key = self._key("tuning", index)
        self.redis.set(key, json.dumps(original), nx=True)
        return json.loads(self.redis.get(key))

    def saved_index_settings(self, index: str) -> dict[str, Any] | None:
        raw = self.redis.get(self._key("tuning", index))
        return json.loads(raw) if raw is not None else None

    def forget_index_settings(self, index: str) -> None:
        self.redis.delete(self._key("tuning", index))

    # --- change feed --------------------------------------------------------------------------

    def change_checkpoint(self, index: str) -> tuple[str | None, dict[str, str]]:
        """The feed's newest ``updated_at`` seen, and the products it enqueued near it (id -> stamp)."""
        pipe = self.redis.pipeline()
        pipe.get(self._key("changes", index))
        pipe.hgetall(self._key("changes", index, "seen"))
        raw, seen = pipe.execute()
        return (raw.decode() if raw is not None else None), {k.decode(): v.decode() for k, v in seen.items()}

    def set_change_checkpoint(self, index: str, value: str, seen: dict[str, str] | None = None) -> None:
        """Save the feed's position; it expires when the feed has not polled for the retention."""
        pipe = self.redis.pipeline()
        pipe.set(self._key("changes", index), value, px=self.retention_ms)
        pipe.delete(self._key("changes", index, "seen"))
        if seen:
            pipe.hset(self._key("changes", index, "seen"), mapping=seen)
            pipe.pexpire(self._key("changes", index, "seen"), self.retention_ms)
        pipe.execute()

    # --- dead letters -------------------------------------------------------------------------

    def add_dead_letter(self, kind: str, payload: dict[str, Any], reason: str) -> str:
        letter_id = uuid.uuid4().hex[:12]
        record = {"kind": kind, "payload": payload, "reason": reason, "failed_at": time.time()}
        pipe = self.redis.pipeline()
        pipe.hset(self._key("dead"), letter_id, json.dumps(record))
        pipe.zadd(self._key("dead", "order"), {letter_id: record["failed_at"]})
        pipe.execute()
        return letter_id

    def dead_letters(self) -> list[DeadLetter]:
        ids = [raw.decode() for raw in self.redis.zrange(self._key("dead", "order"), 0, -1)]
        records = self.redis.hmget(self._key("dead"), ids) if ids else []
        return [
            DeadLetter(id=letter_id, **json.loads(raw))
            for letter_id, raw in zip(ids, records, strict=True)
            if raw is not None
        ]

    def retract_dead_letter(self, letter_id: str, job_id: str, products: int) -> bool:
        """Remove a dead letter that is being retried and take its products out of its job's dead count.

        False when it was gone already (retried or deleted by someone else), so nothing is uncounted twice.
        """
        keys = [self._key("dead"), self._key("dead", "order"), self._key("job", job_id)]
        return bool(self._retract_dead(keys=keys, args=[letter_id, products]))

    def remove_dead_letter(self, letter_id: str) -> None:
        pipe = self.redis.pipeline()
        pipe.hdel(self._key("dead"), letter_id)
        pipe.zrem(self._key("dead", "order"), letter_id)
        pipe.execute()
