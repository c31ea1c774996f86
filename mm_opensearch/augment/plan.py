"""The augment plan: pure functions from an :class:`IndexReport` to steps and index bodies.

Kept free of I/O so ``--dry-run`` prints exactly what ``augment`` would do, and tests compare
plans and bodies as plain data.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any, Literal

from mm_opensearch.augment.inspect import IndexReport, Strategy
from mm_opensearch.errors import ConfigError, IndexCompatibilityError
from mm_opensearch.indexing.mappings import model_meta, vector_index_settings, vector_properties

__all__ = ["AugmentPlan", "copy_index_body", "next_index_name", "plan_augment", "vector_mapping_update"]

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
    engine: Literal["lucene", "faiss"]
    steps: tuple[str, ...]


def next_index_name(index: str) -> str:
    """``products`` -> ``products_v2``, ``products_v2`` -> ``products_v3``."""
    match = re.fullmatch(r"(.*)_v(\d+)", index)
    return f"{match.group(1)}_v{int(match.group(2)) + 1}" if match else f"{index}_v2"


def vector_mapping_update(
    mappings: dict[str, Any], *, model_id: str, dim: int, modalities: bool, engine: Literal["lucene", "faiss"]
) -> dict[str, Any]:
    """A ``put_mapping`` body adding the vector fields and the model entry (other ``_meta`` kept)."""
    meta = {**(mappings.get("_meta") or {}), **model_meta(model_id, dim, modalities=modalities)}
    return {"properties": vector_properties(dim, modalities=modalities, engine=engine), "_meta": meta}


def copy_index_body(report: IndexReport, update: dict[str, Any]) -> dict[str, Any]:
    """The source index's settings and mappings with the vector fields and the settings they need added."""
    settings = {k: copy.deepcopy(v) for k, v in report.settings.items() if k not in _GENERATED_SETTINGS}
    settings.update(vector_index_settings())
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
    engine: Literal["lucene", "faiss"] = "lucene",
    target: str | None = None,
) -> AugmentPlan:
    """Steps to give ``report``'s index vectors of ``model_id`` without interrupting its readers."""
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
    aliases = tuple(sorted(report.aliases))
    common = dict(source=report.index, aliases=aliases, model_id=model_id, dim=dim, modalities=modalities, engine=engine)
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
            f"add fields mm_* (knn_vector dim {dim}, {engine}) and _meta model {model_id} to '{report.index}'; "
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
        f"(dim {dim}, {engine}); refresh off and 0 replicas while loading",
        f"_reindex '{report.index}' -> '{target}' with slices=auto ({report.docs} products)",
        f"backfill vectors in '{target}' through the workers",
        f"replay products changed in '{report.index}' since the copy began (by updated_at) and embed them",
        f"block writes on '{report.index}' (a few seconds), replay the last changes, delete products deleted meanwhile",
        f"restore refresh/replicas of '{target}', then move alias(es) {list(aliases)} to '{target}' in one atomic call",
        f"keep '{report.index}' (write-blocked) for `index rollback` until `index cleanup`",
    ), **common)

