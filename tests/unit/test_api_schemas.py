"""The API's request models: fusion fields of the method named, enums and defaults from the library."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, get_args

import pytest

from mm_opensearch.api.schemas import FusionIn, FusionOut, SearchIn, SearchOut
from mm_opensearch.client import create_client
from mm_opensearch.config import Settings
from mm_opensearch.hybrid import HybridSearcher, SearchRequest
from mm_opensearch.hybrid.fusion import FusionMethod, FusionOptions, Normalization, tuned_fusion, tuned_fusions
from mm_opensearch.hybrid.query import VectorKind
from mm_opensearch.hybrid.search import FusionPath, SearchMode

# what `eval --tune` stores: linear won on the dev slice, rrf has its own weights and rank constant
TUNED = {
    "default": "linear",
    "linear": {"normalization": "l2", "weights": [0.3, 0.7]},
    "rrf": {"weights": [1.0, 2.0], "rank_constant": 20},
}
LINEAR = FusionOptions(method="linear", normalization="l2", weights=(0.3, 0.7))
RRF = FusionOptions(method="rrf", weights=(1.0, 2.0), rank_constant=20)


@pytest.fixture
def searcher() -> Iterator[HybridSearcher]:
    """A searcher with the tuned fusion, as open_searcher builds it (no request reaches a node here)."""
    settings = Settings(opensearch_hosts=["http://127.0.0.1:9"])
    searcher = HybridSearcher(
        create_client(settings), settings, default_fusion=tuned_fusion(TUNED), method_fusions=tuned_fusions(TUNED)
    )
    yield searcher
    searcher.close()


def test_each_method_has_its_own_tuned_fusion() -> None:
    assert tuned_fusions(TUNED) == {"linear": LINEAR, "rrf": RRF}
    assert tuned_fusions({}) == {"linear": FusionOptions(method="linear", weights=(0.5, 0.5)), "rrf": FusionOptions()}


@pytest.mark.parametrize(
    ("fusion", "expected"),
    [
        (None, None),  # the searcher's default fusion applies
        ({}, LINEAR),
        ({"method": "rrf"}, RRF),
        ({"method": "rrf", "rank_constant": 5}, dataclasses.replace(RRF, rank_constant=5)),
        ({"method": "linear"}, LINEAR),
        ({"weights": [0.5, 0.5]}, dataclasses.replace(LINEAR, weights=(0.5, 0.5))),
        ({"method": "linear", "normalization": "min_max"}, dataclasses.replace(LINEAR, normalization="min_max")),
    ],
)
def test_a_requests_fusion_fields_come_from_the_method_it_names(
    searcher: HybridSearcher, fusion: dict[str, Any] | None, expected: FusionOptions | None
) -> None:
    body: dict[str, Any] = {"query": "red dress"} if fusion is None else {"query": "red dress", "fusion": fusion}
    assert SearchIn.model_validate(body).to_request(searcher.fusion_for).fusion == expected


def test_a_method_without_tuned_options_gets_the_librarys_defaults() -> None:
    settings = Settings(opensearch_hosts=["http://127.0.0.1:9"])
    searcher = HybridSearcher(create_client(settings), settings, default_fusion=LINEAR)
    try:
        assert searcher.fusion_for("rrf") == FusionOptions(method="rrf")
        assert searcher.fusion_for(None) == searcher.fusion_for("linear") == LINEAR
    finally:
        searcher.close()


def _enum(model: Any, name: str) -> list[str]:
    schema = model.model_json_schema()["properties"][name]
    options = schema.get("anyOf", [schema])
    return next(option["enum"] for option in options if "enum" in option)


@pytest.mark.parametrize(
    ("model", "name", "library_type"),
    [
        (SearchIn, "mode", SearchMode),
        (SearchIn, "vector", VectorKind),
        (SearchIn, "fusion_path", FusionPath),
        (FusionIn, "method", FusionMethod),
        (FusionIn, "normalization", Normalization),
        (FusionOut, "normalization", Normalization),
        (SearchOut, "requested_mode", SearchMode),
    ],
)
def test_the_apis_enums_are_the_librarys_types(model: Any, name: str, library_type: Any) -> None:
    assert _enum(model, name) == list(get_args(library_type))


def test_the_apis_defaults_are_the_librarys() -> None:
    body = SearchIn.model_validate({"query": "dress"})
    request = SearchRequest(query="dress")
    for name in ("mode", "size", "from_", "vector", "fusion_path", "explain"):
        assert getattr(body, name) == getattr(request, name), name
