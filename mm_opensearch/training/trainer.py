"""Two-stage alignment on cached backbone features.

Stage 1 aligns the query tower with the product *text* and *image* projections (InfoNCE each);
stage 2 trains the fusion network on query <-> fused product, keeping the stage-1 losses as
auxiliaries so the per-modality vectors stay usable on their own. Backbones stay frozen, so one
epoch over ~10k pairs takes seconds on a CPU.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from mm_opensearch.evaluation.metrics import evaluate_run
from mm_opensearch.towers.persistence import state_section
from mm_opensearch.training.averaging import WeightAverage, check_decay
from mm_opensearch.training.data import TrainingData
from mm_opensearch.training.losses import LogitScale, info_nce
from mm_opensearch.training.negatives import HardNegatives

__all__ = ["TrainConfig", "TrainResult", "train_model", "rank_products"]

Modalities = Literal["multimodal", "text"]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; chosen on the dev slice carved from the training queries."""

    stage1_epochs: int = 8
    stage2_epochs: int = 16
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.05
    aux_weight: float = 0.5
    patience: int = 3
    seed: int = 0
    modalities: Modalities = "multimodal"
    query_encoder_lr: float = 3e-5  # the query backbone's trainable layers (ModelConfig.query_backbone)
    hard_negatives: int = 0  # candidates mined per query (training/negatives.py); 0 = in-batch negatives only
    hard_negative_field: str | None = None  # mine only within the query's labelled products' value of this field
    weight_average: float = 0.0  # decay of an exponential moving average of the weights, ranked and kept instead; 0 = off

    def __post_init__(self) -> None:
        if self.weight_average:
            check_decay(self.weight_average)  # here, not after minutes of feature extraction


@dataclass
class TrainResult:
    best_dev_ndcg: float
    best_epoch: tuple[int, int]
    history: list[dict[str, Any]] = field(default_factory=list)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rank_products(model, data: TrainingData, *, k: int = 100, text_only: bool = False) -> dict[str, dict[str, float]]:  # noqa: ANN001
    """Exact top-k of every query of ``data`` over its products (for dev early stopping)."""
    table = data.products
    with model.evaluating():
        rows = torch.arange(len(table.ids))
        products = model.product_vectors_from_features(*table.rows(rows, text_only=text_only)).fused
        queries = model.query_vectors_from_features(_query_features(model, data))
    scores, top = (queries @ products.T).topk(min(k, products.shape[0]), dim=1)
    return {
        qid: {table.ids[j]: float(s) for j, s in zip(top[i].tolist(), scores[i].tolist(), strict=True)}
        for i, qid in enumerate(data.query_ids)
    }


def _query_features(model, data: TrainingData, rows: torch.Tensor | None = None) -> torch.Tensor:  # noqa: ANN001
    """Query backbone features of ``rows``: the cached ones, or (a fine-tuned backbone) today's, with autograd in training."""
    backbone = model.query_backbone
    if not backbone.trainable_layers:
        return data.query_features if rows is None else data.query_features[rows]
    texts = data.query_texts if rows is None else [data.query_texts[i] for i in rows.tolist()]
    return backbone.training_features(texts) if torch.is_grad_enabled() else backbone.features(texts)


def _known_relevant(data: TrainingData, batch: torch.Tensor) -> torch.Tensor:
    qrows, prows = batch[:, 0].tolist(), batch[:, 1].tolist()
    return torch.tensor(
        [[p in data.relevant[q] or p == prows[a] for p in prows] for a, q in enumerate(qrows)], dtype=torch.bool
    )


