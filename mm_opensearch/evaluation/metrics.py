"""Offline IR metrics through ranx (no hand-written metric code).

nDCG@10 uses the graded gain 2^grade - 1 (``ndcg_burges``); Recall@100 and MRR@10 count only
grade 2 ("exact") as relevant, as the evaluation data's README prescribes.
"""

from __future__ import annotations

from collections.abc import Mapping

from ranx import Qrels, Run, compare, evaluate

__all__ = ["METRICS", "Ranking", "evaluate_run", "paired_test", "score_run"]

# Report name -> ranx metric name.
METRICS: dict[str, str] = {"ndcg@10": "ndcg_burges@10", "recall@100": "recall@100-l2", "mrr@10": "mrr@10-l2"}
Ranking = Mapping[str, Mapping[str, float]]  # query id -> product id -> score


def _pair(qrels: Mapping[str, Mapping[str, int]], run: Ranking, name: str) -> tuple[Qrels, Run]:
    judged = {q: dict(docs) for q, docs in qrels.items() if docs}
    # A query the system answered with nothing still counts (as zero), so it must be in the run.
    scored = {q: dict(run.get(q) or {}) for q in judged}
    for q, docs in scored.items():
        if not docs:
            docs["__no_result__"] = 0.0
    return Qrels(judged), Run(scored, name=name)


def score_run(
    qrels: Mapping[str, Mapping[str, int]], run: Ranking, name: str = "run"
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Mean of each metric over the judged queries, and metric label -> query id -> score.

    One ranx evaluation gives both: the per-query scores feed breakdowns such as per template.
    """
    q, r = _pair(qrels, run, name)
    means = evaluate(q, r, list(METRICS.values()), make_comparable=True)
    per_query = {label: {qid: float(v) for qid, v in r.scores[metric].items()} for label, metric in METRICS.items()}
    return {label: float(means[metric]) for label, metric in METRICS.items()}, per_query


def evaluate_run(qrels: Mapping[str, Mapping[str, int]], run: Ranking, name: str = "run") -> dict[str, float]:
    """Mean of each metric over the judged queries."""
    return score_run(qrels, run, name)[0]


def paired_test(
    qrels: Mapping[str, Mapping[str, int]], runs: Mapping[str, Ranking], *, metric: str = "ndcg@10"
) -> dict[tuple[str, str], float]:
    """Two-sided paired Student's t-test p-values between every pair of runs (ranx ``compare``)."""
    pairs = [_pair(qrels, run, name) for name, run in runs.items()]
    report = compare(
        qrels=pairs[0][0], runs=[r for _, r in pairs], metrics=[METRICS[metric]], stat_test="student", make_comparable=True
    )
    names = list(runs)
    out: dict[tuple[str, str], float] = {}
    for a in names:
        for b in names:
            if a != b:
                out[(a, b)] = float(report.comparisons[a, b][METRICS[metric]]["p_value"])
    return out
