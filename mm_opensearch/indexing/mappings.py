"""Index bodies built from the JSON templates in ``mappings/`` and a catalog schema.

The vector fields sit next to the index's own BM25 fields, so augmenting an index never rewrites
its text mappings; ``_meta`` records which model made the vectors and their dimension and, beside
it, what the cluster could do when the index was provisioned (``mm_opensearch.hybrid.capabilities``).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

from mm_opensearch.catalog import CatalogSchema
from mm_opensearch.config import EXACT_ON_FAISS
from mm_opensearch.errors import ConfigError, IndexCompatibilityError
from mm_opensearch.resources import mappings_dir

if TYPE_CHECKING:
    from mm_opensearch.config import Settings

__all__ = [
    "VECTOR_FIELDS",
    "ID_FIELD",
    "IndexModelInfo",
    "Engine",
    "Encoder",
    "ModalityIndex",
    "modality_index_for",
    "VectorOptions",
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
Engine = Literal["lucene", "faiss"]
Encoder = Literal["none", "sq"]  # sq: lucene's 7-bit scalar quantizer, faiss's fp16 (k-NN 2.16+)
ModalityIndex = Literal["auto", "hnsw", "exact"]  # auto: exact on lucene, hnsw on faiss (see modality_index_for)
# Exact-only vectors: a knn_vector without a method takes the default (native) engine, and this index
# setting tells the plugin never to build its graphs; knn queries on the field then score every
# document that passes the filter. Lucene fields ignore it, so the fused vector keeps its HNSW graph.
# k-NN 2.19 has no per-field switch: ``"index": false`` on a knn_vector is accepted and dropped.
NO_NATIVE_GRAPHS = {"knn.advanced.approximate_threshold": -1}


@dataclass(frozen=True)
class VectorOptions:
    """How the vector fields are indexed and searched; the defaults are chosen by bench/scale.py (docs/benchmarks.md).

    ``encoder="sq"`` quantizes in the engine (lucene: 7-bit scalar quantization of the HNSW's
    vectors, the float vectors kept beside them; faiss: fp16). ``modality_index="exact"`` gives the
    per-modality vectors (text, image) no graph: they are not on the default search path, and a
    knn query on them is an exact scan. ``"auto"`` (the default) is exact on lucene and hnsw on
    faiss, and stays ``auto`` (:attr:`modality_fields` resolves it), so that a change of engine, or an
    index augment that finds native vector fields of the team's, can still choose. ``ef_search`` is
    read at query time (the knn query's ``method_parameters``); 256 keeps recall@10 at 0.98 for a
    million products, where the engine's default (None here; lucene: k) gave 0.92.
    """

    engine: Engine = "lucene"
    m: int = 16
    ef_construction: int = 128
    ef_search: int | None = 256
    encoder: Encoder = "none"
    modality_index: ModalityIndex = "auto"

    def __post_init__(self) -> None:
        if self.engine == "faiss" and self.modality_index == "exact":
            raise ConfigError(EXACT_ON_FAISS)

    @classmethod
    def from_settings(cls, settings: Settings) -> VectorOptions:
        """The options of ``MMOS_KNN_*``."""
        return cls(
            engine=settings.knn_engine,
            m=settings.knn_m,
            ef_construction=settings.knn_ef_construction,
            ef_search=settings.knn_ef_search,
            encoder=settings.knn_encoder,
            modality_index=settings.knn_modality_index,
        )

    @property
    def modality_fields(self) -> Literal["hnsw", "exact"]:
        """How the text and image vectors are mapped: ``modality_index`` with ``auto`` resolved for the engine."""
        return modality_index_for(self.engine, self.modality_index)

    def label(self) -> str:
        """A short name for tables: ``lucene m16 efc128 efs- sq modal:exact``."""
        parts = [self.engine, f"m{self.m}", f"efc{self.ef_construction}", f"efs{self.ef_search or '-'}"]
        if self.encoder != "none":
            parts.append(self.encoder)
        if self.modality_fields != "hnsw":
            parts.append(f"modal:{self.modality_fields}")
        return " ".join(parts)


def modality_index_for(engine: Engine, modality_index: ModalityIndex) -> Literal["hnsw", "exact"]:
    """``auto`` resolved for ``engine``: exact-only per-modality vectors on lucene, graphs on faiss.

    At 100k products exact-only text and image fields cut the index by 30% and the bulk and force
    merge by 1.5x and 3x, with the same nDCG@10 (docs/benchmarks.md, Scale). On faiss they would turn
    off the fused vector's graph too (the setting is index-wide), so faiss keeps three graphs.
    """
    if modality_index != "auto":
        return modality_index
    return "hnsw" if engine == "faiss" else "exact"


@cache
def _template(name: str) -> dict[str, Any]:
    return json.loads((mappings_dir() / name).read_text())


def vector_index_settings(*, modality_index: Literal["hnsw", "exact"] = "hnsw") -> dict[str, Any]:
    """``settings.index`` entries an index with vectors needs: k-NN on, vectors derived, not stored in ``_source``.

    Three 256-d vectors written as JSON were most of each stored document, and a page of documents
    decompressed and parsed them only to drop them: derived vectors halve the index and shorten
    every page read (docs/measurements.md, "Derived vectors"). The plugin puts the exact vectors
    back wherever ``_source`` is read whole. ``modality_index="exact"`` adds
    :data:`NO_NATIVE_GRAPHS`, which the exact-only per-modality fields rely on.
    """
    settings = copy.deepcopy(_template("vector_fields.json")["index_settings"])
    settings.pop("_comment", None)
    if modality_index == "exact":
        settings.update(NO_NATIVE_GRAPHS)
    return settings


def _encoder(engine: Engine, encoder: Encoder) -> dict[str, Any] | None:
    if encoder == "none":
        return None
    if engine == "faiss":
        return {"name": "sq", "parameters": {"type": "fp16"}}
    return {"name": "sq"}  # lucene: 7 bits, confidence interval from the dimension (the plugin's defaults)


def vector_properties(
    dim: int,
    *,
    modalities: bool = False,
    engine: Engine = "lucene",
    m: int = 16,
    ef_construction: int = 128,
    encoder: Encoder = "none",
    modality_index: ModalityIndex = "auto",
) -> dict[str, Any]:
    """Mapping properties for the fused vector (and per-modality ones) plus bookkeeping fields.

    ``modality_index="exact"`` maps the text and image vectors without a method (no graph; the
    index needs :func:`vector_index_settings` with the same option); ``auto`` as :func:`modality_index_for`.
    """
    modality_index = modality_index_for(engine, modality_index)
    template = _template("vector_fields.json")
    vector = copy.deepcopy(template["knn_vector"])
    vector["dimension"] = dim
    vector["method"]["engine"] = engine
    vector["method"]["parameters"] = {"m": m, "ef_construction": ef_construction}
    if (quantizer := _encoder(engine, encoder)) is not None:
        vector["method"]["parameters"]["encoder"] = quantizer
    if engine == "faiss":
        vector["method"]["space_type"] = "innerproduct"  # vectors are L2-normalised: same ranking
    properties = {VECTOR_FIELDS["fused"]: vector}
    if modalities:
        exact = {"type": "knn_vector", "dimension": dim, "space_type": template["knn_vector"]["method"]["space_type"]}
        for kind in ("text", "image"):
            properties[VECTOR_FIELDS[kind]] = copy.deepcopy(exact if modality_index == "exact" else vector)
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
    options: VectorOptions | None = None,
) -> dict[str, Any]:
    """A create-index body: BM25 text fields, filter fields typed from ``sample``, and vectors.

    Without ``dim`` the index is BM25-only (what a team has before adopting mm-opensearch).
    ``options`` (default :class:`VectorOptions`) says how vectors are indexed.
    """
    options = options or VectorOptions()
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
        properties.update(vector_properties(
            dim, modalities=modalities, engine=options.engine, m=options.m,
            ef_construction=options.ef_construction, encoder=options.encoder, modality_index=options.modality_index,
        ))
        mappings["_meta"] = model_meta(model_id, dim, modalities=modalities)
        settings["index"].update(vector_index_settings(modality_index=options.modality_fields if modalities else "hnsw"))
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
