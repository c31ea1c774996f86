"""Client-side fusion of ranked legs: reciprocal rank fusion and normalised linear combination.

The maths follows the neural-search plugin of OpenSearch 2.19, so a cluster without the plugin
ranks like one with it (checked against a 2.19.1 node in tests/integration/test_hybrid_search.py):

* RRF (``score-ranker-processor``): a document at rank r (1-based) of a leg gets w / (k + r); its
  fused score is the sum over the legs that returned it. 2.19 has no RRF weights, i.e. w = 1.
* Linear (``normalization-processor`` + ``arithmetic_mean``): each leg's scores are normalised over
  the hits that leg returned, then ``sum(w_i * s_i) / sum(w_i)`` over *all* legs, a leg that did
  not return the document counting 0 (what 2.19.1 does; newer releases skip such legs).

  - ``min_max``: (s - min) / (max - min); a result equal to min becomes 0.001 (never 0, so it
    still counts as found); a leg whose hits all score the same gives 1.0.
  - ``l2``: s / sqrt(sum of s^2) over the leg's hits (0.001 when that norm is 0).
  - ``z_score``: (s - mean) / sample std, values <= 0 becoming 0.001 as in the plugin. 2.19.1
    refuses ``z_score`` (3.x has it), so it always runs here; where the 3.x source returns the
    leg's *raw* maximum for a score equal to the mean (a score on another scale), this returns
    0.001, and 1.0 for a leg of identical scores, as min_max does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from mm_opensearch.errors import ConfigError, check_choice

__all__ = [
    "FusionMethod",
    "Normalization",
    "FusionOptions",
    "LegScore",
    "FusedHit",
    "Ranking",
    "MIN_SCORE",
    "rrf_scores",
    "normalize_scores",
    "linear_scores",
    "fuse",
    "tuned_fusion",
    "tuned_fusions",
]

FusionMethod = Literal["rrf", "linear"]
Normalization = Literal["min_max", "l2", "z_score"]
Ranking = Sequence[tuple[str, float]]  # (document id, raw score), best first
MIN_SCORE = 0.001
_SINGLE_RESULT_SCORE = 1.0
MAX_RANK_CONSTANT = 10_000  # the plugin's accepted interval is [1, 10000]


@dataclass(frozen=True)
class FusionOptions:
    """How two (or more) legs are fused; ``weights`` go leg by leg (lexical, vector)."""

    method: FusionMethod = "rrf"
    normalization: Normalization = "min_max"
    weights: tuple[float, ...] = (1.0, 1.0)
    rank_constant: int = 60

    def __post_init__(self) -> None:
        check_choice("fusion method", self.method, FusionMethod)
        check_choice("fusion normalization", self.normalization, Normalization)
        if not 1 <= self.rank_constant <= MAX_RANK_CONSTANT:
            msg = f"fusion rank_constant must be in [1, {MAX_RANK_CONSTANT}], got {self.rank_constant}"
            raise ConfigError(msg)
        if any(not math.isfinite(w) or w < 0 for w in self.weights) or not any(self.weights):
            msg = f"fusion weights must be finite, >= 0 and not all 0, got {list(self.weights)}"
            raise ConfigError(msg)


@dataclass(frozen=True)
class LegScore:
    """Where one leg placed a document: 1-based rank and the leg's raw score."""

    rank: int
    score: float


@dataclass(frozen=True)
class FusedHit:
    """A fused document: its fused score and, per leg, its rank and raw score (None: not returned)."""

    id: str
    score: float
    legs: tuple[LegScore | None, ...]


def _check_weights(rankings: Sequence[Ranking], weights: Sequence[float]) -> None:
    if len(weights) != len(rankings):
        msg = f"fusion weights: {len(weights)} given for {len(rankings)} legs; give one weight per leg"
        raise ConfigError(msg)


