"""The augment plan and bodies follow the vector options (MMOS_KNN_*), in place and by copy (no services)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mm_opensearch.augment import plan_augment, run_augment
from mm_opensearch.augment.inspect import IndexReport
from mm_opensearch.augment.plan import AugmentPlan, copy_index_body, in_place_settings, vector_mapping_update
from mm_opensearch.catalog import CatalogSchema
from mm_opensearch.config import get_settings
from mm_opensearch.errors import ConfigError
from mm_opensearch.indexing.mappings import VectorOptions, product_index_body

run_module = importlib.import_module("mm_opensearch.augment.run")
index_cli = importlib.import_module("mm_opensearch.cli.index")

SCHEMA = CatalogSchema(text_fields={"title": 1.0}, filter_fields=())
TUNED = VectorOptions(m=24, ef_construction=200, encoder="sq", modality_index="exact")
VECTOR_KEYS = {"mm_fused", "mm_text", "mm_image"}


def _report(*, knn: bool = True, properties: dict[str, Any] | None = None) -> IndexReport:
    """A team's BM25 index: k-NN on (in place) or off (copy + swap behind an alias)."""
    props = {"title": {"type": "text"}, "updated_at": {"type": "date"}, **(properties or {})}
    return IndexReport(
        name="products", index="products", aliases={"products-read": {}}, docs=10, knn=knn, write_blocked=False,
        model=None, vector_fields=[], missing_text_fields=[], updated_at_field="updated_at", has_updated_at=True,
        settings={"knn": str(knn).lower(), "number_of_shards": "1", "uuid": "x"},
        mappings={"properties": props, "_meta": {"team": "kept"}},
        augment=None, vectors_in_source=True, docs_without_id=0,
    )


def _plan(report: IndexReport, options: VectorOptions, *, modalities: bool = True) -> AugmentPlan:
    return plan_augment(report, model_id="m1", dim=8, modalities=modalities, options=options)


@pytest.mark.parametrize("knn", [True, False])
def test_the_plan_carries_the_options_and_its_steps_name_them(knn: bool) -> None:
    plan = _plan(_report(knn=knn), TUNED)
    assert plan.strategy == ("in_place" if knn else "reindex")
    assert plan.options == TUNED
    assert any("lucene m24 efc200 efs256 sq modal:exact" in step for step in plan.steps)
    assert any("approximate_threshold=-1" in step for step in plan.steps)


def test_without_options_the_plan_maps_the_default_options() -> None:
    plan = plan_augment(_report(), model_id="m1", dim=8)
    assert plan.options == VectorOptions()
    assert not any("approximate_threshold" in step for step in plan.steps)  # no modality fields: no switch
    with_modalities = _plan(_report(), VectorOptions())
    assert with_modalities.exact_modalities  # auto on lucene: text and image exact-only
    assert in_place_settings(with_modalities) == {"knn.advanced.approximate_threshold": -1}


def test_the_mapping_update_has_the_fields_index_create_maps_for_the_same_options() -> None:
    update = vector_mapping_update(_report().mappings, model_id="m1", dim=8, modalities=True, options=TUNED)
    props = update["properties"]
    fused = props["mm_fused"]["method"]
    assert fused["parameters"] == {"m": 24, "ef_construction": 200, "encoder": {"name": "sq"}}
    for field in ("mm_text", "mm_image"):  # exact: no method, so no graph
        assert props[field] == {"type": "knn_vector", "dimension": 8, "space_type": "cosinesimil"}
    created = product_index_body(SCHEMA, dim=8, model_id="m1", modalities=True, options=TUNED)
    assert props == {k: v for k, v in created["mappings"]["properties"].items() if k.startswith("mm_")}
    assert update["_meta"]["team"] == "kept" and update["_meta"]["mm_opensearch"]["model_id"] == "m1"


def test_hnsw_modalities_get_the_options_graph_and_faiss_its_engine() -> None:
    options = VectorOptions(engine="faiss", m=32, ef_construction=64)
    props = vector_mapping_update({}, model_id="m1", dim=8, modalities=True, options=options)["properties"]
    for field in VECTOR_KEYS:
        method = props[field]["method"]
        assert method["engine"] == "faiss" and method["parameters"] == {"m": 32, "ef_construction": 64}


