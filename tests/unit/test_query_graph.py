"""The query graph shipped in a model folder: PyTorch's vectors without torch, refused when stale."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mm_opensearch.config import Settings
from mm_opensearch.errors import ModelError
from mm_opensearch.hybrid.tower import load_query_tower
from mm_opensearch.towers import ModelConfig, MultimodalModel
from mm_opensearch.towers.onnx_text import export_query_graph
from mm_opensearch.towers.query_graph import GRAPH_DIR, GRAPH_FILE, OnnxQueryTower

QUERIES = ["red floral dress", "Men's BLACK shoes, size 9", "!!!", "red floral dress"]


@pytest.fixture
def exported(tmp_path: Path) -> tuple[MultimodalModel, Path]:
    model = MultimodalModel.from_config(ModelConfig.tiny(), use_feature_cache=False)
    folder = model.save(tmp_path / "tiny")
    export_query_graph(model, folder)
    return model, folder


def test_the_shipped_graph_gives_pytorchs_vectors(exported: tuple[MultimodalModel, Path]) -> None:
    model, folder = exported
    tower = OnnxQueryTower(folder)
    assert tower.model_id == model.model_id and tower.dim == model.dim
    np.testing.assert_allclose(tower.encode_queries(QUERIES), model.encode_queries(QUERIES), atol=1e-5)


def test_the_searcher_loads_the_shipped_graph(exported: tuple[MultimodalModel, Path], tmp_path: Path) -> None:
    model, folder = exported
    tower = load_query_tower(Settings(model_dir=folder, cache_dir=tmp_path / "cache"))
    assert isinstance(tower, OnnxQueryTower) and tower.model_id == model.model_id
    torch_tower = load_query_tower(Settings(model_dir=folder, cache_dir=tmp_path / "cache", query_runtime="torch"))
    assert isinstance(torch_tower, MultimodalModel)


def test_a_graph_of_other_weights_is_refused_naming_the_command(exported: tuple[MultimodalModel, Path]) -> None:
    _, folder = exported
    spec = folder / GRAPH_DIR / GRAPH_FILE
    spec.write_text(json.dumps({**json.loads(spec.read_text()), "model_id": "mmos-0000000000000000"}))
    with pytest.raises(ModelError, match="export-query-graph"):
        OnnxQueryTower(folder)
