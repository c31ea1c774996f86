"""What an existing index has, and what adding vectors to it takes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from opensearchpy import NotFoundError, OpenSearch

from mm_opensearch.catalog import CatalogSchema
from mm_opensearch.errors import ConfigError
from mm_opensearch.indexing.mappings import ID_FIELD, VECTOR_FIELDS, read_model_meta

__all__ = ["AUGMENT_META_KEY", "IndexReport", "Strategy", "inspect_index", "resolve_index"]

AUGMENT_META_KEY = "mm_opensearch_augment"
Strategy = Literal["ready", "in_place", "reindex"]


@dataclass(frozen=True)
class IndexReport:
    """An index as found: aliases, size, k-NN setting, vector fields and catalog fields."""

    name: str  # as the user gave it (index or alias)
    index: str  # the concrete index
    aliases: dict[str, dict[str, Any]]
    docs: int
    knn: bool
    write_blocked: bool
    model: dict[str, Any] | None
    vector_fields: list[str]
    missing_text_fields: list[str]
    updated_at_field: str
    has_updated_at: bool
    settings: dict[str, Any]  # the index's own settings (nested, as ``get_settings`` returns them)
    mappings: dict[str, Any]
    augment: dict[str, Any] | None  # set on an index made by augment: previous index, swap time
    vectors_in_source: bool  # stored in _source (costs size and fetch time) unless k-NN derived source is on
    # Documents without mm_id: while there are any, searches read candidate ids from the stored _id
    # (slower than mm_id doc values, never _id field data); augment fills them.
    docs_without_id: int

    @property
    def strategy(self) -> Strategy:
        """``ready``: vectors exist; ``in_place``: k-NN is on, add fields; ``reindex``: copy to a new index."""
        if self.model is not None:
            return "ready"
        return "in_place" if self.knn else "reindex"


def resolve_index(client: OpenSearch, name: str) -> str:
    """The concrete index behind ``name`` (an index, or an alias of exactly one index)."""
    try:
        found = list(client.indices.get(index=name))
    except NotFoundError as e:
        msg = f"index or alias '{name}' does not exist; list them with `curl <host>/_cat/aliases,indices`"
        raise ConfigError(msg) from e
    if len(found) != 1:
        msg = f"'{name}' points to {len(found)} indices {sorted(found)}; name one index or a single-index alias"
        raise ConfigError(msg)
    return found[0]


_WITHOUT_ID = {"query": {"bool": {"must_not": [{"exists": {"field": ID_FIELD}}]}}}


def _truthy(value: Any) -> bool:
    return str(value).lower() == "true"


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys: OpenSearch nests them, but mixes in dotted keys where they clash."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def inspect_index(client: OpenSearch, name: str, schema: CatalogSchema) -> IndexReport:
    """Read an index's settings, mappings, aliases and size."""
    index = resolve_index(client, name)
    body = client.indices.get(index=index)[index]
    settings = body["settings"]["index"]
    mappings = body.get("mappings", {})
    properties = mappings.get("properties", {})
    return IndexReport(
        name=name,
        index=index,
        aliases=body.get("aliases", {}),
        docs=int(client.count(index=index)["count"]),
        knn=_truthy(settings.get("knn")),
        write_blocked=_truthy(settings.get("blocks", {}).get("write")),
        model=read_model_meta(mappings),
        vector_fields=[f for f in VECTOR_FIELDS.values() if f in properties],
        missing_text_fields=[f for f in schema.text_fields if f not in properties],
        updated_at_field=schema.updated_at_field,
        has_updated_at=schema.updated_at_field in properties,
        settings=settings,
        mappings=mappings,
        augment=(mappings.get("_meta") or {}).get(AUGMENT_META_KEY),
        vectors_in_source=not _truthy(_flat(settings).get("knn.derived_source.enabled")),
        docs_without_id=int(client.count(index=index, body=_WITHOUT_ID)["count"]),
    )
