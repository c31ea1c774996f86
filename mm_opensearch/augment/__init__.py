"""Add vectors to an index that already serves traffic: inspect, plan, copy or extend, swap, roll back."""

from mm_opensearch.augment.aliases import RollbackResult, cleanup_previous, rollback, set_write_block, swap_aliases
from mm_opensearch.augment.inspect import IndexReport, inspect_index, resolve_index
from mm_opensearch.augment.plan import AugmentPlan, copy_index_body, next_index_name, plan_augment
from mm_opensearch.augment.run import AugmentResult, Embedder, run_augment
from mm_opensearch.augment.status import IndexStatus, index_status
from mm_opensearch.augment.sync import ReindexError, delete_removed, reindex, replay_changes

__all__ = [
    "AugmentPlan",
    "AugmentResult",
    "Embedder",
    "IndexReport",
    "IndexStatus",
    "ReindexError",
    "RollbackResult",
    "cleanup_previous",
    "copy_index_body",
    "delete_removed",
    "index_status",
    "inspect_index",
    "next_index_name",
    "plan_augment",
    "reindex",
    "replay_changes",
    "resolve_index",
    "rollback",
    "run_augment",
    "set_write_block",
    "swap_aliases",
]
