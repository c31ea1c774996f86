"""Indices made with non-default vector options (MMOS_KNN_*) take vectors and answer k-NN queries on a real node."""

from __future__ import annotations

import numpy as np
import pytest
from opensearchpy import OpenSearch

from mm_opensearch.catalog import CatalogSchema
from mm_opensearch.hybrid.query import knn_query
from mm_opensearch.indexing import bulk_write, index_action, product_index_body
from mm_opensearch.indexing.bulk import vector_fields_doc
from mm_opensearch.indexing.mappings import VectorOptions

SCHEMA = CatalogSchema(text_fields={"title": 1.0}, filter_fields=("colour",), image_field=None)
DIM, N = 16, 60


def _vectors(seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(N, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _fill(client: OpenSearch, index: str, options: VectorOptions) -> dict[str, np.ndarray]:
    body = product_index_body(SCHEMA, sample={"colour": "red"}, dim=DIM, model_id="m", modalities=True, options=options)
    client.indices.create(index=index, body=body)
    vectors = {"fused": _vectors(0), "text": _vectors(1), "image": _vectors(2)}
    actions = [
        index_action(index, str(i), {
            "id": str(i), "title": f"product {i}", "colour": "red" if i % 2 else "blue",
            **vector_fields_doc(vectors["fused"][i], product_id=str(i), model_id="m", content_hash="h",
                                text=vectors["text"][i], image=vectors["image"][i]),
        })
        for i in range(N)
    ]
    report = bulk_write(client, actions, refresh="wait_for")
    assert report.succeeded == N and not report.failed
    return vectors


def _ids(client: OpenSearch, index: str, query: dict) -> list[str]:
    return [hit["_id"] for hit in client.search(index=index, body={"query": query, "size": 10})["hits"]["hits"]]


def _exact_order(vectors: np.ndarray, query: np.ndarray, mask: np.ndarray | None = None) -> list[str]:
    scores = vectors @ query
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    return [str(i) for i in np.argsort(-scores, kind="stable")[:10]]


@pytest.mark.parametrize(
    "options",
    [
        VectorOptions(encoder="sq"),
        VectorOptions(m=8, ef_construction=32, ef_search=64, modality_index="hnsw"),
        VectorOptions(modality_index="exact", encoder="sq", ef_search=32),
    ],
    ids=lambda o: o.label(),
)
def test_an_index_with_the_option_takes_vectors_and_answers_knn(
    client: OpenSearch, index_name: str, options: VectorOptions, cluster_version: tuple[int, ...]
) -> None:
    vectors = _fill(client, index_name, options)
    mapping = client.indices.get_mapping(index=index_name)[index_name]["mappings"]["properties"]
    fused_method = mapping["mm_fused"]["method"]
    assert fused_method["engine"] == "lucene"
    assert fused_method["parameters"]["m"] == options.m
    assert fused_method["parameters"]["ef_construction"] == options.ef_construction
    if options.encoder == "sq":
        assert fused_method["parameters"]["encoder"]["name"] == "sq"
    # 60 vectors in one segment: the graph finds the exact neighbours, quantized or not.
    query = vectors["fused"][7]
    knn = knn_query("fused", query, 10, [], ef_search=options.ef_search)
    found = _ids(client, index_name, knn)
    assert found[0] == "7" and len(found) == 10
    assert len(set(found) & set(_exact_order(vectors["fused"], query))) >= 8
    filtered = _ids(client, index_name, knn_query("fused", query, 10, [{"term": {"colour": "red"}}],
                                                  ef_search=options.ef_search))
    assert filtered[0] == "7" and all(int(i) % 2 for i in filtered)
    if options.modality_fields == "exact":
        settings = client.indices.get_settings(index=index_name, flat_settings=True)[index_name]["settings"]
        assert settings["index.knn.advanced.approximate_threshold"] == "-1"
        for kind in ("text", "image"):
            field = mapping[f"mm_{kind}"]
            assert "method" not in field and field["dimension"] == DIM
            # No graph: the plugin scans, so the order is exactly numpy's (filtered too), and the
            # searcher's ef_search, sent to every knn leg, is accepted there and changes nothing.
            q = vectors[kind][3]
            odd = np.arange(N) % 2 == 1
            for ef_search in (None, options.ef_search):
                assert _ids(client, index_name, knn_query(kind, q, 10, [], ef_search=ef_search)) == _exact_order(
                    vectors[kind], q
                )
                red = knn_query(kind, q, 10, [{"term": {"colour": "red"}}], ef_search=ef_search)
                assert _ids(client, index_name, red) == _exact_order(vectors[kind], q, odd)
    else:
        assert mapping["mm_text"]["method"] == fused_method


def test_a_knn_vector_index_false_is_dropped_by_the_plugin(
    client: OpenSearch, index_name: str, cluster_version: tuple[int, ...]
) -> None:
    """Why exact-only vectors are a field without a method: k-NN 2.19 accepts "index": false and ignores it."""
    if cluster_version >= (3,):
        pytest.skip("a fact about k-NN 2.19")
    field = {"type": "knn_vector", "dimension": 4, "index": False,
             "method": {"name": "hnsw", "engine": "lucene", "space_type": "cosinesimil"}}
    client.indices.create(index=index_name, body={"settings": {"index": {"knn": True}},
                                                  "mappings": {"properties": {"v": field}}})
    stored = client.indices.get_mapping(index=index_name)[index_name]["mappings"]["properties"]["v"]
    assert "index" not in stored and stored["method"]["name"] == "hnsw"
