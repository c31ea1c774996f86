"""Judged queries for evaluation and training: TSV queries, graded qrels, or click pairs."""

from __future__ import annotations

import csv
import gzip
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from mm_opensearch.errors import ConfigError

__all__ = ["JudgedQuery", "load_queries", "load_qrels", "load_click_pairs"]


@dataclass(frozen=True)
class JudgedQuery:
    id: str
    text: str
    split: str
    template: str


def _open(path: Path) -> IO[str]:
    try:
        return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")
    except FileNotFoundError as e:
        msg = f"file {path} does not exist"
        raise ConfigError(msg) from e


def _rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    with _open(path) as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            msg = f"{path} lacks column(s) {missing}; its header must name {list(required)} (tab-separated)"
            raise ConfigError(msg)
        return list(reader)


def load_queries(path: Path, *, split: str | None = None) -> list[JudgedQuery]:
    """Queries from a TSV with ``query_id``, ``query`` and optional ``split`` and ``template``."""
    rows = _rows(path, ("query_id", "query"))
    queries = [
        JudgedQuery(r["query_id"], r["query"], r.get("split") or "", r.get("template") or "") for r in rows
    ]
    return [q for q in queries if split is None or q.split == split]


def load_qrels(path: Path) -> dict[str, dict[str, int]]:
    """Graded labels ``query_id -> product_id -> grade`` from a TSV (optionally gzipped)."""
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    for line_no, row in enumerate(_rows(path, ("query_id", "product_id", "grade")), start=2):
        try:
            qrels[row["query_id"]][row["product_id"]] = int(row["grade"])
        except ValueError as e:
            msg = f"{path}:{line_no}: grade '{row['grade']}' is not an integer"
            raise ConfigError(msg) from e
    return dict(qrels)


def load_click_pairs(path: Path) -> tuple[list[JudgedQuery], dict[str, dict[str, int]]]:
    """Plain ``query``/``product_id`` click or purchase pairs as queries with grade-1 labels."""
    rows = _rows(path, ("query", "product_id"))
    ids: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    for row in rows:
        text = row["query"].strip()
        qid = ids.setdefault(text, f"click-{len(ids):06d}")
        qrels[qid][row["product_id"]] = 1
    return [JudgedQuery(qid, text, "train", "clicks") for text, qid in ids.items()], dict(qrels)