def test_the_copy_turns_native_graphs_off_only_for_exact_modalities() -> None:
    report = _report(knn=False)
    update = vector_mapping_update(report.mappings, model_id="m1", dim=8, modalities=True, options=TUNED)
    body = copy_index_body(report, update, options=TUNED, modalities=True)
    index = body["settings"]["index"]
    assert index["knn.advanced.approximate_threshold"] == -1 and index["knn"] is True
    assert "uuid" not in index and index["number_of_shards"] == "1"
    assert body["mappings"]["properties"]["mm_text"] == update["properties"]["mm_text"]
    fused_only = vector_mapping_update(report.mappings, model_id="m1", dim=8, modalities=False, options=TUNED)
    index = copy_index_body(report, fused_only, options=TUNED, modalities=False)["settings"]["index"]
    assert "knn.advanced.approximate_threshold" not in index


def test_in_place_puts_the_dynamic_threshold_setting_only_for_exact_modalities() -> None:
    assert in_place_settings(_plan(_report(), TUNED)) == {"knn.advanced.approximate_threshold": -1}
    assert in_place_settings(_plan(_report(), TUNED, modalities=False)) == {}
    assert in_place_settings(_plan(_report(), VectorOptions(modality_index="hnsw"))) == {}
    assert in_place_settings(_plan(_report(knn=False), TUNED)) == {}  # the copy's create body carries it


@pytest.mark.parametrize("engine", [None, "faiss", "nmslib"])
def test_exact_modalities_are_refused_where_the_team_has_native_vector_fields(engine: str | None) -> None:
    field: dict[str, Any] = {"type": "knn_vector", "dimension": 4}
    if engine:
        field["method"] = {"name": "hnsw", "engine": engine}
    nested = {"object_field": {"properties": {"embedding": field}}}
    with pytest.raises(ConfigError, match=r"MMOS_KNN_MODALITY_INDEX=hnsw") as caught:
        _plan(_report(properties=nested), TUNED)
    assert "object_field.embedding" in str(caught.value)
    # Without exact modalities the setting is never touched, so such fields are no obstacle; the default
    # (auto) gives way to them: the modality fields get graphs, and the plan says why.
    auto = _plan(_report(properties=nested), VectorOptions())
    assert auto.strategy == "in_place" and not auto.exact_modalities and in_place_settings(auto) == {}
    assert auto.options.modality_fields == "hnsw"
    assert any("get graphs" in step and "object_field.embedding" in step for step in auto.steps)
    copy = _plan(_report(knn=False, properties=nested), VectorOptions())
    assert copy.strategy == "reindex" and any("get graphs" in step for step in copy.steps)
    assert _plan(_report(properties=nested), TUNED, modalities=False).strategy == "in_place"


def test_a_lucene_vector_field_of_the_team_does_not_block_exact_modalities() -> None:
    own = {"embedding": {"type": "knn_vector", "dimension": 4, "method": {"name": "hnsw", "engine": "lucene"}}}
    assert _plan(_report(properties=own), TUNED).strategy == "in_place"


class _Indices:
    def __init__(self, calls: list[tuple[str, dict[str, Any]]]) -> None:
        self.calls = calls

    def put_settings(self, *, index: str, body: dict[str, Any]) -> None:
        self.calls.append(("put_settings", body))

    def put_mapping(self, *, index: str, body: dict[str, Any]) -> None:
        self.calls.append(("put_mapping", body))


class _Client:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.indices = _Indices(self.calls)


class _Embedder:
    def __init__(self) -> None:
        self.backfilled: list[str] = []

    def backfill(self, index: str, *, tune: bool) -> None:
        self.backfilled.append(index)

    def embed(self, index: str, ids: list[str]) -> None:
        raise AssertionError("in place backfills, never embeds ids")


