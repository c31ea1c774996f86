"""Fail in seconds, with one line naming the setting, when OpenSearch or Redis cannot be reached.

The clients built for long runs retry connection errors for tens of seconds (a worker or a backfill
rides out a restart), so a command started against a wrong URL used to hang, then print a
traceback. A command asks once first, with ``Settings.connect_timeout_s`` and no retries, and only
then builds the patient client. Messages show URLs with their credentials masked.
"""

from __future__ import annotations

import redis
from opensearchpy import AuthenticationException, OpenSearch, TransportError
from opensearchpy import ConnectionError as OSConnectionError
from opensearchpy import ConnectionTimeout as OSConnectionTimeout
from opensearchpy import SSLError as OSSSLError
from redis.backoff import NoBackoff
from redis.retry import Retry

from mm_opensearch.backfill.store import redis_client
from mm_opensearch.client import create_client
from mm_opensearch.config import Settings, mask_url
from mm_opensearch.errors import ConfigError, RedisUnavailableError, SearchUnavailableError
from mm_opensearch.redis_tls import redis_ssl_options

__all__ = [
    "check_opensearch",
    "check_redis",
    "connect_opensearch",
    "connect_redis",
    "opensearch_error_message",
    "redis_error_message",
]

# Substrings of socket errors (as urllib3 and redis-py word them) and what they mean to a user.
_CAUSES = (
    ("refused", "connection refused (nothing listens on that port)"),
    ("name or service not known", "host name not found"),
    ("nodename nor servname", "host name not found"),
    ("temporary failure in name resolution", "host name not found"),
    ("no address associated", "host name not found"),
    ("network is unreachable", "network unreachable"),
    ("no route to host", "no route to host"),
    ("timed out", "no answer in time"),
    ("timeout", "no answer in time"),
    ("reset by peer", "the connection was reset (is it the HTTP port?)"),
    ("remotedisconnected", "the server closed the connection without answering (is it the HTTP port? "
     "a node with TLS on needs https:// in MMOS_OPENSEARCH_HOSTS)"),
    ("badstatusline", "the server did not answer HTTP (is it the HTTP port?)"),
    ("protocolerror", "the server did not answer HTTP (is it the HTTP port?)"),
)


# Substrings of TLS errors (OpenSSL's words, through urllib3) and what to change.
_TLS_CAUSES = (
    ("certificate_verify_failed", "the node's certificate is not signed by a CA this client trusts; set "
     "MMOS_OPENSEARCH_CA_CERTS to the cluster's CA file (the dev node's: `mm-opensearch dev up --secure` prints it)"),
    ("hostname mismatch", "the node's certificate is not for this host name; use the name it was issued for"),
    ("wrong_version_number", "the node does not speak TLS on this port; use http:// in MMOS_OPENSEARCH_HOSTS"),
    ("wrong version number", "the node does not speak TLS on this port; use http:// in MMOS_OPENSEARCH_HOSTS"),
    ("certificate required", "the node wants a client certificate; set MMOS_OPENSEARCH_CLIENT_CERT and _KEY"),
)


def _tls_cause(error: BaseException) -> str:
    text = f"{error!r} {error} {getattr(error, 'info', '')!r}".lower()
    for needle, meaning in _TLS_CAUSES:
        if needle in text:
            return f"TLS failed: {meaning}"
    return "TLS failed (http vs https? check MMOS_OPENSEARCH_CA_CERTS or MMOS_OPENSEARCH_VERIFY_CERTS)"


def _cause(error: BaseException) -> str:
    text = f"{type(error).__name__} {error!r} {error}".lower()
    for needle, meaning in _CAUSES:
        if needle in text:
            return meaning
    return type(error).__name__


def opensearch_error_message(hosts: list[str], error: BaseException) -> str:
    """One line for a connection error of opensearch-py: which hosts, why, and the fix."""
    where = ", ".join(mask_url(h) for h in hosts)
    if isinstance(error, OSSSLError):
        cause = _tls_cause(error)
    elif isinstance(error, OSConnectionTimeout):
        cause = "no answer in time"
    else:
        cause = _cause(getattr(error, "info", None) or error)
    return (
        f"cannot reach OpenSearch at {where} (MMOS_OPENSEARCH_HOSTS): {cause}; check the URL and port, "
        "or start the local node with `mm-opensearch dev up`"
    )


def redis_error_message(url: str, error: BaseException) -> str:
    """One line for a redis-py error at connect time: which URL (masked), why, and the fix."""
    if isinstance(error, redis.AuthenticationError):
        cause = "the credentials were refused (a password goes in the URL: rediss://:PASSWORD@host:port/0)"
    elif isinstance(error, redis.ResponseError):
        cause = f"Redis refused the connection settings ({str(error)[:120]})"
    elif "certificate_verify_failed" in str(error).lower():
        cause = ("TLS failed: the server's certificate is not signed by a CA this client trusts; set "
                 "MMOS_REDIS_CA_FILE to the CA file that signed it")
    elif "wrong version number" in str(error).lower() or "wrong_version_number" in str(error).lower():
        cause = "TLS failed: the server does not speak TLS on this port; use redis:// in MMOS_REDIS_URL"
    else:
        cause = _cause(error)
    return (
        f"cannot reach Redis at {mask_url(url)} (MMOS_REDIS_URL): {cause}; check the URL, "
        "or start the local Redis with `mm-opensearch dev up`"
    )


def check_opensearch(settings: Settings) -> None:
    """Raise unless the cluster answers a first request within ``connect_timeout_s`` (no retries).

    Any HTTP answer counts as reachable (a 403 on ``GET /`` is a missing monitor privilege, not a
    wrong URL) except 401, which is wrong credentials.
    """
    probe = create_client(settings, max_retries=0, timeout=settings.connect_timeout_s, retry_on_timeout=False)
    try:
        probe.info()
    except OSConnectionError as e:  # also timeouts and TLS errors
        raise SearchUnavailableError(opensearch_error_message(settings.opensearch_hosts, e)) from e
    except AuthenticationException as e:
        where = ", ".join(mask_url(h) for h in settings.opensearch_hosts)
        msg = f"OpenSearch at {where} refused the credentials (401); check MMOS_OPENSEARCH_USER and MMOS_OPENSEARCH_PASSWORD"
        raise ConfigError(msg) from e
    except TransportError:
        pass
    finally:
        probe.close()


def connect_opensearch(settings: Settings) -> OpenSearch:
    """The usual (patient) client, once :func:`check_opensearch` passed."""
    check_opensearch(settings)
    return create_client(settings)


def check_redis(settings: Settings) -> None:
    """Raise unless Redis answers a ping within ``connect_timeout_s`` (no retries)."""
    url = settings.redis_url.get_secret_value()
    timeout = settings.connect_timeout_s
    try:
        probe = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout,
                                     retry=Retry(NoBackoff(), 0), retry_on_error=[],
                                     **redis_ssl_options(url, settings.redis_ca_file))
    except ValueError as e:  # a URL redis-py cannot parse (port not a number, ...)
        msg = f"MMOS_REDIS_URL '{mask_url(url)}' is malformed; write redis://host:6379/0"
        raise ConfigError(msg) from e
    try:
        probe.ping()
    except redis.RedisError as e:
        raise RedisUnavailableError(redis_error_message(url, e)) from e
    finally:
        probe.close()


def connect_redis(settings: Settings) -> redis.Redis:
    """The usual (patient) Redis client, once :func:`check_redis` passed."""
    check_redis(settings)
    return redis_client(settings)
