"""Request and response bodies of the HTTP API (separate input and output models).

Field bounds here document the API in its OpenAPI schema; cross-field rules (``from + size`` within
the window and the fusion depth, filter shapes and fields) are the library's, whose ConfigError
the app turns into a 422 with the reason. Enums and defaults are the library's own (its
``Literal`` types and :class:`SearchRequest`'s defaults), so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mm_opensearch.hybrid import MAX_QUERY_CHARS, MAX_SIZE, MAX_WINDOW, FusionOptions, SearchRequest, SearchResponse
from mm_opensearch.hybrid.fusion import MAX_RANK_CONSTANT, FusionMethod, Normalization
from mm_opensearch.hybrid.query import VectorKind
from mm_opensearch.hybrid.search import FusedOn, FusionPath, SearchMode

__all__ = ["FusionIn", "SearchIn", "LegOut", "HitOut", "FusionOut", "SearchOut", "HealthOut", "ReadyOut", "ErrorOut"]

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SearchRequest)}
_Weight = Annotated[float, Field(ge=0)]  # FusionOptions also refuses all-zero weights (a 422 with the reason)


class FusionIn(BaseModel):
    """How the lexical and vector legs are fused (hybrid mode). A field left out is the server's
    tuned value *for the method named* (the model's ``eval --tune`` result, else the defaults)."""

    model_config = ConfigDict(extra="forbid")

    method: FusionMethod | None = Field(default=None, description="default: the server's configured method")
    normalization: Normalization | None = Field(default=None, description="linear only")
    weights: tuple[_Weight, _Weight] | None = Field(
        default=None, description="(lexical, vector) weights, not both 0"
    )
    rank_constant: int | None = Field(
        default=None, ge=1, le=MAX_RANK_CONSTANT, description="rrf only: k in 1 / (k + rank)"
    )

    def to_options(self, fusion_for: Callable[[FusionMethod | None], FusionOptions]) -> FusionOptions:
        """The options of the method named (``fusion_for``: the searcher's tuned ones), with the fields given."""
        given = self.model_dump(exclude_none=True, exclude={"method"})
        return dataclasses.replace(fusion_for(self.method), **given)


class SearchIn(BaseModel):
    """A search. Pages are cut from the top ``k`` fused candidates: ``from + size <= k``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, examples=["red floral dress"])
    mode: SearchMode = _DEFAULTS["mode"]
    filters: dict[str, Any] = Field(
        default_factory=dict,
        description='term {"gender": "Women"}, terms {"brand": ["Nike", "Puma"]} or range '
        '{"price": {"gte": 100, "lt": 500}}, on the configured filter fields only, with values of each field\'s type '
        "(a number for a number field: a 422 otherwise)",
    )
    size: int = Field(default=_DEFAULTS["size"], ge=1, le=MAX_SIZE)
    from_: int = Field(default=_DEFAULTS["from_"], ge=0, lt=MAX_WINDOW, alias="from")
    k: int | None = Field(
        default=None,
        ge=1,
        le=MAX_WINDOW,
        description="Candidates per leg before fusion, at least from + size (default max(100, from + size))",
    )
    vector: VectorKind = _DEFAULTS["vector"]
    fusion: FusionIn | None = None
    fusion_path: FusionPath = Field(
        default=_DEFAULTS["fusion_path"],
        description="auto: on the node (neural-search on 2.x) where it fuses like the client, i.e. a single-shard "
        "index and a fusion the plugin supports; on the client otherwise, and always on 3.x (untested here). server "
        "refuses (422) where that does not hold, and on 3.x unless MMOS_SERVER_FUSION_ON_3X is set.",
    )
    explain: bool = _DEFAULTS["explain"]

    def to_request(self, fusion_for: Callable[[FusionMethod | None], FusionOptions]) -> SearchRequest:
        """The library request; ``fusion_for`` gives the tuned options of a fusion method (the searcher's)."""
        return SearchRequest(
            query=self.query,
            mode=self.mode,
            filters=self.filters,
            size=self.size,
            from_=self.from_,
            depth=self.k,
            vector=self.vector,
            fusion=self.fusion.to_options(fusion_for) if self.fusion is not None else None,
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
    method: FusionMethod
    normalization: Normalization
    weights: tuple[float, ...]
    rank_constant: int


class SearchOut(BaseModel):
    hits: list[HitOut]
    mode: SearchMode = Field(description="what ran (bm25 when degraded)")
    requested_mode: SearchMode
    fusion: FusionOut | None
    fusion_path: FusedOn | None
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


class ReadyOut(BaseModel):
    """Whether this process can serve every mode now; ``reason`` says what is missing when not."""

    ready: bool
    opensearch: bool
    index: str
    index_exists: bool
    model_id: str | None
    reason: str | None


class ErrorOut(BaseModel):
    """An error other than a 422: a short reason for the client (details are in the server's log)."""

    detail: str
