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
        assert props[field]["method"] == {
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
