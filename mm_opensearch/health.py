"""One log line about the cluster's health, for a worker or API starting against a cluster.

A yellow cluster answers every search but has replicas unassigned (one more lost node may lose
data or availability); a red one has primaries unassigned, so some searches fail or come back
partial. Neither stops a process from starting, but an operator reading the start-up log should
see it at once, with the numbers and where to look, rather than learn it from failed queries.
"""

from __future__ import annotations

import logging

from opensearchpy import AuthorizationException, OpenSearch, TransportError
from opensearchpy import ConnectionError as OSConnectionError

__all__ = ["health_message", "log_cluster_health"]

logger = logging.getLogger(__name__)

_MEANING = {
    "yellow": "every primary shard is assigned, some replicas are not: searches answer, but one more lost "
    "node may make data unavailable",
    "red": "some primary shards are unassigned: searches on their indices fail or return partial results "
    "and writes to them fail",
}


def health_message(health: dict) -> str | None:
    """The line for a ``_cluster/health`` answer, or None when it is green."""
    status = health.get("status")
    if status == "green":
        return None
    meaning = _MEANING.get(str(status), "the cluster did not report green, yellow or red")
    return (
        f"OpenSearch cluster '{health.get('cluster_name', '?')}' is {str(status).upper()}: "
        f"{health.get('number_of_nodes', '?')} nodes, {health.get('unassigned_shards', '?')} unassigned "
        f"and {health.get('initializing_shards', '?')} initializing shards; {meaning}. "
        "See GET _cluster/health?level=indices and GET _cluster/allocation/explain"
    )


def log_cluster_health(client: OpenSearch, *, log: logging.Logger = logger) -> str | None:
    """Log one WARNING when the cluster is yellow or red (an INFO line when green); return its status.

    Never raises: a process must start although the health is unknown. A user without the
    ``cluster:monitor/health`` privilege gets a line naming it; an unreachable cluster is left to
    the caller's own connection handling.
    """
    try:
        health = client.cluster.health(request_timeout=5)
    except AuthorizationException:
        log.info(
            "cluster health not checked: the OpenSearch user lacks the cluster:monitor/health privilege "
            "(granted by the cluster_monitor action group)"
        )
        return None
    except (OSConnectionError, TransportError) as e:
        log.warning("cluster health not checked: OpenSearch did not answer GET _cluster/health (%s)", e)
        return None
    message = health_message(health)
    if message is None:
        log.info("OpenSearch cluster '%s' is green: %s nodes", health.get("cluster_name"), health.get("number_of_nodes"))
    else:
        log.warning(message)
    return str(health.get("status"))
