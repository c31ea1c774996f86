"""The search page's pure parts: grades and nDCG as eval computes them, filters from the URL, the
login redirect target, and thumbnails under the image roots."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from mm_opensearch.config import Settings
from mm_opensearch.errors import ConfigError
from mm_opensearch.evaluation.metrics import evaluate_run
from mm_opensearch.web.judged import JudgedSet, load_judged
from mm_opensearch.web.page import _filters, _safe_next
from mm_opensearch.web.thumbnails import ThumbnailCache, local_candidates

LABELS = {"q1": {"a": 2, "b": 1, "c": 0}}


def _judged() -> JudgedSet:
    from mm_opensearch.judgments import JudgedQuery  # noqa: PLC0415

    return JudgedSet(queries={"q1": JudgedQuery("q1", "red dress", "val", "t")}, qrels=LABELS)


def test_an_unlabelled_product_is_unjudged_not_irrelevant() -> None:
    judged = _judged()
    assert [judged.grade("q1", p) for p in ("a", "b", "c", "d")] == ["exact", "substitute", "irrelevant", "unjudged"]


@pytest.mark.parametrize("ranking", [["a", "b", "d"], ["d", "c", "b", "a"], [], [f"x{i}" for i in range(12)] + ["a"]])
def test_ndcg_at_10_is_evals_for_the_same_ranking(ranking: list[str]) -> None:
    # eval's run: the engine's scores with ties broken by rank (only the order matters to nDCG)
    run = {"q1": {pid: 10.0 - i for i, pid in enumerate(ranking)}}
    assert _judged().ndcg_at_10("q1", ranking) == pytest.approx(evaluate_run(LABELS, run)["ndcg@10"], abs=1e-12)


def test_the_judged_view_needs_both_files(tmp_path: Path) -> None:
    (tmp_path / "q.tsv").write_text("query_id\tquery\nq1\tred dress\nq2\tblue shirt\n")
    (tmp_path / "r.tsv").write_text("query_id\tproduct_id\tgrade\nq1\ta\t2\n")
    with pytest.raises(ConfigError, match="MMOS_PAGE_QUERIES and MMOS_PAGE_QRELS"):
        load_judged(tmp_path / "q.tsv", None)
    judged = load_judged(tmp_path / "q.tsv", tmp_path / "r.tsv")
    assert judged is not None and list(judged.queries) == ["q1"]  # q2 has no label: not offered
    assert load_judged(None, None) is None


def test_filters_from_the_query_string() -> None:
    params = {"f_gender": "Women", "f_brand": "", "f_price_gte": "100", "f_price_lte": "lots", "f_other": "x"}
    filters, refused = _filters(params, {"gender": ["Men", "Women"], "brand": ["Nike"]}, ["price"])
    assert filters == {"gender": "Women", "price": {"gte": 100.0}}  # unknown fields are not read at all
    assert refused == ["price to: 'lots' is not a number"]


@pytest.mark.parametrize(("target", "safe"), [("/?q=a", "/?q=a"), ("//evil.example/", "/"), ("https://evil.example", "/"),
                                              ("/\\evil.example", "/")])
def test_login_returns_only_to_a_page_of_this_site(target: str, safe: str) -> None:
    assert _safe_next(target) == safe


def test_thumbnails_are_read_inside_the_roots_resized_and_cached(tmp_path: Path) -> None:
    root, outside = tmp_path / "catalog", tmp_path / "elsewhere"
    (root / "images").mkdir(parents=True)
    outside.mkdir()
    Image.new("RGB", (300, 400), (200, 10, 10)).save(root / "images" / "1.jpg")
    Image.new("RGB", (30, 40), (10, 10, 200)).save(outside / "2.jpg")
    assert local_candidates("images/1.jpg", [root]) == [str(root / "images/1.jpg")]
    cache = ThumbnailCache(Settings(), [root], size=100, capacity=4)
    thumb = cache.thumbnail("1", "images/1.jpg")
    assert thumb is not None and Image.open(io.BytesIO(thumb.data)).size == (75, 100)
    (root / "images" / "1.jpg").unlink()
    assert cache.thumbnail("1", "images/1.jpg") is thumb  # resized once
    assert cache.thumbnail("2", str(outside / "2.jpg")) is None  # outside the roots: the placeholder
    assert cache.thumbnail("3", "../elsewhere/2.jpg") is None
    assert cache.thumbnail("4", "images/missing.jpg") is None
    assert cache.thumbnail("5", "https://example.com/a.jpg") is None  # shown from its URL by the browser
