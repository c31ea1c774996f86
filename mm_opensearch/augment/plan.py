"""The augment plan: pure functions from an :class:`IndexReport` to steps and index bodies.

Kept free of I/O so ``--dry-run`` prints exactly what ``augment`` would do, and tests compare
plans and bodies as plain data. The vector fields follow the same :class:`VectorOptions`
(``MMOS_KNN_*``) as an index mm-opensearch creates, whichever strategy adds them.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, replace
from typing import Any

from mm_opensearch.augment.inspect import IndexReport, Strategy
from mm_opensearch.errors import ConfigError, IndexCompatibilityError
from mm_opensearch.indexing.mappings import (
    NO_NATIVE_GRAPHS,
    VECTOR_FIELDS,
    VectorOptions,
    model_meta,
    vector_index_settings,
    vector_properties,
)

__all__ = [
    "AugmentPlan",
    "copy_index_body",
    "in_place_settings",
    "next_index_name",
    "plan_augment",
    "vector_mapping_update",
]

# Settings OpenSearch sets itself or that cannot be given at creation.
_GENERATED_SETTINGS = ("uuid", "creation_date", "version", "provided_name", "resize", "blocks", "routing")


@dataclass(frozen=True)
class AugmentPlan:
    """What ``run_augment`` will do, step by step."""

    source: str
    target: str  # == source for in-place
    strategy: Strategy
    aliases: tuple[str, ...]
    model_id: str
    dim: int
    modalities: bool
    options: VectorOptions
    steps: tuple[str, ...]

    @property
    def exact_modalities(self) -> bool:
        """Per-modality vectors without a graph: the index then needs :data:`NO_NATIVE_GRAPHS`."""
        return self.modalities and self.options.modality_fields == "exact"


def next_index_name(index: str) -> str:
    """``products`` -> ``products_v2``, ``products_v2`` -> ``products_v3``."""
    match = re.fullmatch(r"(.*)_v(\d+)", index)
    return f"{match.group(1)}_v{int(match.group(2)) + 1}" if match else f"{index}_v2"


def vector_mapping_update(
    mappings: dict[str, Any], *, model_id: str, dim: int, modalities: bool, options: VectorOptions
) -> dict[str, Any]:
    """A ``put_mapping`` body adding the vector fields and the model entry (other ``_meta`` kept).

    The fields are those :func:`~mm_opensearch.indexing.mappings.product_index_body` maps for the
    same ``options``, so an augmented index searches like a created one.
    """
    meta = {**(mappings.get("_meta") or {}), **model_meta(model_id, dim, modalities=modalities)}
    properties = vector_properties(
        dim, modalities=modalities, engine=options.engine, m=options.m, ef_construction=options.ef_construction,
        encoder=options.encoder, modality_index=options.modality_index,
    )
    return {"properties": properties, "_meta": meta}


def in_place_settings(plan: AugmentPlan) -> dict[str, Any]:
    """``settings.index`` entries to put on the open index before its vector fields are added (often none).

    ``index.knn`` is final, so in place it is already on (that is what makes the strategy in place),
    and derived source is final too. ``knn.advanced.approximate_threshold`` is a dynamic index
    setting (the k-NN plugin declares it ``IndexScope, Dynamic``), so exact-only per-modality vectors
    can be had without a copy; set before the fields exist, no segment builds them a graph.
    """
    return dict(NO_NATIVE_GRAPHS) if plan.strategy == "in_place" and plan.exact_modalities else {}


def copy_index_body(
    report: IndexReport, update: dict[str, Any], *, options: VectorOptions, modalities: bool
) -> dict[str, Any]:
    """The source index's settings and mappings with the vector fields and the settings they need added."""
    settings = {k: copy.deepcopy(v) for k, v in report.settings.items() if k not in _GENERATED_SETTINGS}
    settings.update(vector_index_settings(modality_index=options.modality_fields if modalities else "hnsw"))
    mappings = copy.deepcopy(report.mappings)
    mappings.setdefault("properties", {}).update(update["properties"])
    mappings["_meta"] = update["_meta"]
    return {"settings": {"index": settings}, "mappings": mappings}


