"""Hybrid (BM25 + k-NN) search: filters, request builders, fusion, search pipelines, the searcher."""

from mm_opensearch.hybrid.filters import build_filters, parse_filter_expressions
from mm_opensearch.hybrid.fusion import FusedHit, FusionOptions, LegScore, fuse, linear_scores, normalize_scores, rrf_scores
from mm_opensearch.hybrid.pipelines import PipelineRegistry, pipeline_body, pipeline_name
from mm_opensearch.hybrid.query import hybrid_request, knn_query, leg_request, lexical_query, page_request
from mm_opensearch.hybrid.search import (
    DEFAULT_DEPTH,
    MAX_QUERY_CHARS,
    MAX_SIZE,
    MAX_WINDOW,
    HybridSearcher,
    SearchHit,
    SearchMode,
    SearchRequest,
    SearchResponse,
    open_searcher,
    serving_settings,
)
from mm_opensearch.hybrid.tower import QueryTower, load_query_tower

__all__ = [
    "DEFAULT_DEPTH",
    "MAX_QUERY_CHARS",
    "MAX_SIZE",
    "MAX_WINDOW",
    "FusedHit",
    "FusionOptions",
    "HybridSearcher",
    "LegScore",
    "PipelineRegistry",
    "QueryTower",
    "SearchHit",
    "SearchMode",
    "SearchRequest",
    "SearchResponse",
    "build_filters",
    "fuse",
    "hybrid_request",
    "knn_query",
    "leg_request",
    "lexical_query",
    "linear_scores",
    "load_query_tower",
    "page_request",
    "normalize_scores",
    "open_searcher",
    "serving_settings",
    "parse_filter_expressions",
    "pipeline_body",
    "pipeline_name",
    "rrf_scores",
]
