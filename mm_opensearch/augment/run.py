"""Carry out an :class:`AugmentPlan` while the index keeps serving queries.

Reading never stops: until the atomic alias swap readers use the old index, afterwards the new
one. Writing stops only for the final catch-up (a write block on the old index while the last
changes are replayed and the aliases move), so no write lands in an index that is about to be
left behind. A writer refused there (403 ``cluster_block_exception``) loses nothing if it sends
the write again through the alias, which then names the new index. The block lasts the replay and
the swap only: the products replayed under it are encoded after the swap, their vectors lagging
the edit for a moment as after any edit the change feed picks up. Embedding is delegated to an
:class:`Embedder` (the workers, or in-process).

Augmenting provisions the index for search: the cluster's capabilities are detected, the server
fusion path's pipelines created and both recorded in the ``_meta`` of the index that will serve
(before the swap, so its first search finds them; see :mod:`mm_opensearch.hybrid.capabilities`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from opensearchpy import OpenSearch

from mm_opensearch.augment.aliases import record_previous, set_write_block, swap_aliases
from mm_opensearch.augment.inspect import inspect_index
from mm_opensearch.augment.plan import AugmentPlan, copy_index_body, in_place_settings, vector_mapping_update
from mm_opensearch.augment.sync import delete_removed, fill_id_field, reindex, replay_changes
from mm_opensearch.catalog import CatalogSchema
from mm_opensearch.hybrid.capabilities import (
    ClusterCapabilities,
    default_fusions,
    detect_capabilities,
    provision_pipelines,
    record_capabilities,
)
from mm_opensearch.hybrid.fusion import FusionOptions
from mm_opensearch.indexing.mappings import CAPABILITIES_META_KEY

__all__ = ["AugmentResult", "Embedder", "run_augment"]

CLOCK_SKEW = timedelta(seconds=5)  # replay a little before the copy began: updated_at comes from app clocks
MAX_LIVE_REPLAYS = 3


class Embedder(Protocol):
    """Gives products vectors and returns when they are written."""

    def backfill(self, index: str, *, tune: bool) -> None: ...

    def embed(self, index: str, ids: list[str]) -> None: ...


@dataclass
class AugmentResult:
    plan: AugmentPlan
    capabilities: ClusterCapabilities | None = None  # as recorded in the serving index's _meta
    copied: int = 0
    replayed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


def _now() -> datetime:
    return datetime.now(UTC)


def run_augment(
    client: OpenSearch,
    plan: AugmentPlan,
    embedder: Embedder,
    *,
    schema: CatalogSchema,
    image_dir: Path | None = None,
    on_step: Callable[[str], None] | None = None,
    fusions: Iterable[FusionOptions] = (),
) -> AugmentResult:
    """Add vectors as ``plan`` says; the source index is kept (write-blocked) after a swap.

    ``fusions`` (the model's tuned ones) get server-path pipelines besides each method's defaults.
    """
    step = on_step or (lambda _message: None)
    result = AugmentResult(plan)
    report = inspect_index(client, plan.source, schema)
    update = vector_mapping_update(
        report.mappings, model_id=plan.model_id, dim=plan.dim, modalities=plan.modalities, options=plan.options
    )
    step("detecting the cluster's capabilities and creating the server fusion pipelines")
    result.capabilities = provision_pipelines(client, detect_capabilities(client), default_fusions(fusions))
    if plan.strategy in ("ready", "in_place"):
        if plan.strategy == "in_place":
            if settings := in_place_settings(plan):  # before the fields: no segment builds their graphs
                step(f"setting {settings} on '{plan.source}'")
                client.indices.put_settings(index=plan.source, body={"index": settings})
            step(f"adding vector fields to '{plan.source}'")
            client.indices.put_mapping(index=plan.source, body=update)
        record_capabilities(client, plan.source, result.capabilities)
        if report.docs_without_id:
            step(f"filling mm_id of {report.docs_without_id} documents of '{plan.source}' (candidate ids)")
            fill_id_field(client, plan.source)
        step(f"backfilling '{plan.source}' in place")
        embedder.backfill(plan.source, tune=False)
        return result

    update["_meta"][CAPABILITIES_META_KEY] = result.capabilities.to_meta()
    body = copy_index_body(report, update, options=plan.options, modalities=plan.modalities)
    step(f"creating '{plan.target}'")
    client.indices.create(index=plan.target, body=body)
    since = (_now() - CLOCK_SKEW).isoformat()
    step(f"copying '{plan.source}' -> '{plan.target}'")
    result.copied = reindex(client, plan.source, plan.target)
    step(f"backfilling '{plan.target}'")
    embedder.backfill(plan.target, tune=True)

    for _ in range(MAX_LIVE_REPLAYS):  # catch up while writes continue, so the blocked window is short
        checkpoint = (_now() - CLOCK_SKEW).isoformat()
        client.indices.refresh(index=plan.source)
        changed = replay_changes(client, plan.source, plan.target, since=since, schema=schema, image_dir=image_dir)
        since = checkpoint
        result.replayed += changed
        step(f"replayed {len(changed)} products changed during the copy")
        if changed:
            embedder.embed(plan.target, changed)
        if len(changed) < 100:
            break

    step(f"blocking writes on '{plan.source}' for the final catch-up and the swap")
    set_write_block(client, plan.source, blocked=True)
    swapped = False
    try:
        client.indices.refresh(index=plan.source)
        changed = replay_changes(client, plan.source, plan.target, since=since, schema=schema, image_dir=image_dir)
        result.replayed += changed
        result.deleted = delete_removed(client, plan.source, plan.target)
        client.indices.refresh(index=plan.target)
        record_previous(client, plan.target, plan.source, list(plan.aliases))
        step(f"moving aliases {list(plan.aliases)} to '{plan.target}'")
        swap_aliases(client, list(plan.aliases), to_index=plan.target, from_index=plan.source)
        swapped = True
    finally:
        if not swapped:  # the source keeps serving; leave the half-built target for inspection
            set_write_block(client, plan.source, blocked=False)
    if changed:  # after the swap: the block lasts a replay, not an encode (an edit's vector lags it anyway)
        step(f"embedding the {len(changed)} products replayed at the swap")
        embedder.embed(plan.target, changed)
    return result
