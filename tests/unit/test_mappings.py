"""Index bodies from the JSON templates, and the model-id guard on indices."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mm_opensearch.catalog import CatalogSchema
from mm_opensearch.errors import IndexCompatibilityError
from mm_opensearch.indexing import check_model_compatible, product_index_body, vector_properties
from mm_opensearch.indexing.bulk import json_floats, vector_fields_doc

SCHEMA = CatalogSchema(text_fields={"title": 2.0, "body": 1.0}, filter_fields=("colour", "price"))


def test_bm25_only_body_has_no_vectors_and_types_filters_from_the_sample() -> None:
    body = product_index_body(SCHEMA, sample={"colour": "red", "price": 9.5})
    props = body["mappings"]["properties"]
    assert props["title"]["type"] == "text" and props["body"]["type"] == "text"
    assert props["colour"]["type"] == "keyword" and props["price"]["type"] == "double"
    assert "mm_fused" not in props and "_meta" not in body["mappings"]
    assert body["settings"]["index"]["knn"] is False
    assert "knn.derived_source.enabled" not in body["settings"]["index"]


def test_vector_body_records_model_and_dimension() -> None:
    body = product_index_body(SCHEMA, dim=64, model_id="abc", modalities=True)
    props = body["mappings"]["properties"]
    for field in ("mm_fused", "mm_text", "mm_image"):
        assert props[field]["dimension"] == 64
    assert props["mm_fused"]["method"] == {
        "name": "hnsw", "engine": "lucene", "space_type": "cosinesimil",
        "parameters": {"m": 16, "ef_construction": 128},
    }
    assert props["mm_model_id"]["type"] == "keyword" and props["mm_embedded_at"]["type"] == "date"
    assert props["mm_id"] == {"type": "keyword", "index": False}  # doc values for candidate ids, never searched
    assert "_comment" not in props
    assert body["mappings"]["_meta"]["mm_opensearch"]["model_id"] == "abc"
    assert body["settings"]["index"]["knn"] is True
    assert body["settings"]["index"]["knn.derived_source.enabled"] is True  # vectors kept out of _source


def test_faiss_option_and_hnsw_parameters() -> None:
    props = vector_properties(8, engine="faiss", m=32, ef_construction=256)
    assert props["mm_fused"]["method"]["engine"] == "faiss"
    assert props["mm_fused"]["method"]["parameters"] == {"m": 32, "ef_construction": 256}


def test_query_tower_of_another_model_is_refused() -> None:
    mapping = product_index_body(SCHEMA, dim=64, model_id="model-a")["mappings"]
    assert check_model_compatible("p", mapping, "model-a", 64)["dim"] == 64
    with pytest.raises(IndexCompatibilityError, match="model model-a.*model-b"):
        check_model_compatible("p", mapping, "model-b", 64)
    with pytest.raises(IndexCompatibilityError, match="dim 64, the tower outputs 128"):
        check_model_compatible("p", mapping, "model-a", 128)
    with pytest.raises(IndexCompatibilityError, match="index augment"):
        check_model_compatible("p", product_index_body(SCHEMA)["mappings"], "model-a", 64)


def test_vectors_are_written_as_the_shortest_decimals_of_their_float32_values() -> None:
    vector = np.random.default_rng(0).normal(size=256).astype(np.float32)
    written = json_floats(vector)
    np.testing.assert_array_equal(np.asarray(written, dtype=np.float32), vector)  # exact round trip
    assert len(json.dumps(written)) < 0.7 * len(json.dumps(vector.tolist()))
    doc = vector_fields_doc(vector, product_id="p-1", model_id="m", content_hash="h", text=vector[::-1])
    assert doc["mm_id"] == "p-1"  # candidate ids are read from its doc values
    assert doc["mm_fused"] == written and doc["mm_text"] == json_floats(vector[::-1])


def test_default_vector_options_are_the_ones_the_scale_bench_chose() -> None:
    """lucene m16 efc128, ef_search 256, float, exact-only text and image (docs/benchmarks.md, Scale)."""
    from mm_opensearch.config import Settings
    from mm_opensearch.indexing.mappings import VectorOptions

    options = VectorOptions.from_settings(Settings(_env_file=None))
    assert options == VectorOptions()
    assert (options.engine, options.m, options.ef_construction, options.ef_search, options.encoder,
            options.modality_index, options.modality_fields) == ("lucene", 16, 128, 256, "none", "auto", "exact")
    default = product_index_body(SCHEMA, dim=64, model_id="abc", modalities=True)
    assert product_index_body(SCHEMA, dim=64, model_id="abc", modalities=True, options=VectorOptions()) == default
    props = default["mappings"]["properties"]
    assert props["mm_fused"]["method"]["parameters"] == {"m": 16, "ef_construction": 128}  # no encoder: float
    for field in ("mm_text", "mm_image"):
        assert props[field] == {"type": "knn_vector", "dimension": 64, "space_type": "cosinesimil"}
    assert default["settings"]["index"]["knn.advanced.approximate_threshold"] == -1
    # Without per-modality vectors the index keeps the plugin's threshold.
    fused_only = product_index_body(SCHEMA, dim=64, model_id="abc")["settings"]["index"]
    assert "knn.advanced.approximate_threshold" not in fused_only


def test_auto_modality_index_keeps_graphs_on_faiss(monkeypatch: pytest.MonkeyPatch) -> None:
    # approximate_threshold -1 is index-wide: on faiss exact-only fields would cost the fused graph too.
    from mm_opensearch.config import Settings
    from mm_opensearch.indexing.mappings import VectorOptions

    assert VectorOptions(engine="faiss").modality_fields == "hnsw"
    assert VectorOptions(engine="lucene").modality_fields == "exact"
    assert VectorOptions(engine="faiss").label() == "faiss m16 efc128 efs256"
    props = vector_properties(8, modalities=True, engine="faiss")
    assert props["mm_text"]["method"]["engine"] == "faiss"
    monkeypatch.setenv("MMOS_KNN_ENGINE", "faiss")
    settings = Settings(_env_file=None)  # auto is no conflict with faiss
    assert settings.knn_modality_index == "auto"
    assert VectorOptions.from_settings(settings).modality_fields == "hnsw"


def test_settings_reach_the_mapping_through_vector_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from mm_opensearch.config import Settings
    from mm_opensearch.indexing.mappings import VectorOptions

    for name, value in {"ENGINE": "faiss", "M": "32", "EF_CONSTRUCTION": "256", "EF_SEARCH": "200",
                        "ENCODER": "sq", "MODALITY_INDEX": "hnsw"}.items():
        monkeypatch.setenv(f"MMOS_KNN_{name}", value)
    options = VectorOptions.from_settings(Settings(_env_file=None))
    assert options == VectorOptions(engine="faiss", m=32, ef_construction=256, ef_search=200, encoder="sq",
                                    modality_index="hnsw")
    assert options.label() == "faiss m32 efc256 efs200 sq"


def test_exact_modality_fields_on_faiss_are_refused_naming_both_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # approximate_threshold -1 is index-wide: faiss would build no graph for the fused vector either.
    from pydantic import ValidationError

    from mm_opensearch.config import Settings
    from mm_opensearch.errors import ConfigError
    from mm_opensearch.indexing.mappings import VectorOptions

    with pytest.raises(ConfigError, match="MMOS_KNN_MODALITY_INDEX=exact.*MMOS_KNN_ENGINE=faiss"):
        VectorOptions(engine="faiss", modality_index="exact")
    monkeypatch.setenv("MMOS_KNN_ENGINE", "faiss")
    monkeypatch.setenv("MMOS_KNN_MODALITY_INDEX", "exact")
    with pytest.raises(ValidationError, match="MMOS_KNN_ENGINE=lucene or MMOS_KNN_MODALITY_INDEX=hnsw"):
        Settings(_env_file=None)
    assert VectorOptions(engine="lucene", modality_index="exact").modality_index == "exact"


def test_hnsw_parameters_and_encoders_per_engine() -> None:
    from mm_opensearch.indexing.mappings import VectorOptions

    body = product_index_body(SCHEMA, dim=8, model_id="m", options=VectorOptions(m=8, ef_construction=64, encoder="sq"))
    assert body["mappings"]["properties"]["mm_fused"]["method"] == {
        "name": "hnsw", "engine": "lucene", "space_type": "cosinesimil",
        "parameters": {"m": 8, "ef_construction": 64, "encoder": {"name": "sq"}},  # 7-bit, the plugin's default
    }
    faiss = vector_properties(8, engine="faiss", encoder="sq")["mm_fused"]["method"]
    assert faiss["space_type"] == "innerproduct"
    assert faiss["parameters"]["encoder"] == {"name": "sq", "parameters": {"type": "fp16"}}
    assert "encoder" not in vector_properties(8)["mm_fused"]["method"]["parameters"]


def test_exact_only_modality_vectors_have_no_method_and_the_index_builds_no_native_graph() -> None:
    from mm_opensearch.indexing.mappings import VectorOptions

    body = product_index_body(SCHEMA, dim=8, model_id="m", modalities=True,
                              options=VectorOptions(modality_index="exact", encoder="sq"))
    props = body["mappings"]["properties"]
    for field in ("mm_text", "mm_image"):
        assert props[field] == {"type": "knn_vector", "dimension": 8, "space_type": "cosinesimil"}
    assert props["mm_fused"]["method"]["engine"] == "lucene"  # the fused vector keeps its graph (and encoder)
    assert props["mm_fused"]["method"]["parameters"]["encoder"] == {"name": "sq"}
    assert body["settings"]["index"]["knn.advanced.approximate_threshold"] == -1
    # Without per-modality vectors there is nothing exact to map, and the index keeps the plugin's threshold.
    fused_only = product_index_body(SCHEMA, dim=8, model_id="m", options=VectorOptions(modality_index="exact"))
    assert set(fused_only["mappings"]["properties"]) & {"mm_text", "mm_image"} == set()
    assert "knn.advanced.approximate_threshold" not in fused_only["settings"]["index"]


def test_the_options_engine_maps_the_fused_vector() -> None:
    from mm_opensearch.indexing.mappings import VectorOptions

    body = product_index_body(SCHEMA, dim=8, model_id="m", options=VectorOptions(engine="faiss", m=24))
    method = body["mappings"]["properties"]["mm_fused"]["method"]
    assert method["engine"] == "faiss" and method["parameters"] == {"m": 24, "ef_construction": 128}
    assert method["space_type"] == "innerproduct"
