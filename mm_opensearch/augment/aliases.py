"""Atomic alias moves, rollback to the previous index, and its cleanup.

All aliases move in one ``_aliases`` request, which OpenSearch applies atomically: a reader of
the alias sees the old index or the new one, never neither. Alias properties (``is_write_index``,
filters, routing) travel with the alias.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from opensearchpy import OpenSearch

from mm_opensearch.augment.inspect import AUGMENT_META_KEY, inspect_index, resolve_index
from mm_opensearch.augment.sync import replay_changes
from mm_opensearch.catalog import CatalogSchema
from mm_opensearch.errors import ConfigError

__all__ = ["RollbackResult", "cleanup_previous", "record_previous", "rollback", "set_write_block", "swap_aliases"]

_ALIAS_PROPERTIES = ("filter", "index_routing", "search_routing", "is_write_index", "is_hidden")


def swap_aliases(client: OpenSearch, aliases: list[str], *, to_index: str, from_index: str | None = None) -> None:
    """Point ``aliases`` at ``to_index`` (away from ``from_index``, if given) in one atomic request."""
    current = client.indices.get_alias(index=from_index) if from_index else {}
    props: dict[str, dict[str, Any]] = (current.get(from_index) or {}).get("aliases", {}) if from_index else {}
    actions: list[dict[str, Any]] = []
    for alias in aliases:
        if from_index:
            actions.append({"remove": {"index": from_index, "alias": alias}})
        extra = {k: v for k, v in props.get(alias, {}).items() if k in _ALIAS_PROPERTIES}
        actions.append({"add": {"index": to_index, "alias": alias, **extra}})
    client.indices.update_aliases(body={"actions": actions})


def set_write_block(client: OpenSearch, index: str, *, blocked: bool) -> None:
    client.indices.put_settings(index=index, body={"index": {"blocks": {"write": blocked}}})


def record_previous(client: OpenSearch, index: str, previous: str, aliases: list[str]) -> None:
    """Remember in ``index``'s ``_meta`` which index it replaced, for rollback and cleanup."""
    mappings = client.indices.get_mapping(index=index)[index]["mappings"]
    entry = {"previous_index": previous, "aliases": aliases, "swapped_at": datetime.now(UTC).isoformat()}
    client.indices.put_mapping(index=index, body={"_meta": {**(mappings.get("_meta") or {}), AUGMENT_META_KEY: entry}})


@dataclass(frozen=True)
class RollbackResult:
    """The aliases moved from ``from_index`` back to ``to_index``; ``replayed`` products carried over."""

    from_index: str
    to_index: str
    aliases: list[str]
    replayed: int


def rollback(client: OpenSearch, name: str, schema: CatalogSchema) -> RollbackResult:
    """Move the aliases back to the index this one replaced, carrying over products written since."""
    report = inspect_index(client, name, schema)
    entry = report.augment
    if not entry or not client.indices.exists(index=entry["previous_index"]):
        msg = f"index '{report.index}' records no previous index to roll back to (or it was cleaned up)"
        raise ConfigError(msg)
    previous = entry["previous_index"]
    previous_fields = set(client.indices.get_mapping(index=previous)[previous]["mappings"].get("properties", {}))
    set_write_block(client, previous, blocked=False)
    set_write_block(client, report.index, blocked=True)
    try:
        replayed = replay_changes(
            client, report.index, previous, since=entry["swapped_at"], schema=schema, keep_fields=previous_fields
        )
        swap_aliases(client, entry["aliases"], to_index=previous, from_index=report.index)
    finally:
        set_write_block(client, report.index, blocked=False)
    return RollbackResult(report.index, previous, entry["aliases"], len(replayed))


def cleanup_previous(client: OpenSearch, name: str, schema: CatalogSchema) -> str:
    """Delete the index that ``name`` replaced (no alias may point to it); returns its name."""
    index = resolve_index(client, name)
    entry = inspect_index(client, index, schema).augment
    if not entry or not client.indices.exists(index=entry["previous_index"]):
        msg = f"index '{index}' records no previous index to delete"
        raise ConfigError(msg)
    previous = entry["previous_index"]
    still = client.indices.get_alias(index=previous)[previous].get("aliases", {})
    if still:
        msg = f"aliases {sorted(still)} still point to '{previous}'; roll back or swap them before cleanup"
        raise ConfigError(msg)
    client.indices.delete(index=previous)
    return previous
