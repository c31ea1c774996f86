"""Metrics against hand-computed values: graded nDCG (2^g - 1), grade-2-only Recall and MRR."""

from __future__ import annotations

import math

import pytest

from mm_opensearch.evaluation.metrics import evaluate_run, paired_test, score_run


def test_graded_ndcg_recall_and_mrr_by_hand() -> None:
    qrels = {"q1": {"a": 2, "b": 1, "c": 2}}
    run = {"q1": {"b": 3.0, "x": 2.0, "a": 1.0}}  # ranking: b (grade 1), x (0), a (grade 2)
    dcg = (2**1 - 1) / math.log2(2) + 0 + (2**2 - 1) / math.log2(4)
    ideal = 3 / math.log2(2) + 3 / math.log2(3) + 1 / math.log2(4)
    scores = evaluate_run(qrels, run)
    assert scores["ndcg@10"] == pytest.approx(dcg / ideal, rel=1e-6)
    assert scores["recall@100"] == pytest.approx(1 / 2)  # a found, c missing; b (grade 1) does not count
    assert scores["mrr@10"] == pytest.approx(1 / 3)  # first grade-2 item at rank 3


def test_a_query_without_results_counts_as_zero() -> None:
    qrels = {"q1": {"a": 2}, "q2": {"b": 2}}
    scores = evaluate_run(qrels, {"q1": {"a": 1.0}})
    assert scores["ndcg@10"] == pytest.approx(0.5)
    means, per_query = score_run(qrels, {"q1": {"a": 1.0}})
    assert per_query["mrr@10"] == {"q1": 1.0, "q2": 0.0}
    assert means == scores


def test_paired_test_separates_a_clearly_better_run() -> None:
    qrels = {f"q{i}": {"good": 2} for i in range(30)}
    better = {f"q{i}": {"good": 2.0, "bad": 1.0} for i in range(30)}
    worse = {f"q{i}": ({"bad": 2.0, "good": 1.0} if i % 5 else {"good": 2.0}) for i in range(30)}
    p = paired_test(qrels, {"better": better, "worse": worse})
    assert p[("better", "worse")] < 0.01


def test_per_template_p_values_tell_a_template_that_wins_from_one_that_ties() -> None:
    from mm_opensearch.evaluation.runner import _per_template_significance
    from mm_opensearch.judgments import JudgedQuery

    queries = [JudgedQuery(f"c{i}", "red shirt", "val", "colour_type") for i in range(8)]
    queries += [JudgedQuery(f"b{i}", "nike shoes", "val", "brand_type") for i in range(8)]
    labels = {q.id: {"hit": 2} for q in queries}
    good = {q.id: {"hit": 2.0, "miss": 1.0} for q in queries}
    # dense_text misses every colour query (the hit at rank 1 to 8 varies, so the t-test has variance).
    dense = {q.id: ({"miss": 2.0, "hit": 1.0} if q.template == "brand_type" else
                    {**{f"m{j}": 10.0 - j for j in range(i % 5 + 2)}, "hit": 0.5})
             for i, q in enumerate(queries)}
    dense.update({q.id: good[q.id] for q in queries[8:12]})
    fused = {**good, **{q.id: {"miss": 2.0, "hit": 1.0} for q in queries[14:]}}  # brand_type: fused wins two, ties six
    out = _per_template_significance(labels, {"fused": fused, "dense_text": dense}, queries)
    assert set(out) == {"brand_type", "colour_type"}
    assert out["colour_type"]["fused_vs_dense_text"] < 0.01
    assert out["brand_type"]["fused_vs_dense_text"] > 0.05
