"""Waiting out an unreachable Redis in a command that watches a job (``backfill``, ``jobs wait``).

The job store's client already retries for about 30 s (a Redis restart); a longer outage used to
end the command with a traceback, although the job's state is safe in Redis and the workers ride
it out. A watcher instead says that Redis is unreachable, where (host, port and database: never
the URL, which may carry a password), and for how long, and carries on once it answers again.
"""

from __future__ import annotations

import logging
import time

import redis

__all__ = ["REDIS_ERRORS", "RedisOutage", "redis_location"]

log = logging.getLogger(__name__)

REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError)


def redis_location(client: redis.Redis) -> str:
    """``host:port/db`` (or the socket path) of ``client``, without credentials."""
    kwargs = client.get_connection_kwargs()
    where = kwargs.get("path") or f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
    return f"{where}/{kwargs.get('db', 0)}"


class RedisOutage:
    """Logs each failed attempt while Redis is down, and once that it is back."""

    def __init__(self, client: redis.Redis) -> None:
        self.location = redis_location(client)
        self.since: float | None = None

    def failed(self, error: BaseException, attempt_started: float) -> None:
        """Note a call that began at ``attempt_started`` (``time.monotonic()``) and failed with ``error``."""
        self.since = attempt_started if self.since is None else self.since
        log.warning("Redis at %s is unreachable (%s: %s) for %.0f s; retrying, the job goes on when it answers",
                    self.location, type(error).__name__, error, time.monotonic() - self.since,
                    extra={"redis": self.location})

    def answered(self) -> None:
        if self.since is not None:
            log.warning("Redis at %s answers again after %.0f s", self.location, time.monotonic() - self.since,
                        extra={"redis": self.location})
            self.since = None
