"""Hard-negative mining and its place in the loss: what is mined, what is never mined, what it costs the loss."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mm_opensearch.config import Settings
from mm_opensearch.errors import ConfigError
from mm_opensearch.towers import ModelConfig, MultimodalModel
from mm_opensearch.training.data import FeatureTable, TrainingData
from mm_opensearch.training.losses import info_nce
from mm_opensearch.training.negatives import mine_hard_negatives
from mm_opensearch.training.run import TrainingInputs, train_from_files
from mm_opensearch.training.trainer import TrainConfig


def _data(product_texts: list[list[float]], queries: list[list[float]], relevant: list[set[int]]) -> TrainingData:
    n = len(product_texts)
    text = torch.tensor(product_texts)
    return TrainingData(
        products=FeatureTable(ids=[f"p{i}" for i in range(n)], text=text, image=torch.zeros(n, 2),
                              tokens=torch.zeros(n, 1, 2), has_text=torch.ones(n, dtype=torch.bool),
                              has_image=torch.ones(n, dtype=torch.bool)),
        query_ids=[f"q{i}" for i in range(len(queries))],
        query_features=torch.tensor(queries),
        pairs=torch.tensor([[q, min(r)] for q, r in enumerate(relevant)]),
        relevant=relevant,
    )


# Four products on a circle: p0 and p1 near the query's direction, p2 further, p3 opposite.
TEXTS = [[1.0, 0.0], [0.9, 0.1], [0.5, 0.5], [-1.0, 0.0]]


def test_nearest_unlabelled_products_are_mined_best_first_and_labelled_ones_never() -> None:
    hard = mine_hard_negatives(_data(TEXTS, [[1.0, 0.05]], [{0}]), per_query=2)
    assert hard.candidates[0].tolist() == [1, 2]  # p0 is relevant: never a negative


def test_a_group_keeps_mining_within_the_type_of_the_labelled_products() -> None:
    groups = ["shirt", "jeans", "shirt", "shirt"]
    hard = mine_hard_negatives(_data(TEXTS, [[1.0, 0.05]], [{0}]), per_query=5, groups=groups)
    assert hard.candidates[0].tolist() == [2, 3]  # p1 reads closer but is another type


def test_a_query_whose_type_holds_only_relevant_products_gets_no_hard_negatives() -> None:
    data = _data(TEXTS, [[1.0, 0.05]], [{0, 1}])
    hard = mine_hard_negatives(data, per_query=5, groups=["a", "a", "b", "b"])
    assert hard.candidates[0].numel() == 0
    rows, present = hard.draw(torch.tensor([0]), torch.Generator().manual_seed(0))
    assert not present[0]


def test_queries_on_another_backbone_than_the_product_text_are_refused() -> None:
    data = _data(TEXTS, [[1.0, 0.0, 0.0]], [{0}])
    with pytest.raises(ValueError, match="query_backbone"):
        mine_hard_negatives(data)


def test_a_hard_negative_raises_the_loss_unless_it_is_blocked() -> None:
    q = torch.eye(2)
    items = torch.eye(2)
    hard = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # each query's look-alike
    plain = info_nce(q, items, torch.tensor(1.0))
    harder = info_nce(q, items, torch.tensor(1.0), hard=hard)
    blocked = info_nce(q, items, torch.tensor(1.0), hard=hard, hard_blocked=torch.ones(2, 2, dtype=torch.bool))
    assert float(harder) > float(plain)
    assert float(blocked) == pytest.approx(float(plain), rel=1e-6)
    # By hand: the query->item side gains one column per hard item; the item->query side is unchanged.
    q2i = -math.log(math.e / (math.e + 1 + math.e + 1))
    i2q = -math.log(math.e / (math.e + 1))
    assert float(harder) == pytest.approx((q2i + i2q) / 2, rel=1e-6)


def _settings(root: Path) -> Settings:
    return Settings(cache_dir=root / "cache", id_field="sku", text_fields=["prod_name", "detail_desc"],
                    image_field="picture")


def _inputs(root: Path) -> TrainingInputs:
    return TrainingInputs(catalog=root / "catalog.jsonl", queries=root / "queries.tsv", qrels=root / "qrels.tsv",
                          dev_fraction=0.2)


def test_training_with_hard_negatives_learns_and_records_them(synthetic_shop: Path, tmp_path: Path) -> None:
    settings = _settings(synthetic_shop)
    model = MultimodalModel.from_config(ModelConfig.tiny(), settings=settings)
    cfg = TrainConfig(stage1_epochs=3, stage2_epochs=3, batch_size=16, lr=5e-3, patience=10, hard_negatives=4)
    seen: list[dict] = []
    train_from_files(model, _inputs(synthetic_shop), settings, cfg, out_dir=tmp_path / "m", on_epoch=seen.append)
    assert seen[0]["loss"] > seen[-1]["loss"]
    saved = MultimodalModel.load(tmp_path / "m", settings=settings)
    assert saved.config.provenance["train_config"]["hard_negatives"] == 4


def test_a_hard_negative_field_no_product_has_is_refused_by_name(synthetic_shop: Path, tmp_path: Path) -> None:
    settings = _settings(synthetic_shop)
    model = MultimodalModel.from_config(ModelConfig.tiny(), settings=settings)
    cfg = TrainConfig(stage1_epochs=1, stage2_epochs=0, hard_negatives=4, hard_negative_field="article_type")
    with pytest.raises(ConfigError, match="--hard-negative-field 'article_type'"):
        train_from_files(model, _inputs(synthetic_shop), settings, cfg, out_dir=tmp_path / "m")