def plan_augment(
    report: IndexReport,
    *,
    model_id: str,
    dim: int,
    modalities: bool = False,
    options: VectorOptions | None = None,
    target: str | None = None,
) -> AugmentPlan:
    """Steps to give ``report``'s index vectors of ``model_id`` without interrupting its readers.

    ``options`` (``VectorOptions.from_settings``; the defaults when None) say how the vectors are indexed;
    ``auto`` modality fields get graphs where the team's index has native-engine vector fields.
    """
    options = options or VectorOptions()
    if report.model is not None and (report.model["model_id"] != model_id or report.model["dim"] != dim):
        msg = (
            f"index '{report.index}' already holds vectors of model {report.model['model_id']} "
            f"(dim {report.model['dim']}); re-embed with `mm-opensearch backfill` using that model, or augment a "
            "copy of the original index"
        )
        raise IndexCompatibilityError(msg)
    if report.missing_text_fields:
        msg = (
            f"index '{report.index}' has no field(s) {report.missing_text_fields} of MMOS_TEXT_FIELDS; "
            "set MMOS_TEXT_FIELDS to the text fields this index has"
        )
        raise ConfigError(msg)
    team_native = _team_native_vector_fields(report) if modalities and report.strategy != "ready" else []
    kept_graphs = ""
    if team_native and options.modality_index == "auto" and options.modality_fields == "exact":
        # auto gives way: the index-wide switch of exact-only fields would cost the team's fields their graphs.
        options = replace(options, modality_index="hnsw")
        kept_graphs = (f"; mm_text and mm_image get graphs (MMOS_KNN_MODALITY_INDEX=auto): exact-only fields would "
                       f"turn native graph building off for the whole index, and it has native-engine field(s) "
                       f"{team_native}")
    exact = modalities and options.modality_fields == "exact"
    if exact and team_native:
        _refuse_exact_beside_native_vectors(report, team_native)
    aliases = tuple(sorted(report.aliases))
    common = dict(source=report.index, aliases=aliases, model_id=model_id, dim=dim, modalities=modalities,
                  options=options)
    vectors = f"knn_vector dim {dim}, {options.label()}"
    threshold = ", ".join(f"index.{key}={value}" for key, value in NO_NATIVE_GRAPHS.items())
    no_graphs = f"; mm_text and mm_image exact-only: {threshold}" if exact else kept_graphs
    fill_ids = (
        (f"copy the _id of {report.docs_without_id} documents into mm_id (keyword doc values searches read "
         "candidate ids from; until then they read the slower stored _id)",)
        if report.docs_without_id else ()
    )
    if report.strategy == "ready":
        return AugmentPlan(target=report.index, strategy="ready", steps=(
            *fill_ids,
            f"index '{report.index}' already has vectors of model {model_id}; backfill the missing or stale ones",
        ), **common)
    if report.strategy == "in_place":
        return AugmentPlan(target=report.index, strategy="in_place", steps=(
            *((f"set {threshold} on '{report.index}' (a dynamic setting): mm_text and mm_image get no graph, "
               "a knn query on them scans the filtered documents",) if exact else ()),
            f"add fields mm_* ({vectors}{kept_graphs}) and _meta model {model_id} to '{report.index}'; "
            "their vectors are stored in _source (keeping them out needs a new index: a static setting)",
            *fill_ids,
            f"backfill vectors of {report.docs} products in place (queries keep being served)",
        ), **common)
    if not aliases:
        msg = (
            f"index '{report.index}' has index.knn=false, so vectors need a new index and an alias swap, but no alias "
            f"points to it; point your application at an alias first, e.g. `mm-opensearch index swap "
            f"--alias {report.index}-read --alias {report.index}-write --to {report.index}`"
        )
        raise ConfigError(msg)
    if not report.has_updated_at:
        msg = (
            f"index '{report.index}' has no '{report.updated_at_field}' field to find products changed during "
            "the copy; set MMOS_UPDATED_AT_FIELD to the field your application bumps on every write"
        )
        raise ConfigError(msg)
    target = target or next_index_name(report.index)
    return AugmentPlan(target=target, strategy="reindex", steps=(
        f"create '{target}': settings and mappings of '{report.index}', index.knn=true, + mm_* vector fields "
        "kept out of _source (k-NN derived source) "
        f"({vectors}{no_graphs}); refresh off and 0 replicas while loading",
        f"_reindex '{report.index}' -> '{target}' with slices=auto ({report.docs} products)",
        f"backfill vectors in '{target}' through the workers",
        f"replay products changed in '{report.index}' since the copy began (by updated_at) and embed them",
        f"block writes on '{report.index}' (a few seconds), replay the last changes, delete products deleted meanwhile",
        f"restore refresh/replicas of '{target}', then move alias(es) {list(aliases)} to '{target}' in one atomic call",
        f"keep '{report.index}' (write-blocked) for `index rollback` until `index cleanup`",
    ), **common)



def _native_vector_fields(properties: dict[str, Any], prefix: str = "") -> list[str]:
    """The index's own knn_vector fields on a native engine (faiss, nmslib: any but lucene), nested ones too."""
    found: list[str] = []
    for name, field in properties.items():
        path = f"{prefix}{name}"
        if field.get("type") == "knn_vector" and (field.get("method") or {}).get("engine") != "lucene":
            found.append(path)
        found += _native_vector_fields(field.get("properties") or {}, f"{path}.")
    return found


def _team_native_vector_fields(report: IndexReport) -> list[str]:
    """The index's own (not mm_*) knn_vector fields on a native engine: those approximate_threshold -1 affects."""
    own = {k: v for k, v in (report.mappings.get("properties") or {}).items() if k not in VECTOR_FIELDS.values()}
    return _native_vector_fields(own)


def _refuse_exact_beside_native_vectors(report: IndexReport, fields: list[str]) -> None:
    """Refuse exact-only modalities where the index-wide switch would also take the team's own fields' graphs."""
    msg = (
        f"MMOS_KNN_MODALITY_INDEX=exact turns native graph building off for the whole index "
        f"(index.knn.advanced.approximate_threshold=-1), and index '{report.index}' has native-engine "
        f"knn_vector field(s) {fields} whose new segments would then get no graph; "
        "set MMOS_KNN_MODALITY_INDEX=hnsw, or augment without --modalities"
    )
    raise ConfigError(msg)
