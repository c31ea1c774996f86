"""The search page in Debian's chromium (Playwright) against the real API and OpenSearch."""

from __future__ import annotations

from pathlib import Path
import time
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from opensearchpy import OpenSearch

from mm_opensearch.config import Settings
from mm_opensearch.evaluation.metrics import score_run
from mm_opensearch.evaluation.runner import ModeSpec, rank_queries
from mm_opensearch.hybrid import HybridSearcher
from mm_opensearch.judgments import load_queries
from mm_opensearch.towers import MultimodalModel


pytestmark = [pytest.mark.services, pytest.mark.browser]

KEY = "page-key-123"  # conftest.PAGE_KEY: the key keyed_server is started with

WCAG = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


def _search(page: Any, server: str, query: str) -> None:
    page.goto(server + "/")
    page.fill("#q", query)
    page.press("#q", "Enter")
    page.wait_for_selector("section.column")


def _ids(page: Any, column: str) -> list[str]:
    return page.eval_on_selector_all(f'section[data-column="{column}"] li.card', "cards => cards.map(c => c.dataset.id)")


def _wait_for(page: Any, function: str, arg: Any = None, timeout_s: float = 60) -> None:
    """Poll ``function`` in the page until it returns true. Playwright's own wait_for_function compiles
    its predicate with eval, which the page's Content-Security-Policy (rightly) refuses."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(function, arg):
        assert time.monotonic() < deadline, f"still false after {timeout_s} s: {function}"
        time.sleep(0.1)


def _images_loaded(page: Any) -> list[int]:
    """naturalWidth of every card image, once each has finished (loaded or fallen back to the placeholder)."""
    _wait_for(page, "() => [...document.querySelectorAll('img.thumb')].every(i => i.complete && i.naturalWidth > 0)")
    return page.eval_on_selector_all("img.thumb", "imgs => imgs.map(i => i.naturalWidth)")


def _params(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def test_a_query_shows_bm25_and_hybrid_side_by_side_with_images_and_latency(page: Any, server: str) -> None:
    _search(page, server, "shirt")
    columns = page.eval_on_selector_all("section.column", "s => s.map(x => x.dataset.column)")
    assert columns == ["bm25", "hybrid", "vector"]
    headings = page.eval_on_selector_all("section.column h2", "h => h.map(x => x.textContent)")
    assert headings[0] == "BM25" and headings[1].startswith("hybrid (")
    bm25, hybrid = _ids(page, "bm25"), _ids(page, "hybrid")
    assert len(bm25) == 10 and len(hybrid) == 10
    assert all(width > 0 for width in _images_loaded(page))
    card = page.locator('section[data-column="bm25"] li.card').first
    assert card.locator(".title").inner_text().strip() and card.locator(".brand").inner_text().strip()
    assert card.locator(".price").inner_text().startswith("₹")
    latencies = page.eval_on_selector_all(".latency", "l => l.map(x => x.textContent)")
    assert len(latencies) == 3 and all(text.endswith(" ms") for text in latencies)
    assert _params(page.url)["q"] == ["shirt"]


def test_third_column_switches_and_lives_in_the_url(page: Any, server: str) -> None:
    _search(page, server, "shirt")
    page.select_option("#third", "hybrid-rrf")
    page.click("form.controls .row button")
    page.wait_for_selector('section[data-column="hybrid-rrf"]')
    assert page.inner_text('section[data-column="hybrid-rrf"] h2').startswith("hybrid, RRF fusion (RRF, k=")
    assert _params(page.url)["third"] == ["hybrid-rrf"]
    page.select_option("#third", "vector-image")
    page.click("form.controls .row button")
    page.wait_for_selector('section[data-column="vector-image"] li.card')


def test_a_filter_from_the_terms_aggregation_narrows_every_column(page: Any, server: str, client: OpenSearch, shop: Any) -> None:
    _search(page, server, "shirt")
    values = page.eval_on_selector_all("#f_gender option", "o => o.map(x => x.value)")
    indexed = sorted({p.source["gender"] for p in shop.products})
    assert values == ["", *indexed]  # "any", then the values in the index
    page.select_option("#f_gender", "Women")
    page.click("fieldset.filters button")
    page.wait_for_selector("section.column")
    assert _params(page.url)["f_gender"] == ["Women"]
    ids = [i for column in ("bm25", "hybrid", "vector") for i in _ids(page, column)]
    assert ids
    docs = client.mget(index=shop.index, body={"ids": ids}, _source=["gender"])["docs"]
    assert {d["_source"]["gender"] for d in docs} == {"Women"}


def test_explain_shows_each_legs_rank_and_score_and_the_fused_score(page: Any, server: str) -> None:
    _search(page, server, "shirt")
    card = page.locator('section[data-column="hybrid"] li.card').first
    assert not card.locator("details.explain dl").is_visible()
    card.locator("details.explain summary").click()
    text = card.locator("details.explain dl").inner_text()
    assert "lexical" in text and "vector" in text and "fused score" in text and "rank " in text


def test_pages_follow_each_other_and_a_link_reproduces_the_view(page: Any, server: str) -> None:
    _search(page, server, "shirt")
    page.select_option("#f_gender", "Men")
    page.click("fieldset.filters button")
    page.wait_for_selector("section.column")
    first = _ids(page, "hybrid")
    page.click("a[rel=next]")
    page.wait_for_url("**page=2**")
    second = _ids(page, "hybrid")
    assert page.get_attribute('section[data-column="hybrid"] ol.cards', "start") == "11"
    assert second and not set(first) & set(second)
    url = page.url
    assert _params(url)["f_gender"] == ["Men"] and _params(url)["q"] == ["shirt"]
    page.goto(url)
    assert _ids(page, "hybrid") == second
    assert page.input_value("#q") == "shirt" and page.input_value("#f_gender") == "Men"


def test_judged_view_marks_grades_and_shows_the_ndcg_eval_computes(
    page: Any, server: str, shop: Any, client: OpenSearch, app_settings: Settings, model: MultimodalModel
) -> None:
    qid = shop.judged_ids[0]
    page.goto(server + "/")
    page.select_option("#judged", qid)
    page.click("form.controls .row button")
    page.wait_for_selector("section.column li.card")
    labels = shop.qrels[qid]
    names = {2: "exact", 1: "substitute", 0: "irrelevant"}
    seen = set()
    for column in ("bm25", "hybrid", "vector"):
        cards = page.eval_on_selector_all(
            f'section[data-column="{column}"] li.card', "cs => cs.map(c => [c.dataset.id, c.querySelector('.grade').textContent])"
        )
        for pid, grade in cards:
            assert grade == (names[labels[pid]] if pid in labels else "unjudged"), pid
            seen.add(grade)
    assert "unjudged" in seen and seen & {"exact", "substitute"}
    # each column's nDCG@10 is what eval's own ranking and scoring give for this query
    searcher = HybridSearcher(client, app_settings, index=shop.index, tower=model)
    query = next(q for q in load_queries(shop.queries_file) if q.id == qid)
    for column, spec in (("bm25", ModeSpec("multimodal", "bm25")), ("hybrid", ModeSpec("multimodal", "hybrid")),
                         ("vector", ModeSpec("multimodal", "vector"))):
        run = rank_queries(searcher, [query], spec)
        _, per_query = score_run({qid: labels}, run)
        shown = float(page.get_attribute(f'section[data-column="{column}"] .ndcg', "data-ndcg"))
        assert shown == pytest.approx(per_query["ndcg@10"][qid], abs=1e-6), column


def test_catalog_text_is_escaped_and_nothing_runs(page: Any, server: str, shop: Any) -> None:
    response = page.goto(server + "/?q=onerror+alert")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    card = page.locator(f'section[data-column="bm25"] li.card[data-id="{shop.xss_id}"]')
    assert shop.xss_title in card.locator(".title").inner_text()
    assert page.evaluate("document.querySelectorAll('img[src=\"x\"]').length") == 0
    page.locator(f'li.card[data-id="{shop.xss_id}"] details summary').first.click()
    assert page.dialogs == []


def test_missing_and_broken_images_show_the_placeholder(page: Any, server: str, shop: Any) -> None:
    page.goto(server + "/")
    for pid in (shop.missing_image_id, shop.broken_url_id):
        title = next(p.source["title"] for p in shop.products if p.id == pid)
        page.goto(server + "/?" + urlencode({"q": title}))
        img = page.locator(f'section[data-column="bm25"] li.card[data-id="{pid}"] img.thumb')
        _wait_for(page, "i => i.complete && i.naturalWidth > 0", img.element_handle())
        assert img.evaluate("i => i.getBoundingClientRect().width") == 80
        if pid == shop.broken_url_id:  # a URL image is shown from its URL; when it fails, the script falls back
            assert img.evaluate("i => i.src").endswith("/static/placeholder.svg")


def test_keyboard_alone_searches_opens_an_explain_and_pages(page: Any, server: str) -> None:
    page.goto(server + "/")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "q"
    page.keyboard.type("shirt")
    page.keyboard.press("Enter")
    page.wait_for_selector("section.column li.card")
    for _ in range(80):  # to the first explain
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.tagName") == "SUMMARY":
            break
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.parentElement.open") is True
    for _ in range(200):  # on to the next-page link
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.rel") == "next":
            break
    page.keyboard.press("Enter")
    page.wait_for_url("**page=2**")


def _axe(page: Any, axe_source: str) -> list[dict[str, Any]]:
    page.evaluate(axe_source)  # through the debugger: the page's CSP allows no injected script tag
    result = page.evaluate("options => axe.run(document, options)", {"runOnly": {"type": "tag", "values": WCAG}})
    return [{"id": v["id"], "nodes": [n["target"] for n in v["nodes"]][:3]} for v in result["violations"]]


def test_axe_core_finds_no_wcag_a_or_aa_violation(page: Any, server: str, axe_source: str, shop: Any) -> None:
    page.goto(server + "/")
    assert _axe(page, axe_source) == []
    page.goto(f"{server}/?judged={shop.judged_ids[0]}&third=hybrid-linear")
    page.wait_for_selector("section.column li.card")
    for summary in page.locator('section[data-column="hybrid"] details summary').all()[:3]:
        summary.click()
    _images_loaded(page)
    assert _axe(page, axe_source) == []


def test_no_horizontal_scroll_at_375_px(browser: Any, server: str, shop: Any, artifacts: Path) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 800})
    context.set_default_timeout(90_000)
    page = context.new_page()
    page.goto(f"{server}/?judged={shop.judged_ids[0]}")
    page.locator('section[data-column="bm25"] details summary').first.click()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.screenshot(path=str(artifacts / "narrow-375.png"), full_page=True)
    context.close()


def test_with_an_api_key_a_login_cookie_opens_the_page_and_its_images(page: Any, keyed_server: str) -> None:
    page.goto(keyed_server + "/?q=shirt")
    assert urlsplit(page.url).path == "/login"
    page.fill("#key", "wrong")
    page.press("#key", "Enter")
    assert "not the server's API key" in page.inner_text(".problem")
    page.fill("#key", KEY)
    page.press("#key", "Enter")
    page.wait_for_selector("section.column li.card")
    assert _params(page.url)["q"] == ["shirt"]  # back where the link pointed
    assert all(width > 0 for width in _images_loaded(page))
    sources = page.eval_on_selector_all("img.thumb", "imgs => imgs.map(i => i.src)")
    assert not any(KEY in s for s in sources)
    cookie = next(c for c in page.context.cookies() if c["name"] == "mmos_page")
    assert cookie["httpOnly"] and KEY not in cookie["value"]
