"""What ``mm-opensearch demo`` may touch: the local dev node, its own indices and its own alias.

The demo creates indices and moves an alias. Run against a team's cluster with the alias
``products``, it used to repoint what their traffic reads (and carry their write flag over). Now it
serves its index under its own alias, moves an alias only when it points at demo indices alone,
and the CLI refuses a cluster other than the node ``mm-opensearch dev up`` starts unless told.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from opensearchpy import OpenSearch

from mm_opensearch.config import mask_url
from mm_opensearch.devservices.opensearch import DEV_CLUSTER_NAME
from mm_opensearch.errors import ConfigError

__all__ = ["DEMO_ALIAS", "DEMO_PREFIX", "check_demo_alias", "not_the_dev_node", "serve_demo_index"]

DEMO_PREFIX = "mmos-demo"  # every index the demo creates is named mmos-demo-<tower>-<model>
DEMO_ALIAS = "mmos-demo"
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def _is_dev_host(entry: str, dev_port: int) -> bool:
    parts = urlsplit(entry if "://" in entry else f"http://{entry}")
    port = parts.port or (443 if parts.scheme == "https" else 9200)  # opensearch-py's defaults
    return (parts.hostname or "").lower() in _LOCAL_HOSTS and port == dev_port


def not_the_dev_node(hosts: Sequence[str], *, dev_port: int, cluster_name: str | None = None) -> str | None:
    """Why ``hosts`` are not the local dev node (``None`` when they are).

    The dev node listens on 127.0.0.1/localhost at ``dev_port`` and is named ``mm-opensearch-dev``;
    a local port can also be a tunnel to another cluster, which only its name (when known) reveals.
    """
    where = ", ".join(mask_url(h) for h in hosts)
    named = f" (cluster '{cluster_name}')" if cluster_name else ""
    if not all(_is_dev_host(h, dev_port) for h in hosts):
        return f"MMOS_OPENSEARCH_HOSTS {where}{named} is not the local dev node (127.0.0.1:{dev_port}, MMOS_DEV_OPENSEARCH_PORT)"
    if cluster_name is not None and cluster_name != DEV_CLUSTER_NAME:
        return f"the cluster at {where} is '{cluster_name}', not the local dev node '{DEV_CLUSTER_NAME}' (`mm-opensearch dev up`)"
    return None


def _alias_targets(client: OpenSearch, alias: str) -> list[str]:
    return sorted(client.indices.get_alias(name=alias)) if client.indices.exists_alias(name=alias) else []


def check_demo_alias(client: OpenSearch, alias: str) -> None:
    """Refuse ``alias`` unless it is free or points at demo indices only (it is then the demo's to move)."""
    others = [index for index in _alias_targets(client, alias) if not index.startswith(f"{DEMO_PREFIX}-")]
    if others:
        msg = (
            f"alias '{alias}' points at {', '.join(others)}, not at a demo index; the demo never moves an alias it did "
            f"not make: pass another --index (default {DEMO_ALIAS})"
        )
        raise ConfigError(msg)
    if not client.indices.exists_alias(name=alias) and client.indices.exists(index=alias):
        msg = f"'{alias}' is an index, not an alias; pass another --index (default {DEMO_ALIAS})"
        raise ConfigError(msg)


def serve_demo_index(client: OpenSearch, alias: str, index: str) -> None:
    """Point ``alias`` at the demo ``index`` alone, in one atomic request; no write flag is set or carried."""
    check_demo_alias(client, alias)
    actions: list[dict[str, Any]] = [
        {"remove": {"index": current, "alias": alias}} for current in _alias_targets(client, alias) if current != index
    ]
    actions.append({"add": {"index": index, "alias": alias}})
    client.indices.update_aliases(body={"actions": actions})
