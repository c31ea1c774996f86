"""Evaluation end to end on the real node: a catalog with other field names, trained tiny towers,
every mode indexed and searched through the library, a report, and tuned hybrid weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opensearchpy import OpenSearch

from mm_opensearch.catalog import CatalogSchema, read_catalog
from mm_opensearch.config import Settings
from mm_opensearch.evaluation.report import write_report
from mm_opensearch.evaluation.runner import ALL_MODES, run_evaluation
from mm_opensearch.evaluation.tuning import stored_fusion, tune_fusion
from mm_opensearch.judgments import load_qrels, load_queries
from mm_opensearch.towers import ModelConfig, MultimodalModel
from mm_opensearch.training import TrainConfig, TrainingInputs, train_from_files

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def shop_settings(synthetic_shop: Path, settings: Settings) -> Settings:
    return settings.model_copy(update={
        "cache_dir": synthetic_shop / "cache", "id_field": "sku", "text_fields": ["prod_name", "detail_desc"],
        "image_field": "picture", "filter_fields": ["kind"],
    })


@pytest.fixture(scope="module")
def trained(synthetic_shop: Path, shop_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("models")
    inputs = TrainingInputs(catalog=synthetic_shop / "catalog.jsonl", queries=synthetic_shop / "queries.tsv",
                            qrels=synthetic_shop / "qrels.tsv", dev_fraction=0.2)
    for name, modalities in (("mm", "multimodal"), ("text", "text")):
        model = MultimodalModel.from_config(ModelConfig.tiny(), settings=shop_settings)
        cfg = TrainConfig(stage1_epochs=15, stage2_epochs=15, batch_size=16, lr=5e-3, patience=15, modalities=modalities)
        train_from_files(model, inputs, shop_settings, cfg, out_dir=out / name)
    return {"mm": out / "mm", "text": out / "text"}


def test_every_mode_is_scored_and_images_help_where_text_is_silent(
    client: OpenSearch, index_name: str, synthetic_shop: Path, shop_settings: Settings, trained: dict[str, Path],
    tmp_path: Path,
) -> None:
    products = list(read_catalog(synthetic_shop / "catalog.jsonl", CatalogSchema.from_settings(shop_settings)))
    model = MultimodalModel.load(trained["mm"], settings=shop_settings)
    text_model = MultimodalModel.load(trained["text"], settings=shop_settings)
    result = run_evaluation(
        client, shop_settings, products, load_queries(synthetic_shop / "queries.tsv"),
        load_qrels(synthetic_shop / "qrels.tsv"), model=model, text_model=text_model, index_prefix=index_name,
        image_roots=[synthetic_shop],
    )
    assert set(result.modes) == set(ALL_MODES)
    for scores in result.modes.values():
        assert all(0.0 <= v <= 1.0 for v in scores.values())
    # Colour lives only in the picture: the image-aware vectors must beat every text-only ranking.
    assert result.modes["fused"]["ndcg@10"] > result.modes["dense_text"]["ndcg@10"] + 0.1
    assert result.modes["fused"]["ndcg@10"] > result.modes["bm25"]["ndcg@10"] + 0.1
    assert result.p_values["fused_vs_dense_text"] < 0.05
    report = write_report(result, tmp_path / "report", header={"model_id": model.model_id})
    document = json.loads(report.read_text())
    assert document["modes"]["bm25"] == result.modes["bm25"] and document["model_id"] == model.model_id
    assert (tmp_path / "report" / "report.png").stat().st_size > 1000
    assert "| fused |" in (tmp_path / "report" / "report.md").read_text()


def test_tuned_weights_are_stored_without_changing_the_model_id(
    client: OpenSearch, index_name: str, synthetic_shop: Path, shop_settings: Settings, trained: dict[str, Path],
    tmp_path: Path,
) -> None:
    products = list(read_catalog(synthetic_shop / "catalog.jsonl", CatalogSchema.from_settings(shop_settings)))
    folder = tmp_path / "model"
    MultimodalModel.load(trained["mm"], settings=shop_settings).save(folder)
    model = MultimodalModel.load(folder, settings=shop_settings)
    before = model.model_id
    linear, rrf = tune_fusion(client, shop_settings, products, load_queries(synthetic_shop / "queries.tsv"),
                              load_qrels(synthetic_shop / "qrels.tsv"), model=model, model_dir=folder,
                              index_prefix=index_name, image_roots=[synthetic_shop])
    reloaded = MultimodalModel.load(folder, settings=shop_settings)
    assert reloaded.model_id == before
    assert stored_fusion(reloaded) == (linear, rrf)
    assert reloaded.config.hybrid["default"] in {"linear", "rrf"}