def rrf_scores(rankings: Sequence[Ranking], *, rank_constant: int, weights: Sequence[float]) -> dict[str, float]:
    """Reciprocal rank fusion: sum over legs of w / (k + rank), rank starting at 1."""
    _check_weights(rankings, weights)
    fused: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, (doc_id, _) in enumerate(ranking, start=1):
            fused[doc_id] = fused.get(doc_id, 0.0) + weight / (rank_constant + rank)
    return fused


def _min_max(scores: Sequence[float]) -> list[float]:
    low, high = min(scores), max(scores)
    if high == low:
        return [_SINGLE_RESULT_SCORE] * len(scores)
    return [((s - low) / (high - low)) or MIN_SCORE for s in scores]


def _l2(scores: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(s * s for s in scores))
    return [s / norm if norm else MIN_SCORE for s in scores]


def _z_score(scores: Sequence[float]) -> list[float]:
    n = len(scores)
    mean = sum(scores) / n
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1)) if n > 1 else 0.0
    if std == 0.0:
        return [_SINGLE_RESULT_SCORE] * n
    return [max((s - mean) / std, 0.0) or MIN_SCORE for s in scores]


_NORMALIZERS = {"min_max": _min_max, "l2": _l2, "z_score": _z_score}


def normalize_scores(scores: Sequence[float], technique: Normalization) -> list[float]:
    """One leg's raw scores normalised over that leg's hits (see the module docstring)."""
    if not scores:
        return []
    return _NORMALIZERS[technique](scores)


def linear_scores(
    rankings: Sequence[Ranking], *, normalization: Normalization, weights: Sequence[float]
) -> dict[str, float]:
    """Weighted arithmetic mean of normalised scores; a leg missing a document contributes 0."""
    _check_weights(rankings, weights)
    total_weight = sum(weights)
    fused: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        normalised = normalize_scores([score for _, score in ranking], normalization)
        for (doc_id, _), score in zip(ranking, normalised, strict=True):
            fused[doc_id] = fused.get(doc_id, 0.0) + weight * score
    return {doc_id: score / total_weight for doc_id, score in fused.items()}


def fuse(rankings: Sequence[Ranking], options: FusionOptions) -> list[FusedHit]:
    """Fused hits, best first; ties go to the better best-leg rank, then to the smaller id."""
    if options.method == "rrf":
        fused = rrf_scores(rankings, rank_constant=options.rank_constant, weights=options.weights)
    else:
        fused = linear_scores(rankings, normalization=options.normalization, weights=options.weights)
    positions: list[dict[str, LegScore]] = [
        {doc_id: LegScore(rank, score) for rank, (doc_id, score) in enumerate(ranking, start=1)}
        for ranking in rankings
    ]
    hits = [
        FusedHit(doc_id, score, tuple(leg.get(doc_id) for leg in positions)) for doc_id, score in fused.items()
    ]
    hits.sort(key=lambda h: (-h.score, min(leg.rank for leg in h.legs if leg is not None), h.id))
    return hits


def tuned_fusion(hybrid: Mapping[str, Any], method: FusionMethod | None = None) -> FusionOptions:
    """Fusion options stored in a model's config by ``eval --tune`` (defaults where absent).

    ``method=None`` picks the method that scored best on the dev slice (``hybrid["default"]``).
    """
    chosen = method or hybrid.get("default", "rrf")
    stored = hybrid.get(chosen) or {}
    if chosen == "linear":
        return FusionOptions(method="linear", normalization=stored.get("normalization", "min_max"),
                             weights=tuple(stored.get("weights", (0.5, 0.5))))
    return FusionOptions(method="rrf", weights=tuple(stored.get("weights", (1.0, 1.0))),
                         rank_constant=int(stored.get("rank_constant", 60)))


def tuned_fusions(hybrid: Mapping[str, Any]) -> dict[FusionMethod, FusionOptions]:
    """Each method's tuned options: a request naming a method gets that method's fields, not the default's."""
    return {method: tuned_fusion(hybrid, method) for method in get_args(FusionMethod)}
