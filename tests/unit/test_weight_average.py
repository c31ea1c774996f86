"""The exponential moving average of the weights (training/averaging.py) and its use in training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mm_opensearch.config import Settings
from mm_opensearch.errors import ConfigError
from mm_opensearch.towers import ModelConfig, MultimodalModel
from mm_opensearch.training.averaging import WeightAverage
from mm_opensearch.training.run import TrainingInputs, train_from_files
from mm_opensearch.training.trainer import TrainConfig


def test_the_average_follows_the_weights_with_a_warming_decay() -> None:
    param = torch.nn.Parameter(torch.zeros(3))
    average = WeightAverage([param], decay=0.9)
    with torch.no_grad():
        param.fill_(1.0)
    average.update()  # step 1: decay min(0.9, 2/11)
    np.testing.assert_allclose(average.shadow[0].numpy(), 1 - 2 / 11, rtol=1e-6)
    for _ in range(200):
        average.update()
    np.testing.assert_allclose(average.shadow[0].numpy(), 1.0, rtol=1e-6)  # a constant is its own average


def test_applied_swaps_the_average_in_and_restores_the_weights() -> None:
    param = torch.nn.Parameter(torch.full((2,), 4.0))
    average = WeightAverage([param], decay=0.5)
    average.shadow[0].fill_(1.0)
    with average.applied():
        assert param.tolist() == [1.0, 1.0]
    assert param.tolist() == [4.0, 4.0]
    with pytest.raises(RuntimeError), average.applied():
        raise RuntimeError
    assert param.tolist() == [4.0, 4.0]  # restored when the block fails too


@pytest.mark.parametrize("decay", [1.0, -0.1, 1.5])
def test_a_decay_outside_zero_one_names_the_option(decay: float) -> None:
    with pytest.raises(ConfigError, match="--weight-average"):
        WeightAverage([torch.nn.Parameter(torch.zeros(1))], decay)


def _settings(root: Path) -> Settings:
    return Settings(cache_dir=root / "cache", id_field="sku", text_fields=["prod_name", "detail_desc"], image_field="picture")


def _inputs(root: Path) -> TrainingInputs:
    return TrainingInputs(catalog=root / "catalog.jsonl", queries=root / "queries.tsv", qrels=root / "qrels.tsv",
                          dev_fraction=0.2)


def test_training_keeps_the_averaged_weights_and_resumes_to_them(synthetic_shop: Path, tmp_path: Path) -> None:
    settings = _settings(synthetic_shop)
    cfg = TrainConfig(stage1_epochs=2, stage2_epochs=2, batch_size=16, patience=10)
    averaged_cfg = TrainConfig(**{**cfg.__dict__, "weight_average": 0.9})
    plain = MultimodalModel.from_config(ModelConfig.tiny(), settings=settings)
    train_from_files(plain, _inputs(synthetic_shop), settings, cfg, out_dir=tmp_path / "plain")
    full = MultimodalModel.from_config(ModelConfig.tiny(), settings=settings)
    train_from_files(full, _inputs(synthetic_shop), settings, averaged_cfg, out_dir=tmp_path / "full")
    assert full.model_id != plain.model_id  # the kept weights are the average, not the last step's

    part = MultimodalModel.from_config(ModelConfig.tiny(), settings=settings)
    train_from_files(part, _inputs(synthetic_shop), settings, TrainConfig(**{**averaged_cfg.__dict__, "stage2_epochs": 0}),
                     out_dir=tmp_path / "part")
    resumed = MultimodalModel.from_config(ModelConfig.tiny(), settings=settings)
    train_from_files(resumed, _inputs(synthetic_shop), settings, averaged_cfg, out_dir=tmp_path / "part", resume=True)
    queries = ["red shirt", "blue bag"]
    np.testing.assert_allclose(resumed.encode_queries(queries), full.encode_queries(queries), atol=1e-5)
    saved = MultimodalModel.load(tmp_path / "full", settings=settings)
    assert saved.config.provenance["train_config"]["weight_average"] == 0.9


def test_a_bad_decay_fails_when_the_training_is_configured() -> None:
    with pytest.raises(ConfigError, match="--weight-average"):
        TrainConfig(weight_average=1.5)  # before any feature is extracted
    assert TrainConfig(weight_average=0.0).weight_average == 0.0  # 0 is off, not an error