def _hard_blocked(data: TrainingData, batch: torch.Tensor, rows: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """[a, j]: hard row j is relevant to query a (or is its positive, or absent): not a negative for a."""
    qrows, prows, hard = batch[:, 0].tolist(), batch[:, 1].tolist(), rows.tolist()
    return torch.tensor(
        [[not present[j] or h in data.relevant[q] or h == prows[a] for j, h in enumerate(hard)] for a, q in enumerate(qrows)],
        dtype=torch.bool,
    )


def _batch_loss(model, scale: LogitScale, data: TrainingData, batch: torch.Tensor, stage: int, cfg: TrainConfig,  # noqa: ANN001
                hard: HardNegatives | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    text_only = cfg.modalities == "text"
    out = model.product_vectors_from_features(*data.products.rows(batch[:, 1], text_only=text_only))
    queries = model.query_vectors_from_features(_query_features(model, data, batch[:, 0]))
    mask = _known_relevant(data, batch)
    extra: dict[str, torch.Tensor | None] = {"text": None, "image": None, "fused": None}
    blocked: dict[str, torch.Tensor | None] = {"text": None, "image": None, "fused": None}
    if hard is not None and generator is not None:
        rows, present = hard.draw(batch[:, 0], generator)
        negatives = model.product_vectors_from_features(*data.products.rows(rows, text_only=text_only))
        base = _hard_blocked(data, batch, rows, present)
        extra = {"text": negatives.text, "image": negatives.image, "fused": negatives.fused}
        blocked = {"text": base | ~negatives.text_mask[None], "image": base | ~negatives.image_mask[None], "fused": base}
    s = scale()
    aligned = info_nce(queries, out.text, s, known_relevant=mask, valid=out.text_mask,
                       hard=extra["text"], hard_blocked=blocked["text"])
    if not text_only:
        aligned = aligned + info_nce(queries, out.image, s, known_relevant=mask, valid=out.image_mask,
                                     hard=extra["image"], hard_blocked=blocked["image"])
    if stage == 1:
        return aligned
    fused = info_nce(queries, out.fused, s, known_relevant=mask, hard=extra["fused"], hard_blocked=blocked["fused"])
    return fused + cfg.aux_weight * aligned


def train_model(
    model,  # noqa: ANN001 - MultimodalModel (kept untyped to avoid importing torch models here twice)
    train: TrainingData,
    dev: TrainingData,
    dev_qrels: dict[str, dict[str, int]],
    cfg: TrainConfig,
    *,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    hard: HardNegatives | None = None,
) -> TrainResult:
    """Train the heads in place; the model ends with the weights of the best dev epoch.

    ``hard``: mined hard negatives of ``train``'s queries (one drawn per pair and batch).
    """
    _seed_everything(cfg.seed)
    scale = LogitScale(cfg.temperature)
    params = list(model.heads.parameters()) + list(scale.parameters())
    tuned = model.query_backbone.trainable_parameters()  # the query encoder's own layers, if any
    for p in tuned:
        p.requires_grad_(True)
    groups = [{"params": params}] + ([{"params": tuned, "lr": cfg.query_encoder_lr}] if tuned else [])
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    average = WeightAverage(list(model.heads.parameters()) + tuned, cfg.weight_average) if cfg.weight_average else None
    result = TrainResult(best_dev_ndcg=-1.0, best_epoch=(0, 0))
    best_state: dict[str, torch.Tensor] | None = None
    done: set[tuple[int, int]] = set()
    generator = torch.Generator().manual_seed(cfg.seed)
    ckpt = checkpoint_dir / "checkpoint.pt" if checkpoint_dir else None
    if resume and ckpt is not None and ckpt.exists():
        saved = torch.load(ckpt, weights_only=False)
        model.heads.load_state_dict(saved["heads"])
        if tuned:
            model.query_backbone.load_saved_state(saved["query_backbone"])
        scale.load_state_dict(saved["scale"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])  # modality dropout and dropout draw from it
        result = TrainResult(saved["best_dev_ndcg"], tuple(saved["best_epoch"]), saved["history"])
        if average is not None:
            average.load_state_dict(saved["weight_average"])
        best_state, done = saved["best_state"], {tuple(e) for e in saved["done"]}
    text_only = cfg.modalities == "text"
    # A text-only tower has no fusion stage: it gets the same epoch budget in stage 1 instead.
    schedule = ((1, cfg.stage1_epochs + cfg.stage2_epochs),) if text_only else ((1, cfg.stage1_epochs), (2, cfg.stage2_epochs))
    for stage, epochs in schedule:
        stale = 0
        for epoch in range(1, epochs + 1):
            if (stage, epoch) in done:
                continue
            model.train()
            order = train.pairs[torch.randperm(len(train.pairs), generator=generator)]
            total, batches = 0.0, 0
            for start in range(0, len(order), cfg.batch_size):
                batch = order[start : start + cfg.batch_size]
                loss = _batch_loss(model, scale, train, batch, stage, cfg, hard, generator)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if average is not None:
                    average.update()
                total, batches = total + loss.item(), batches + 1
            model.eval()
            with average.applied() if average is not None else nullcontext():
                dev_ndcg = evaluate_run(dev_qrels, rank_products(model, dev, text_only=text_only))["ndcg@10"]
                improved = dev_ndcg > result.best_dev_ndcg
                if improved:  # the weights just ranked: the average's when there is one
                    best_state = {k: v.detach().clone() for k, v in _trained_state(model).items()}
            record = {"stage": stage, "epoch": epoch, "loss": total / max(batches, 1), "dev_ndcg@10": dev_ndcg,
                      "temperature": 1.0 / scale().item()}
            result.history.append(record)
            done.add((stage, epoch))
            if improved:
                result.best_dev_ndcg, result.best_epoch = dev_ndcg, (stage, epoch)
                stale = 0
            else:
                stale += 1
            if on_epoch is not None:
                on_epoch(record)
            if ckpt is not None:
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                torch.save(
                    {"heads": model.heads.state_dict(), "query_backbone": model.query_backbone.saved_state(),
                     "scale": scale.state_dict(), "optimizer": optimizer.state_dict(),
                     "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "best_dev_ndcg": result.best_dev_ndcg,
                     "best_epoch": list(result.best_epoch), "history": result.history, "best_state": best_state,
                     "done": [list(e) for e in done], "config": asdict(cfg),
                     "weight_average": None if average is None else average.state_dict()},
                    ckpt,
                )
            if stale >= cfg.patience:
                break
    for p in tuned:
        p.requires_grad_(False)
    if best_state is not None:
        model.heads.load_state_dict(state_section(best_state, "heads."))
        if tuned:
            model.query_backbone.load_saved_state(state_section(best_state, "query_backbone."))
    model.eval()
    return result


def _trained_state(model) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """What training changes: the heads, and the query backbone's tuned layers."""
    state = {f"heads.{k}": v for k, v in model.heads.state_dict().items()}
    state.update({f"query_backbone.{k}": v for k, v in model.query_backbone.saved_state().items()})
    return state
