"""Index bodies built from the JSON templates in ``mappings/`` and a catalog schema.

The vector fields sit next to the index's own BM25 fields, so augmenting an index never rewrites
its text mappings; ``_meta`` records which model made the vectors and their dimension and, beside
it, what the cluster could do when the index was provisioned (``mm_opensearch.hybrid.capabilities``).
"""

from __future__ import annotations

import copy
import json
from functools import cache
from typing import Any, Literal

from mm_opensearch.catalog import CatalogSchema
from mm_opensearch.errors import IndexCompatibilityError
from mm_opensearch.resources import mappings_dir

__all__ = [
    "VECTOR_FIELDS",
    "ID_FIELD",
    "IndexModelInfo",
    "vector_index_settings",
    "vector_properties",
    "product_index_body",
    "model_meta",
    "read_model_meta",
    "read_capabilities_meta",
    "check_model_compatible",
]

VECTOR_FIELDS = {"fused": "mm_fused", "text": "mm_text", "image": "mm_image"}
# The document's ``_id`` again, as keyword doc values: what searches read candidate ids from
# (``_id`` has no doc values; see :mod:`mm_opensearch.hybrid.query`). Written with every vector.
ID_FIELD = "mm_id"
META_KEY = "mm_opensearch"
CAPABILITIES_META_KEY = "mm_opensearch_cluster"  # release, plugins, server fusion, pipelines, detection time
IndexModelInfo = dict[str, Any]


@cache
def _template(name: str) -> dict[str, Any]:
    return json.loads((mappings_dir() / name).read_text())


def vector_index_settings() -> dict[str, Any]:
    """``settings.index`` entries an index with vectors needs: k-NN on, vectors derived, not stored in ``_source``.

    Three 256-d vectors written as JSON were most of each stored document, and a page of documents
    decompressed and parsed them only to drop them: derived vectors halve the index and shorten
    every page read (docs/measurements.md, "Derived vectors"). The plugin puts the exact vectors
    back wherever ``_source`` is read whole.
    """
    settings = copy.deepcopy(_template("vector_fields.json")["index_settings"])
    settings.pop("_comment", None)
    return settings


def vector_properties(
    dim: int,
    *,
    modalities: bool = False,
    engine: Literal["lucene", "faiss"] = "lucene",
    m: int = 16,
    ef_construction: int = 128,
) -> dict[str, Any]:
    """Mapping properties for the fused vector (and per-modality ones) plus bookkeeping fields."""
    template = _template("vector_fields.json")
    vector = copy.deepcopy(template["knn_vector"])
    vector["dimension"] = dim
    vector["method"]["engine"] = engine
    vector["method"]["parameters"] = {"m": m, "ef_construction": ef_construction}
    if engine == "faiss":
        vector["method"]["space_type"] = "innerproduct"  # vectors are L2-normalised: same ranking
    names = VECTOR_FIELDS.values() if modalities else [VECTOR_FIELDS["fused"]]
    properties = {name: copy.deepcopy(vector) for name in names}
    bookkeeping = copy.deepcopy(template["bookkeeping"])
    bookkeeping.pop("_comment", None)
    properties.update(bookkeeping)
    return properties


def model_meta(model_id: str, dim: int, *, modalities: bool = False) -> dict[str, Any]:
    """The ``_meta`` entry that ties an index's vectors to one model."""
    return {META_KEY: {"model_id": model_id, "dim": dim, "modalities": modalities, "vector_fields": VECTOR_FIELDS}}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def product_index_body(
    schema: CatalogSchema,
    *,
    sample: dict[str, Any] | None = None,
    dim: int | None = None,
    model_id: str | None = None,
    modalities: bool = False,
    engine: Literal["lucene", "faiss"] = "lucene",
) -> dict[str, Any]:
    """A create-index body: BM25 text fields, filter fields typed from ``sample``, and vectors.

    Without ``dim`` the index is BM25-only (what a team has before adopting mm-opensearch).
    """
    template = _template("product_index.json")
    properties: dict[str, Any] = {schema.id_field: copy.deepcopy(template["keyword_field"])}
    for name in schema.text_fields:
        properties[name] = copy.deepcopy(template["text_field"])
    for name in schema.filter_fields:
        if name in properties:
            continue
        kind = "numeric_field" if sample is not None and _is_number(sample.get(name)) else "keyword_field"
        properties[name] = copy.deepcopy(template[kind])
    properties[schema.updated_at_field] = copy.deepcopy(template["updated_at_field"])
    settings = copy.deepcopy(template["settings"])
    mappings: dict[str, Any] = {"properties": properties}
    settings["index"]["knn"] = False
    if dim is not None:
        if model_id is None:
            msg = "model_id is required with dim: the index records which model made its vectors"
            raise ValueError(msg)
        properties.update(vector_properties(dim, modalities=modalities, engine=engine))
        mappings["_meta"] = model_meta(model_id, dim, modalities=modalities)
        settings["index"].update(vector_index_settings())
    return {"settings": settings, "mappings": mappings}


def read_model_meta(mapping: dict[str, Any]) -> IndexModelInfo | None:
    """The model entry of an index mapping (as returned by ``indices.get_mapping``), if any."""
    return (mapping.get("_meta") or {}).get(META_KEY)


def read_capabilities_meta(mapping: dict[str, Any]) -> dict[str, Any] | None:
    """The cluster capabilities recorded in an index mapping at provisioning time, if any."""
    return (mapping.get("_meta") or {}).get(CAPABILITIES_META_KEY)


def check_model_compatible(index: str, mapping: dict[str, Any], model_id: str, dim: int) -> IndexModelInfo:
    """Refuse to mix vectors of two models: the query tower must be the one that built the index."""
    meta = read_model_meta(mapping)
    if meta is None:
        msg = f"index '{index}' has no mm-opensearch vectors; run `mm-opensearch index augment {index}` first"
        raise IndexCompatibilityError(msg)
    if meta["dim"] != dim:
        msg = (
            f"field '{VECTOR_FIELDS['fused']}' in index '{index}' has dim {meta['dim']}, the tower outputs {dim}; "
            f"use the model that built the index ({meta['model_id']}) or re-embed with `mm-opensearch backfill`"
        )
        raise IndexCompatibilityError(msg)
    if meta["model_id"] != model_id:
        msg = (
            f"index '{index}' holds vectors of model {meta['model_id']}, but the query tower is model {model_id}; "
            "load the matching model (MMOS_MODEL_DIR) or re-embed the index with `mm-opensearch backfill`"
        )
        raise IndexCompatibilityError(msg)
    return meta
