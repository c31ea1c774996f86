"""How far an index is: vector coverage, errors, aliases and the index it replaced."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opensearchpy import OpenSearch

from mm_opensearch.augment.inspect import IndexReport, inspect_index
from mm_opensearch.catalog import CatalogSchema
from mm_opensearch.indexing.mappings import VECTOR_FIELDS

__all__ = ["IndexStatus", "index_status"]


@dataclass(frozen=True)
class IndexStatus:
    report: IndexReport
    with_vector: int
    with_error: int
    previous_index: str | None
    previous_exists: bool

    @property
    def coverage(self) -> float:
        return self.with_vector / self.report.docs if self.report.docs else 1.0


def _count(client: OpenSearch, index: str, query: dict[str, Any]) -> int:
    return int(client.count(index=index, body={"query": query})["count"])


def index_status(client: OpenSearch, name: str, schema: CatalogSchema) -> IndexStatus:
    """Vector coverage of ``name`` and whether a previous index is kept for rollback."""
    report = inspect_index(client, name, schema)
    has_vectors = report.model is not None
    with_vector = _count(client, report.index, {"exists": {"field": VECTOR_FIELDS["fused"]}}) if has_vectors else 0
    with_error = _count(client, report.index, {"exists": {"field": "mm_embedding_error"}}) if has_vectors else 0
    previous = (report.augment or {}).get("previous_index")
    exists = bool(previous) and bool(client.indices.exists(index=previous))
    return IndexStatus(report, with_vector, with_error, previous, exists)
