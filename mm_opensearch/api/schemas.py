"""Request and response bodies of the HTTP API (separate input and output models).

Field bounds here document the API in its OpenAPI schema; cross-field rules (``from + size`` within
the window and the fusion depth, filter shapes and fields) are the library's, whose ConfigError
the app turns into a 422 with the reason.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mm_opensearch.hybrid import MAX_QUERY_CHARS, MAX_SIZE, MAX_WINDOW, FusionOptions, SearchRequest, SearchResponse
from mm_opensearch.hybrid.fusion import MAX_RANK_CONSTANT

__all__ = ["FusionIn", "SearchIn", "LegOut", "HitOut", "FusionOut", "SearchOut", "HealthOut"]


class FusionIn(BaseModel):
    """How the lexical and vector legs are fused (hybrid mode)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["rrf", "linear"] = "rrf"
    normalization: Literal["min_max", "l2", "z_score"] = Field(default="min_max", description="linear only")
    weights: tuple[float, float] | None = Field(
        default=None, description="(lexical, vector) weights; default: the server's configured fusion"
    )
    rank_constant: int = Field(default=60, ge=1, le=MAX_RANK_CONSTANT, description="rrf only: k in 1 / (k + rank)")

    def to_options(self, default: FusionOptions) -> FusionOptions:
        return FusionOptions(
            method=self.method,
            normalization=self.normalization,
            weights=self.weights if self.weights is not None else default.weights,
            rank_constant=self.rank_constant,
        )


class SearchIn(BaseModel):
    """A search. Pages are cut from the top ``k`` fused candidates: ``from + size <= k``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, examples=["red floral dress"])
    mode: Literal["bm25", "vector", "hybrid"] = "hybrid"
    filters: dict[str, Any] = Field(
        default_factory=dict,
        description='term {"gender": "Women"}, terms {"brand": ["Nike", "Puma"]} or range '
        '{"price": {"gte": 100, "lt": 500}}, on the configured filter fields only',
    )
    size: int = Field(default=10, ge=1, le=MAX_SIZE)
    from_: int = Field(default=0, ge=0, lt=MAX_WINDOW, alias="from")
    k: int | None = Field(
        default=None, ge=1, le=MAX_WINDOW, description="Candidates per leg before fusion (default max(100, from+size))"
    )
    vector: Literal["fused", "text", "image"] = "fused"
    fusion: FusionIn | None = None
    fusion_path: Literal["auto", "server", "client"] = Field(
        default="auto",
        description="auto: on the node (neural-search) where it fuses like the client, i.e. a single-shard index and "
        "a fusion the plugin supports; on the client otherwise. server refuses (422) where that does not hold.",
    )
    explain: bool = False

    def to_request(self, default_fusion: FusionOptions) -> SearchRequest:
        return SearchRequest(
            query=self.query,
            mode=self.mode,
            filters=self.filters,
            size=self.size,
            from_=self.from_,
            depth=self.k,
            vector=self.vector,
            fusion=self.fusion.to_options(default_fusion) if self.fusion is not None else None,
            explain=self.explain,
            fusion_path=self.fusion_path,
        )


class LegOut(BaseModel):
    rank: int = Field(description="1-based rank in this leg")
    score: float = Field(description="the leg's raw score (BM25, or k-NN similarity)")


class HitOut(BaseModel):
    id: str
    score: float
    source: dict[str, Any]
    explain: dict[str, LegOut | None] | None = Field(
        default=None, description="per leg (lexical, vector): rank and score, null where the leg missed the hit"
    )


class FusionOut(BaseModel):
    method: str
    normalization: str
    weights: tuple[float, ...]
    rank_constant: int


class SearchOut(BaseModel):
    hits: list[HitOut]
    mode: Literal["bm25", "vector", "hybrid"] = Field(description="what ran (bm25 when degraded)")
    requested_mode: Literal["bm25", "vector", "hybrid"]
    fusion: FusionOut | None
    fusion_path: Literal["server", "client"] | None
    degraded: bool
    degraded_reason: str | None
    took_ms: dict[str, float]

    @classmethod
    def from_response(cls, response: SearchResponse) -> SearchOut:
        return cls(
            hits=[
                HitOut(
                    id=hit.id,
                    score=hit.score,
                    source=hit.source,
                    explain=None
                    if hit.legs is None
                    else {
                        leg: None if where is None else LegOut(rank=where.rank, score=where.score)
                        for leg, where in hit.legs.items()
                    },
                )
                for hit in response.hits
            ],
            mode=response.mode,
            requested_mode=response.requested_mode,
            fusion=None if response.fusion is None else FusionOut(**vars(response.fusion)),
            fusion_path=response.fusion_path,
            degraded=response.degraded,
            degraded_reason=response.degraded_reason,
            took_ms=response.timings_ms,
        )


class HealthOut(BaseModel):
    status: Literal["ok", "degraded", "unavailable"]
    opensearch: bool
    index: str
    model_id: str | None
    tower_error: str | None
