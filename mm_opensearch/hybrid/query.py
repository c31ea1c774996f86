"""Pure request builders: the lexical leg, the k-NN leg, the neural-search ``hybrid`` body, a page of documents.

Every function returns plain dicts (tests compare them for equality) and does no I/O. Both legs
get the same filter clauses: the lexical leg in a ``bool.filter``, the k-NN leg as lucene
*efficient filtering* (``filter`` inside ``knn``), which finds the k nearest among the documents
that pass instead of filtering k neighbours afterwards (and so never returns fewer than k when
enough documents match). The lexical leg is a ``multi_match`` over the configured fields and
boosts: user text never reaches ``query_string`` syntax.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from mm_opensearch.indexing.mappings import ID_FIELD, VECTOR_FIELDS

__all__ = [
    "VectorKind",
    "SOURCE_EXCLUDES",
    "CANDIDATES_ONLY",
    "CANDIDATES_BY_STORED_ID",
    "candidates_only",
    "candidate_id",
    "ids_by_seq_no_request",
    "lexical_query",
    "knn_query",
    "leg_request",
    "hybrid_request",
    "page_request",
]

VectorKind = Literal["fused", "text", "image"]
SOURCE_EXCLUDES = sorted(VECTOR_FIELDS.values())  # vectors are large and of no use to a caller

# Fusion candidates need ids and scores only, and even the ``_id`` *stored field* is costly: Lucene
# keeps it in the compressed block that holds each document's whole ``_source`` (vectors included),
# so fetching 100 candidates decompressed about a hundred blocks, most of a hybrid query's time
# (docs/measurements.md, "Candidate ids"). So ids are read from doc values, of ``mm_id`` (the ``_id`` again, written
# with every vector): ``_id`` itself has none, and reading it through field data is deprecated,
# built on the heap per segment, and refused where ``indices.id_field_data.enabled`` is false.
CANDIDATES_ONLY: dict[str, Any] = {
    "_source": False,
    "stored_fields": "_none_",
    "docvalue_fields": [ID_FIELD],
    "track_total_hits": False,
}
# For an index where some documents lack ``mm_id`` (augmented in place, or written by the
# application since) and which spans several shards: the stored ``_id``, without ``_source``. On an
# index augmented in place (vectors in ``_source``) this is the slow read above: a single-shard
# index looks up only the hits without ``mm_id``, by their ``_seq_no`` (doc values, unique among a
# shard's live documents), see :func:`ids_by_seq_no_request`.
CANDIDATES_BY_STORED_ID: dict[str, Any] = {"_source": False, "track_total_hits": False}


def candidates_only(id_doc_values: bool = True) -> dict[str, Any]:
    """The body entries that make a search return ids and scores only (see :data:`CANDIDATES_ONLY`)."""
    return dict(CANDIDATES_ONLY if id_doc_values else CANDIDATES_BY_STORED_ID)


def candidate_id(hit: dict[str, Any]) -> str | None:
    """The document id of a candidate hit: its ``mm_id`` doc value, else its ``_id``.

    None for a hit fetched by doc values whose document has no ``mm_id``: the caller asks again
    with ``id_doc_values=False``.
    """
    values = hit.get("fields", {}).get(ID_FIELD)
    if values:
        return str(values[0])
    return str(hit["_id"]) if "_id" in hit else None


def ids_by_seq_no_request(seq_nos: Sequence[int]) -> dict[str, Any]:
    """A search body that returns the ``_id`` (stored) of the documents of one shard with these ``_seq_no``."""
    return {
        "query": {"terms": {"_seq_no": list(seq_nos)}},
        "size": len(seq_nos),
        "_source": False,
        "seq_no_primary_term": True,
        "track_total_hits": False,
    }


def lexical_query(
    text: str, fields: Sequence[str], filters: Sequence[dict[str, Any]], *, match_type: str = "best_fields"
) -> dict[str, Any]:
    """BM25 over ``fields`` (``name^boost`` strings), restricted by ``filters``.

    ``match_type`` is the ``multi_match`` type; ``cross_fields`` scores the fields as one bag of
    words, which suits queries that mix facets (brand + colour + type) spread over several fields.
    """
    match = {"multi_match": {"query": text, "fields": list(fields), "type": match_type}}
    return {"bool": {"must": [match], "filter": list(filters)}}


def knn_query(
    kind: VectorKind,
    vector: np.ndarray | Sequence[float],
    k: int,
    filters: Sequence[dict[str, Any]],
    *,
    ef_search: int | None = None,
) -> dict[str, Any]:
    """The ``k`` nearest documents on the ``kind`` vector field among those passing ``filters``.

    ``ef_search`` (``MMOS_KNN_EF_SEARCH``): the HNSW candidate list of this search; None leaves the
    engine's default.
    """
    body: dict[str, Any] = {"vector": np.asarray(vector, dtype=np.float64).tolist(), "k": k}
    if ef_search is not None:
        body["method_parameters"] = {"ef_search": ef_search}
    if filters:
        body["filter"] = {"bool": {"filter": list(filters)}}
    return {"knn": {VECTOR_FIELDS[kind]: body}}


def leg_request(
    query: dict[str, Any], *, size: int, from_: int = 0, source: bool = True, id_doc_values: bool = True
) -> dict[str, Any]:
    """A search body for one leg: a page of hits without the vector fields.

    ``source=False`` returns ids and scores only (:func:`candidates_only`): fusion candidates need
    no documents.
    """
    if not source:
        return {"query": query, "from": from_, "size": size, **candidates_only(id_doc_values)}
    return {"query": query, "from": from_, "size": size, "_source": {"excludes": SOURCE_EXCLUDES}}


def hybrid_request(
    lexical: dict[str, Any], knn: dict[str, Any], *, from_: int, size: int, depth: int, id_doc_values: bool = True
) -> dict[str, Any]:
    """A neural-search ``hybrid`` body: each sub-query retrieves ``depth`` hits before fusion.

    ``pagination_depth`` fixes the candidate lists, so page 2 is cut from the same fused list as
    page 1 (no duplicates, no gaps) as long as ``from + size <= depth``. It returns ids and scores
    only (:func:`candidates_only`): the plugin fetches every candidate, so the page's documents are
    read afterwards.
    """
    return {
        "query": {"hybrid": {"queries": [lexical, knn], "pagination_depth": depth}},
        "from": from_,
        "size": size,
        **candidates_only(id_doc_values),
    }


def page_request(ids: Sequence[str]) -> dict[str, Any]:
    """A search body that reads the documents ``ids`` (one page), without their vectors.

    A search's fetch phase rather than ``_mget``: the page is read as the legs saw it, from the
    same refreshed point in time, and it costs less (docs/measurements.md, "Reading a page").
    """
    return {
        "query": {"ids": {"values": list(ids)}},
        "size": len(ids),
        "_source": {"excludes": SOURCE_EXCLUDES},
        "track_total_hits": False,
    }
