"""Pure builders: filters, leg bodies, the hybrid body, pipelines and request validation."""

from __future__ import annotations

from typing import Any

import pytest

from mm_opensearch.config import Settings
from mm_opensearch.errors import ConfigError
from mm_opensearch.hybrid.filters import build_filters, field_types, parse_filter_expressions
from mm_opensearch.hybrid.fusion import FusionOptions
from mm_opensearch.hybrid.pipelines import pipeline_body, pipeline_name
from mm_opensearch.hybrid.query import (
    candidate_id,
    hybrid_request,
    knn_query,
    leg_request,
    lexical_query,
    page_request,
)
from mm_opensearch.hybrid.search import MAX_QUERY_CHARS, SearchRequest, serving_settings

ALLOWED = ["gender", "brand", "price"]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"gender": "Women"}, [{"term": {"gender": "Women"}}]),
        ({"brand": ["Nike", "Puma"]}, [{"terms": {"brand": ["Nike", "Puma"]}}]),
        ({"price": {"gte": 100, "lt": 500.5}}, [{"range": {"price": {"gte": 100, "lt": 500.5}}}]),
        (
            {"price": {"lte": 9}, "gender": "Men"},
            [{"term": {"gender": "Men"}}, {"range": {"price": {"lte": 9}}}],
        ),
        ({}, []),
        (None, []),
    ],
)
def test_filters_become_term_terms_and_range_clauses(filters: dict[str, Any] | None, expected: list[dict[str, Any]]) -> None:
    assert build_filters(filters, ALLOWED) == expected


def test_an_unknown_filter_field_names_itself_and_the_allowed_ones() -> None:
    with pytest.raises(ConfigError) as e:
        build_filters({"colour": "red", "gender": "Women"}, ALLOWED)
    assert "'colour'" in str(e.value)
    assert "['brand', 'gender', 'price']" in str(e.value)


