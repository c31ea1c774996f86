"""Judged queries for the page: the ``eval`` files, each card's grade and each column's nDCG@10.

nDCG@10 is computed by the same ranx call ``eval`` makes (:func:`score_run`), on the column's top
10 with ties broken by rank as ``eval``'s run does, so the page and ``eval`` cannot disagree.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mm_opensearch.errors import ConfigError
from mm_opensearch.judgments import JudgedQuery, load_qrels, load_queries

__all__ = ["GRADE_LABELS", "JudgedSet", "load_judged"]

GRADE_LABELS = {2: "exact", 1: "substitute", 0: "irrelevant"}  # a product without a label is "unjudged"


@dataclass(frozen=True)
class JudgedSet:
    queries: dict[str, JudgedQuery]  # only those with at least one label
    qrels: dict[str, dict[str, int]]

    def grade(self, query_id: str, product_id: str) -> str:
        """exact / substitute / irrelevant, or unjudged when the product has no label for the query."""
        grade = self.qrels.get(query_id, {}).get(product_id)
        return "unjudged" if grade is None else GRADE_LABELS.get(grade, "exact" if grade > 2 else "irrelevant")

    def ndcg_at_10(self, query_id: str, ranked_ids: Sequence[str]) -> float:
        """nDCG@10 (gain 2^grade - 1) of a ranking, as ``eval`` scores it."""
        from mm_opensearch.evaluation.metrics import score_run  # noqa: PLC0415 - ranx: the [eval] extra, not [api]

        run = {query_id: {pid: 1.0 - i * 1e-9 for i, pid in enumerate(ranked_ids[:10])}}
        means, _ = score_run({query_id: self.qrels[query_id]}, run)
        return means["ndcg@10"]


def load_judged(queries: Path | None, qrels: Path | None) -> JudgedSet | None:
    """The judged set of the page's settings (None when neither file is given)."""
    if queries is None and qrels is None:
        return None
    if queries is None or qrels is None:
        msg = "the judged view needs both MMOS_PAGE_QUERIES and MMOS_PAGE_QRELS (serve --queries FILE --qrels FILE)"
        raise ConfigError(msg)
    if importlib.util.find_spec("ranx") is None:
        msg = "the judged view scores columns as `eval` does, with ranx: install mm-opensearch[eval] beside [api]"
        raise ConfigError(msg)
    labels = load_qrels(qrels)
    judged = {q.id: q for q in load_queries(queries) if labels.get(q.id)}
    if not judged:
        msg = f"no query of {queries} has a label in {qrels}; check that both files use the same query_id values"
        raise ConfigError(msg)
    return JudgedSet(queries=judged, qrels={qid: labels[qid] for qid in judged})
