"""``train`` end to end: read a catalog and judged queries, train both stages, save an artifact."""

from __future__ import annotations

import csv
import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mm_opensearch.catalog import CatalogSchema, read_catalog
from mm_opensearch.config import Settings
from mm_opensearch.errors import ConfigError
from mm_opensearch.judgments import load_click_pairs, load_qrels, load_queries
from mm_opensearch.provenance import command_line, git_commit
from mm_opensearch.training.data import build_training_data, feature_table, split_dev
from mm_opensearch.training.negatives import HardNegatives, mine_hard_negatives
from mm_opensearch.training.trainer import TrainConfig, TrainResult, train_model

__all__ = ["TrainingInputs", "checkpoint_dir", "train_from_files"]


@dataclass(frozen=True)
class TrainingInputs:
    """Where the training data lives. Either ``queries`` + ``qrels`` or ``clicks``."""

    catalog: Path
    queries: Path | None = None
    qrels: Path | None = None
    clicks: Path | None = None
    query_split: str | None = "train"
    product_splits: Path | None = None  # TSV product_id, split: restrict products to query_split
    dev_fraction: float = 0.1


def checkpoint_dir(settings: Settings, out_dir: Path) -> Path:
    """Checkpoints live in the cache, keyed by the output folder, so the artifact stays small."""
    key = hashlib.sha256(str(out_dir.resolve()).encode()).hexdigest()[:16]
    return settings.cache_dir / "checkpoints" / key


def _split_ids(path: Path, split: str) -> set[str]:
    with path.open(encoding="utf-8") as handle:
        return {row["product_id"] for row in csv.DictReader(handle, delimiter="\t") if row["split"] == split}


def train_from_files(
    model,  # noqa: ANN001 - a fresh MultimodalModel (see towers.ModelConfig)
    inputs: TrainingInputs,
    settings: Settings,
    cfg: TrainConfig,
    *,
    out_dir: Path,
    resume: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place on the files of ``inputs`` and save it to ``out_dir``."""
    notify = on_stage or (lambda _msg: None)
    schema = CatalogSchema.from_settings(settings)
    products = list(read_catalog(inputs.catalog, schema))
    if inputs.product_splits and inputs.query_split:
        allowed = _split_ids(inputs.product_splits, inputs.query_split)
        products = [p for p in products if p.id in allowed]
    if inputs.clicks is not None:
        queries, qrels = load_click_pairs(inputs.clicks)
    elif inputs.queries is not None and inputs.qrels is not None:
        queries, qrels = load_queries(inputs.queries, split=inputs.query_split), load_qrels(inputs.qrels)
    else:
        msg = "training needs --queries and --qrels (graded labels) or --clicks (query, product_id pairs)"
        raise ConfigError(msg)
    if not queries or not products:
        msg = f"no training data: {len(queries)} queries, {len(products)} products (check --split and file paths)"
        raise ConfigError(msg)
    train_queries, dev_queries = split_dev(queries, inputs.dev_fraction, cfg.seed)
    started = time.monotonic()
    notify(f"backbone features of {len(products)} products (cached after the first run)")
    table = feature_table(model, products, image_roots=settings.image_roots_or(inputs.catalog.parent))
    notify(f"query features of {len(queries)} queries")
    train = build_training_data(table, train_queries, qrels, model.query_text_features)
    dev = build_training_data(table, dev_queries, qrels, model.query_text_features)
    features_s = time.monotonic() - started
    dev_qrels = {q: qrels[q] for q in dev.query_ids}
    hard: HardNegatives | None = None
    if cfg.hard_negatives > 0:
        field = cfg.hard_negative_field
        if field is not None and not any(field in p.source for p in products):
            msg = f"--hard-negative-field '{field}' is in none of the products; name a catalog field (e.g. a type) or leave it out"
            raise ConfigError(msg)
        groups = None if field is None else [None if p.source.get(field) in (None, "") else str(p.source[field]) for p in products]
        hard = mine_hard_negatives(train, per_query=cfg.hard_negatives, groups=groups)
        notify(f"hard negatives: up to {cfg.hard_negatives} per query" + (f" within each query's '{field}'" if field else ""))
    notify(f"training on {len(train.pairs)} pairs, early stopping on {len(dev.query_ids)} dev queries")
    started = time.monotonic()
    result = train_model(model, train, dev, dev_qrels, cfg, checkpoint_dir=checkpoint_dir(settings, out_dir),
                         resume=resume, on_epoch=on_epoch, hard=hard)
    provenance = {
        "command": command_line(),
        "commit": git_commit(),
        "data": {"catalog": inputs.catalog.name, "products": len(products), "train_queries": len(train.query_ids),
                 "dev_queries": len(dev.query_ids), "dev_fraction": inputs.dev_fraction, "pairs": int(len(train.pairs)), "query_split": inputs.query_split},
        "train_config": asdict(cfg),
        "best_dev_ndcg@10": result.best_dev_ndcg,
        "best_epoch": list(result.best_epoch),
        "history": result.history,
        "seconds": {"features": round(features_s, 1), "training": round(time.monotonic() - started, 1)},
    }
    model.config = model.config.model_copy(update={"provenance": provenance})
    model.save(out_dir)
    return result
