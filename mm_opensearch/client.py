"""Build an ``OpenSearch`` client from ``Settings``: basic auth, TLS, client certs or AWS SigV4."""

from __future__ import annotations

from typing import Any

from opensearchpy import OpenSearch, RequestsHttpConnection

from mm_opensearch.config import Settings
from mm_opensearch.errors import ConfigError

__all__ = ["TRANSIENT_STATUSES", "create_client", "create_serving_client"]

# HTTP statuses that mean "overloaded or restarting, retry later" (not "your request is wrong").
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})


def _aws_auth(settings: Settings) -> Any:
    """SigV4 for ``MMOS_OPENSEARCH_AWS_SERVICE`` (``es`` or ``aoss``); see :mod:`mm_opensearch.aws`."""
    from mm_opensearch.aws import SigV4Auth, default_credentials  # noqa: PLC0415 - only AWS deployments

    region = settings.opensearch_aws_region
    assert region  # noqa: S101 - the caller checked
    return SigV4Auth(default_credentials(), region, settings.opensearch_aws_service)


def create_client(settings: Settings, **overrides: Any) -> OpenSearch:
    """A client on every host of MMOS_OPENSEARCH_HOSTS (round robin), with retries on connection errors
    and timeouts that move to the next live host; ``overrides`` go to ``OpenSearch``."""
    kwargs: dict[str, Any] = {
        "hosts": settings.opensearch_hosts,
        "timeout": settings.opensearch_timeout_s,
        "max_retries": settings.opensearch_max_retries,
        "pool_maxsize": settings.opensearch_pool_maxsize,
        "retry_on_timeout": True,
        # a host that failed a connection is skipped for dead_timeout (doubling per failure): a retry
        # goes to another host, so a lost node costs one failed attempt, not one per request
        "dead_timeout": settings.opensearch_dead_timeout_s,
        "verify_certs": settings.opensearch_verify_certs,
        "ssl_show_warn": settings.opensearch_verify_certs,
    }
    if settings.opensearch_sniff:
        kwargs |= {"sniff_on_start": True, "sniff_on_connection_fail": True, "sniffer_timeout": 60,
                   "sniff_timeout": settings.connect_timeout_s}
        if all(host.startswith("https://") for host in settings.opensearch_hosts):
            kwargs["use_ssl"] = True  # a sniffed node comes back as host:port only; keep TLS for it
    if settings.opensearch_ca_certs:
        kwargs["ca_certs"] = str(settings.opensearch_ca_certs)
    if settings.opensearch_client_cert:
        kwargs["client_cert"] = str(settings.opensearch_client_cert)
        if settings.opensearch_client_key:
            kwargs["client_key"] = str(settings.opensearch_client_key)
    if settings.opensearch_aws_region:
        kwargs["http_auth"] = _aws_auth(settings)
        kwargs["connection_class"] = RequestsHttpConnection
    elif settings.opensearch_user:
        if settings.opensearch_password is None:
            msg = "MMOS_OPENSEARCH_USER is set but MMOS_OPENSEARCH_PASSWORD is not; set both or neither"
            raise ConfigError(msg)
        kwargs["http_auth"] = (settings.opensearch_user, settings.opensearch_password.get_secret_value())
    kwargs.update(overrides)
    return OpenSearch(**kwargs)


def create_serving_client(settings: Settings, **overrides: Any) -> OpenSearch:
    """A client for answering searches: ``MMOS_SEARCH_TIMEOUT_S`` per call, timeouts never retried.

    The workers' client waits ``opensearch_timeout_s`` (30 s) and retries timeouts
    ``opensearch_max_retries`` (3) times: against a stuck node that held a search about two minutes.
    Here a timeout is final (the caller answers 503), and a connection error (refused, reset) is
    retried once on each other configured host, or once on the only one (a pooled connection the
    node closed). No retries on 502-504 either: they would outlast the deadline.
    """
    kwargs: dict[str, Any] = {
        "timeout": settings.search_timeout_s,
        "max_retries": max(len(settings.opensearch_hosts) - 1, 1),
        "retry_on_timeout": False,
        "retry_on_status": (),
    }
    kwargs.update(overrides)
    return create_client(settings, **kwargs)