@pytest.mark.parametrize(
    ("options", "settings_put"),
    [(TUNED, True), (VectorOptions(m=24), True), (VectorOptions(m=24, modality_index="hnsw"), False)],
)
def test_run_in_place_sets_the_threshold_before_adding_the_fields(
    monkeypatch: pytest.MonkeyPatch, options: VectorOptions, settings_put: bool
) -> None:
    report = _report()
    monkeypatch.setattr(run_module, "inspect_index", lambda client, name, schema: report)
    monkeypatch.setattr(run_module, "detect_capabilities", lambda client: None)
    monkeypatch.setattr(run_module, "provision_pipelines", lambda client, capabilities, fusions: None)
    monkeypatch.setattr(run_module, "record_capabilities", lambda client, index, capabilities: None)
    client, embedder = _Client(), _Embedder()
    run_augment(client, _plan(report, options), embedder, schema=SCHEMA)  # type: ignore[arg-type]
    names = [name for name, _ in client.calls]
    assert names == (["put_settings", "put_mapping"] if settings_put else ["put_mapping"])
    if settings_put:
        assert client.calls[0][1] == {"index": {"knn.advanced.approximate_threshold": -1}}
    mapping = client.calls[-1][1]["properties"]
    assert mapping["mm_fused"]["method"]["parameters"]["m"] == 24
    assert embedder.backfilled == ["products"]


@pytest.fixture
def cli_plans(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[AugmentPlan]]:
    """`index augment --dry-run` against a stub cluster and model; yields the plans it printed."""
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    for name in ("ENGINE", "M", "EF_CONSTRUCTION", "EF_SEARCH", "ENCODER", "MODALITY_INDEX"):
        monkeypatch.delenv(f"MMOS_KNN_{name}", raising=False)
    monkeypatch.setenv("MMOS_TEXT_FIELDS", "title")
    report = _report()
    plans: list[AugmentPlan] = []
    model = type("Model", (), {"model_id": "m1", "dim": 8})()
    monkeypatch.setattr(index_cli, "connect_opensearch", lambda settings: object())
    monkeypatch.setattr(index_cli, "_model", lambda: model)
    monkeypatch.setattr(index_cli, "inspect_index", lambda client, name, schema: report)
    monkeypatch.setattr(index_cli, "_print_plan", plans.append)
    get_settings.cache_clear()
    yield plans
    get_settings.cache_clear()


def _augment(*args: str) -> Any:
    get_settings.cache_clear()
    return CliRunner().invoke(index_cli.app, ["augment", "products", "--dry-run", *args])


def test_cli_builds_the_options_from_the_settings(monkeypatch: pytest.MonkeyPatch, cli_plans: list[AugmentPlan]) -> None:
    monkeypatch.setenv("MMOS_KNN_ENGINE", "faiss")
    monkeypatch.setenv("MMOS_KNN_M", "32")
    monkeypatch.setenv("MMOS_KNN_ENCODER", "sq")
    result = _augment("--modalities")
    assert result.exit_code == 0, result.output
    assert cli_plans[-1].options == VectorOptions(engine="faiss", m=32, encoder="sq")
    assert cli_plans[-1].modalities


def test_cli_engine_flag_overrides_only_the_engine(monkeypatch: pytest.MonkeyPatch, cli_plans: list[AugmentPlan]) -> None:
    monkeypatch.setenv("MMOS_KNN_ENGINE", "faiss")
    monkeypatch.setenv("MMOS_KNN_M", "32")
    monkeypatch.setenv("MMOS_KNN_EF_CONSTRUCTION", "256")
    monkeypatch.setenv("MMOS_KNN_EF_SEARCH", "100")
    monkeypatch.setenv("MMOS_KNN_ENCODER", "sq")
    assert _augment("--engine", "lucene").exit_code == 0
    assert cli_plans[-1].options == VectorOptions(engine="lucene", m=32, ef_construction=256, ef_search=100,
                                                  encoder="sq")
    monkeypatch.setenv("MMOS_KNN_ENGINE", "lucene")
    assert _augment("--engine", "faiss").exit_code == 0
    assert cli_plans[-1].options.engine == "faiss" and cli_plans[-1].options.m == 32


def test_cli_refuses_engine_faiss_with_exact_modalities(
    monkeypatch: pytest.MonkeyPatch, cli_plans: list[AugmentPlan]
) -> None:
    monkeypatch.setenv("MMOS_KNN_MODALITY_INDEX", "exact")
    result = _augment("--engine", "faiss", "--modalities")
    assert isinstance(result.exception, ConfigError)
    assert "--engine faiss" in str(result.exception) and "MMOS_KNN_MODALITY_INDEX=hnsw" in str(result.exception)
    assert cli_plans == []
    assert _augment("--engine", "lucene", "--modalities").exit_code == 0  # the setting's own engine is fine
    assert cli_plans[-1].options.modality_index == "exact"
