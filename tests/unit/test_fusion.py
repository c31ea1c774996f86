"""Fusion maths against hand-computed examples and against numbers a real 2.19.1 node returned."""

from __future__ import annotations

import math

import pytest

from mm_opensearch.errors import ConfigError
from mm_opensearch.hybrid.fusion import (
    MIN_SCORE,
    FusionOptions,
    LegScore,
    fuse,
    linear_scores,
    normalize_scores,
    rrf_scores,
)

LEXICAL = [("a", 4.0), ("b", 2.0), ("c", 1.0)]
VECTOR = [("b", 0.9), ("d", 0.6)]

# Raw leg scores and the fused scores a 2.19.1 node with neural-search returned for them
# (one shard; "red dress" BM25 on six titles and a 3-d cosine k-NN leg, weights 0.3 / 0.7).
NODE_LEXICAL = [("a", 1.5442266), ("b", 1.4110175), ("e", 0.93125117), ("d", 0.51043475)]
NODE_VECTOR = [("a", 1.0), ("b", 0.99694186), ("c", 0.8535534), ("f", 0.85176325)]
NODE_MIN_MAX = {"a": 1.0, "b": 0.946902, "e": 0.122118, "c": 0.008453, "f": 0.0007, "d": 0.0003}
NODE_L2 = {"a": 0.574457, "b": 0.556269, "c": 0.321772, "f": 0.321097, "e": 0.119089, "d": 0.065275}
NODE_RRF = {"a": 0.032787, "b": 0.032258, "c": 0.015873, "e": 0.015873, "d": 0.015625, "f": 0.015625}


def test_rrf_sums_one_over_k_plus_rank_starting_at_one() -> None:
    scores = rrf_scores([LEXICAL, VECTOR], rank_constant=60, weights=(1.0, 1.0))
    assert scores == pytest.approx({"a": 1 / 61, "b": 1 / 62 + 1 / 61, "c": 1 / 63, "d": 1 / 62})


def test_rrf_weights_scale_each_leg_and_k_is_configurable() -> None:
    scores = rrf_scores([LEXICAL, VECTOR], rank_constant=1, weights=(2.0, 0.5))
    assert scores == pytest.approx({"a": 2 / 2, "b": 2 / 3 + 0.5 / 2, "c": 2 / 4, "d": 0.5 / 3})


def test_min_max_maps_the_minimum_to_the_plugins_floor_not_zero() -> None:
    assert normalize_scores([4.0, 2.0, 1.0], "min_max") == pytest.approx([1.0, 1 / 3, MIN_SCORE])


def test_min_max_of_identical_scores_is_one() -> None:
    assert normalize_scores([3.0], "min_max") == [1.0]
    assert normalize_scores([2.0, 2.0], "min_max") == [1.0, 1.0]


def test_l2_divides_by_the_norm_of_the_legs_scores() -> None:
    assert normalize_scores([3.0, 4.0], "l2") == pytest.approx([0.6, 0.8])
    assert normalize_scores([0.0, 0.0], "l2") == [MIN_SCORE, MIN_SCORE]


def test_z_score_uses_the_sample_deviation_and_floors_non_positive_values() -> None:
    # mean 2, sample std 1: z = 1, 0, -1 -> 1, floor, floor
    assert normalize_scores([3.0, 2.0, 1.0], "z_score") == pytest.approx([1.0, MIN_SCORE, MIN_SCORE])
    assert normalize_scores([5.0, 1.0], "z_score") == pytest.approx([2 / math.sqrt(8), MIN_SCORE])
    assert normalize_scores([7.0], "z_score") == [1.0]


def test_linear_combination_is_a_weighted_mean_where_a_missing_leg_counts_zero() -> None:
    scores = linear_scores([LEXICAL, VECTOR], normalization="min_max", weights=(1.0, 3.0))
    # lexical: a 1, b 1/3, c 0.001; vector: b 1, d 0.001
    assert scores == pytest.approx(
        {"a": 1 / 4, "b": (1 / 3 + 3) / 4, "c": MIN_SCORE / 4, "d": 3 * MIN_SCORE / 4}
    )


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (FusionOptions(method="linear", normalization="min_max", weights=(0.3, 0.7)), NODE_MIN_MAX),
        (FusionOptions(method="linear", normalization="l2", weights=(0.3, 0.7)), NODE_L2),
        (FusionOptions(method="rrf", rank_constant=60), NODE_RRF),
    ],
)
def test_client_fusion_reproduces_the_scores_of_a_2_19_node(options: FusionOptions, expected: dict[str, float]) -> None:
    fused = {hit.id: hit.score for hit in fuse([NODE_LEXICAL, NODE_VECTOR], options)}
    assert fused == pytest.approx(expected, abs=2e-6)


def test_linear_weights_are_scale_free() -> None:
    a = linear_scores([LEXICAL, VECTOR], normalization="l2", weights=(1.0, 1.0))
    b = linear_scores([LEXICAL, VECTOR], normalization="l2", weights=(0.5, 0.5))
    assert a == pytest.approx(b)


def test_fuse_orders_best_first_and_explains_each_leg() -> None:
    hits = fuse([LEXICAL, VECTOR], FusionOptions())
    assert [h.id for h in hits] == ["b", "a", "d", "c"]
    assert hits[0].legs == (LegScore(2, 2.0), LegScore(1, 0.9))
    assert hits[2].legs == (None, LegScore(2, 0.6))


def test_ties_go_to_the_better_best_rank_then_the_smaller_id() -> None:
    hits = fuse([[("x", 1.0), ("y", 0.5)], [("z", 1.0), ("w", 0.5)]], FusionOptions())
    assert [h.id for h in hits] == ["x", "z", "w", "y"]


def test_empty_legs_fuse_to_nothing() -> None:
    assert fuse([[], []], FusionOptions(method="linear")) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "max"},
        {"normalization": "softmax"},
        {"rank_constant": 0},
        {"rank_constant": 10_001},
        {"weights": (-1.0, 1.0)},
        {"weights": (0.0, 0.0)},
        {"weights": (float("nan"), 1.0)},
    ],
)
def test_invalid_fusion_options_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        FusionOptions(**kwargs)  # type: ignore[arg-type]


def test_one_weight_per_leg_is_required() -> None:
    with pytest.raises(ConfigError, match="one weight per leg"):
        fuse([LEXICAL, VECTOR], FusionOptions(weights=(1.0, 1.0, 1.0)))
