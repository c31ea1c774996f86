"""Losses, negative masking, the two stages and resume, on a tiny random-init model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mm_opensearch.config import Settings
from mm_opensearch.towers import ModelConfig, MultimodalModel
from mm_opensearch.training.losses import LogitScale, info_nce
from mm_opensearch.training.run import TrainingInputs, train_from_files
from mm_opensearch.training.trainer import TrainConfig


def test_info_nce_matches_a_hand_computed_value() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # logits = q @ items.T = [[1, .6], [0, .8]] at scale 1
    q2i = -(math.log(math.exp(1) / (math.exp(1) + math.exp(0.6))) + math.log(math.exp(0.8) / (math.exp(0) + math.exp(0.8)))) / 2
    i2q = -(math.log(math.exp(1) / (math.exp(1) + math.exp(0))) + math.log(math.exp(0.8) / (math.exp(0.6) + math.exp(0.8)))) / 2
    assert float(info_nce(q, items, torch.tensor(1.0))) == pytest.approx((q2i + i2q) / 2, rel=1e-6)


def test_labelled_relevant_in_batch_items_are_not_negatives() -> None:
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    items = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # both items fit both queries
    plain = info_nce(q, items, torch.tensor(10.0))
    masked = info_nce(q, items, torch.tensor(10.0), known_relevant=torch.ones(2, 2, dtype=torch.bool))
    assert float(plain) == pytest.approx(math.log(2), rel=1e-5)  # pushed apart from an equal item
    assert float(masked) == pytest.approx(0.0, abs=1e-6)  # nothing left to push against


def test_rows_without_the_modality_are_dropped() -> None:
    q = torch.eye(3)
    items = torch.eye(3)
    items[2] = torch.tensor([1.0, 0.0, 0.0])  # garbage row of an absent image
    valid = torch.tensor([True, True, False])
    assert float(info_nce(q, items, torch.tensor(50.0), valid=valid)) == pytest.approx(0.0, abs=1e-6)


def test_logit_scale_is_clamped_at_100() -> None:
    scale = LogitScale(temperature=1e-4)
    assert float(scale().detach()) == pytest.approx(100.0)


def _settings(root: Path) -> Settings:
    return Settings(
        cache_dir=root / "cache", id_field="sku", text_fields=["prod_name", "detail_desc"], image_field="picture"
    )


def _inputs(root: Path) -> TrainingInputs:
    return TrainingInputs(catalog=root / "catalog.jsonl", queries=root / "queries.tsv", qrels=root / "qrels.tsv",
                          dev_fraction=0.2)


def test_two_stage_training_on_another_catalog_by_configuration(synthetic_shop: Path, tmp_path: Path) -> None:
    root = synthetic_shop
    settings = _settings(root)
    model = MultimodalModel.from_config(ModelConfig.tiny(fusion="gated"), settings=settings)
    untrained_id = model.model_id
    cfg = TrainConfig(stage1_epochs=6, stage2_epochs=6, batch_size=16, lr=5e-3, patience=10)
    seen: list[dict] = []
    result = train_from_files(model, _inputs(root), settings, cfg, out_dir=tmp_path / "m", on_epoch=seen.append)
    assert {r["stage"] for r in seen} == {1, 2}  # both stages ran
    assert seen[0]["loss"] > seen[-1]["loss"]  # and learned something
    assert result.best_dev_ndcg > 0
    saved = MultimodalModel.load(tmp_path / "m", settings=settings)
    assert saved.model_id == model.model_id != untrained_id
    assert saved.config.provenance["data"]["catalog"] == "catalog.jsonl"
    assert saved.config.provenance["best_epoch"] == list(result.best_epoch)


def test_training_is_deterministic_and_resumes(synthetic_shop: Path, tmp_path: Path) -> None:
    root = synthetic_shop
    settings = _settings(root)
    cfg = TrainConfig(stage1_epochs=2, stage2_epochs=2, batch_size=16, patience=10)
    full = MultimodalModel.from_config(ModelConfig.tiny(), settings=settings)
    train_from_files(full, _inputs(root), settings, cfg, out_dir=tmp_path / "full")

    # An interrupted run (stage 1 only) resumed with the full schedule ends where the full run did.
    part = MultimodalModel.from_config(ModelConfig.tiny(), settings=settings)
    train_from_files(part, _inputs(root), settings, TrainConfig(**{**cfg.__dict__, "stage2_epochs": 0}),
                     out_dir=tmp_path / "part")
    resumed = MultimodalModel.from_config(ModelConfig.tiny(), settings=settings)
    result = train_from_files(resumed, _inputs(root), settings, cfg, out_dir=tmp_path / "part", resume=True)
    assert [(r["stage"], r["epoch"]) for r in result.history] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    queries = ["red shirt", "blue bag"]
    np.testing.assert_allclose(resumed.encode_queries(queries), full.encode_queries(queries), atol=1e-5)