@pytest.mark.parametrize(
    ("filters", "reason"),
    [
        ({"price": {"between": [1, 2]}}, "range operators"),
        ({"price": {}}, "range operators"),
        ({"price": {"gte": [1]}}, "must be a number or a date string"),
        ({"price": {"gte": True}}, "must be a number or a date string"),
        ({"brand": []}, "empty"),
        ({"brand": [{"a": 1}]}, "must be a string, number or boolean"),
        ({"brand": None}, "must be a string, number or boolean"),
        ({"brand": "x" * 300}, "at most 256"),
        ({"brand": ["x"] * 2000}, "at most 1024"),
        ({"brand": "\ud800"}, "unpaired surrogate"),
        ({"price": float("inf")}, "finite"),
    ],
)
def test_malformed_filter_values_are_refused_with_the_field_named(filters: dict[str, Any], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as e:
        build_filters(filters, ALLOWED)
    assert f"'{next(iter(filters))}'" in str(e.value)


MAPPING = {
    "properties": {
        "price": {"type": "double"},
        "stock": {"type": "integer"},
        "in_stock": {"type": "boolean"},
        "updated_at": {"type": "date"},
        "gender": {"type": "keyword"},
        "year": {"type": "text", "fields": {"keyword": {"type": "keyword"}}},
        "shop": {"properties": {"rating": {"type": "float"}}},
        "cost": {"type": "alias", "path": "price"},
    }
}
TYPES = field_types(MAPPING)
TYPED = ["price", "stock", "in_stock", "updated_at", "gender", "year", "shop.rating", "cost"]


def test_field_types_cover_nested_fields_multi_fields_and_aliases() -> None:
    assert TYPES == {
        "price": "double",
        "stock": "integer",
        "in_stock": "boolean",
        "updated_at": "date",
        "gender": "keyword",
        "year": "text",
        "year.keyword": "keyword",
        "shop.rating": "float",
        "cost": "double",
    }


@pytest.mark.parametrize(
    ("filters", "reason"),
    [
        ({"price": "abc"}, "'price': \"abc\" is not a number, and 'price' is a number field \\(double\\)"),
        ({"price": [1, "x"]}, "'price': \"x\" is not a number"),
        ({"price": True}, "'price': true is not a number"),
        ({"price": {"gte": "now-1d"}}, "'price': \"now-1d\" is not a number"),
        ({"cost": "abc"}, "'cost': \"abc\" is not a number"),
        ({"shop.rating": {"lt": False}}, "must be a number or a date string"),
        ({"shop.rating": "1e999"}, "is not a number"),
        ({"stock": 1.5}, "'stock': 1.5 is not a whole number, and 'stock' is a integer field"),
        ({"in_stock": "yes"}, "'in_stock': \"yes\" is not a boolean"),
        ({"in_stock": 1}, "'in_stock': 1 is not a boolean"),
        ({"updated_at": True}, "'updated_at': true is not a date"),
    ],
)
def test_values_the_field_type_cannot_take_are_refused_with_the_field_and_type_named(
    filters: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ConfigError, match=reason):
        build_filters(filters, TYPED, TYPES)


@pytest.mark.parametrize(
    "filters",
    [
        {"price": 10},
        {"price": "10.5"},
        {"price": [1, 2.5]},
        {"price": {"gte": 1, "lt": "9"}},
        {"stock": {"gte": 1.5}},
        {"stock": 3.0},
        {"in_stock": True},
        {"in_stock": "false"},
        {"updated_at": {"gte": "now-1d"}},
        {"updated_at": 1700000000000},
        {"gender": "Women"},
        {"year": 2011},
        {"unmapped_yet": "x"},
    ],
)
def test_values_the_field_type_takes_pass(filters: dict[str, Any]) -> None:
    assert build_filters(filters, [*TYPED, "unmapped_yet"], TYPES) == build_filters(filters, [*TYPED, "unmapped_yet"])


def test_cli_filter_expressions_parse_to_the_same_filters() -> None:
    assert parse_filter_expressions(["gender=Women", "brand=Nike, Puma", "price>=100", "price<500"]) == {
        "gender": "Women",
        "brand": ["Nike", "Puma"],
        "price": {"gte": 100, "lt": 500},
    }
    with pytest.raises(ConfigError, match="malformed"):
        parse_filter_expressions(["gender"])
    with pytest.raises(ConfigError, match="both as a value and as a range"):
        parse_filter_expressions(["price=3", "price<4"])


FILTERS = [{"term": {"gender": "Women"}}]


def test_the_lexical_leg_is_multi_match_with_boosts_and_the_filters() -> None:
    assert lexical_query("red dress", ["title^2", "brand"], FILTERS) == {
        "bool": {
            "must": [{"multi_match": {"query": "red dress", "fields": ["title^2", "brand"], "type": "best_fields"}}],
            "filter": FILTERS,
        }
    }


def test_user_text_never_reaches_query_string_syntax() -> None:
    body = lexical_query('title:(a OR b) AND "x" ~2 \\', ["title"], [])
    assert "query_string" not in str(body)
    assert body["bool"]["must"][0]["multi_match"]["query"] == 'title:(a OR b) AND "x" ~2 \\'


def test_the_knn_leg_filters_inside_knn_with_the_same_clauses() -> None:
    knn = knn_query("fused", [0.5, 0.25], 100, FILTERS)
    assert knn == {"knn": {"mm_fused": {"vector": [0.5, 0.25], "k": 100, "filter": {"bool": {"filter": FILTERS}}}}}
    assert lexical_query("q", ["title"], FILTERS)["bool"]["filter"] == knn["knn"]["mm_fused"]["filter"]["bool"]["filter"]
    assert knn_query("image", [1.0], 5, []) == {"knn": {"mm_image": {"vector": [1.0], "k": 5}}}
    # MMOS_KNN_EF_SEARCH: the HNSW candidate list goes in method_parameters, beside k and the filter.
    tuned = knn_query("fused", [1.0], 5, FILTERS, ef_search=200)["knn"]["mm_fused"]
    assert tuned["method_parameters"] == {"ef_search": 200} and tuned["k"] == 5 and "filter" in tuned


def test_the_hybrid_body_fixes_the_fusion_depth_and_pages_inside_it() -> None:
    lexical, knn = lexical_query("q", ["title"], []), knn_query("fused", [1.0], 50, [])
    assert hybrid_request(lexical, knn, from_=10, size=10, depth=50) == {
        "query": {"hybrid": {"queries": [lexical, knn], "pagination_depth": 50}},
        "from": 10,
        "size": 10,
        # ids from mm_id doc values, no stored fields: documents of the page are fetched after fusion
        "_source": False,
        "stored_fields": "_none_",
        "docvalue_fields": ["mm_id"],
        "track_total_hits": False,
    }


def test_pages_are_read_without_vectors() -> None:
    page = leg_request({"match_all": {}}, size=3)
    assert page["_source"] == {"excludes": ["mm_fused", "mm_image", "mm_text"]}
    assert page_request(["b", "a"]) == {
        "query": {"ids": {"values": ["b", "a"]}},
        "size": 2,
        "_source": {"excludes": ["mm_fused", "mm_image", "mm_text"]},
        "track_total_hits": False,
    }
    candidates = leg_request({"match_all": {}}, size=3, source=False)
    assert candidates["_source"] is False
    assert candidates["stored_fields"] == "_none_"
    assert candidates["docvalue_fields"] == ["mm_id"]


def test_candidate_ids_never_ask_for_id_field_data() -> None:
    """``docvalue_fields: [_id]`` is refused where indices.id_field_data.enabled is false."""
    lexical, knn = lexical_query("q", ["title"], []), knn_query("fused", [1.0], 50, [])
    for id_doc_values in (True, False):
        bodies = [leg_request(lexical, size=5, source=False, id_doc_values=id_doc_values),
                  hybrid_request(lexical, knn, from_=0, size=5, depth=50, id_doc_values=id_doc_values)]
        for body in bodies:
            assert "_id" not in body.get("docvalue_fields", []) and body["_source"] is False
    stored = leg_request(lexical, size=5, source=False, id_doc_values=False)
    assert "stored_fields" not in stored and "docvalue_fields" not in stored  # the stored _id comes back


def test_a_candidate_id_is_read_from_mm_id_else_from_the_hit() -> None:
    assert candidate_id({"_score": 1.0, "fields": {"mm_id": ["p-7"]}}) == "p-7"
    assert candidate_id({"_score": 1.0, "_id": "p-8"}) == "p-8"
    assert candidate_id({"_score": 1.0}) is None  # fetched by doc values, but the document has no mm_id


def test_pipelines_are_named_by_their_parameters() -> None:
    assert pipeline_name(FusionOptions(rank_constant=20)) == "mmos-rrf-k20"
    linear = FusionOptions(method="linear", normalization="l2", weights=(1.0, 3.0))
    assert pipeline_name(linear) == "mmos-linear-l2-w0.25-0.75"
    assert pipeline_name(FusionOptions(method="linear", weights=(2.0, 2.0))) == "mmos-linear-min_max-w0.5-0.5"
    assert pipeline_body(linear)["phase_results_processors"] == [
        {
            "normalization-processor": {
                "normalization": {"technique": "l2"},
                "combination": {"technique": "arithmetic_mean", "parameters": {"weights": [0.25, 0.75]}},
            }
        }
    ]
    assert pipeline_body(FusionOptions())["phase_results_processors"] == [
        {"score-ranker-processor": {"combination": {"technique": "rrf", "rank_constant": 60}}}
    ]


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"size": 0}, "size"),
        ({"size": 101}, "size"),
        ({"from_": -1}, "from must be >= 0"),
        ({"from_": 9_995, "size": 10}, "from \\+ size"),
        ({"from_": 20, "size": 10, "depth": 25}, "depth"),
        ({"depth": 10_001}, "depth"),
        ({"query": "x" * (MAX_QUERY_CHARS + 1)}, "characters long"),
        ({"query": "  \t"}, "empty"),
        ({"query": "bad \udc00 text"}, "surrogate"),
        ({"mode": "sparse"}, "mode 'sparse' is unknown; use one of bm25, vector, hybrid"),
        ({"vector": "audio"}, "vector 'audio' is unknown; use one of fused, text, image"),
        ({"fusion_path": "gpu"}, "fusion_path 'gpu' is unknown; use one of auto, server, client"),
    ],
)
def test_search_requests_out_of_bounds_are_refused(kwargs: dict[str, Any], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        SearchRequest(**{"query": "red dress", **kwargs})


def test_the_fusion_depth_defaults_to_cover_the_page() -> None:
    assert SearchRequest("q").candidates == 100
    assert SearchRequest("q", from_=190, size=20).candidates == 210
    assert SearchRequest("q", depth=30).candidates == 30


def test_a_serving_process_runs_torch_on_one_thread_unless_configured() -> None:
    assert serving_settings(Settings(torch_threads=None)).torch_threads == 1
    assert serving_settings(Settings(torch_threads=2)).torch_threads == 2
