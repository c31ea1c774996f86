"""The search page's routes: ``GET /`` (BM25 and hybrid side by side, a third column of choice),
``GET /images/{product_id}`` (thumbnails), ``/login`` (when an API key is set) and ``/static``.

Rendered on the server with Jinja2 (autoescaped: catalog text never becomes markup); the page's
state is its query string, so a link reproduces what someone saw. The only script is a static
file, which the Content-Security-Policy allows alone. Search errors become a message on the page
with the API's status (422, 409, 503), never a traceback.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from mm_opensearch.config import Settings
from mm_opensearch.errors import ConfigError, IndexCompatibilityError, MMOpenSearchError, SearchUnavailableError
from mm_opensearch.hybrid import MAX_WINDOW, HybridSearcher, SearchRequest
from mm_opensearch.hybrid.fusion import FusionOptions
from mm_opensearch.web.judged import JudgedSet, load_judged
from mm_opensearch.web.thumbnails import ThumbnailCache, is_url

__all__ = ["CSP", "PAGE_SIZE", "THIRD_COLUMNS", "mount_page"]

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
PAGE_SIZE = 10
COOKIE = "mmos_page"
FACET_VALUES = 50  # values per filter field, the most frequent first
MAX_PRODUCT_ID = 512
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: http: https:; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
# third column: label, mode, vector, fusion method (None: the server's default fusion)
THIRD_COLUMNS: dict[str, tuple[str, str, str, str | None]] = {
    "vector": ("vector only (fused image + text)", "vector", "fused", None),
    "vector-image": ("vector only (image)", "vector", "image", None),
    "vector-text": ("vector only (text)", "vector", "text", None),
    "hybrid-rrf": ("hybrid, RRF fusion", "hybrid", "fused", "rrf"),
    "hybrid-linear": ("hybrid, linear fusion", "hybrid", "fused", "linear"),
}
_NUMERIC = frozenset({"long", "integer", "short", "byte", "double", "float", "half_float", "scaled_float"})
_STATUS = {ConfigError: 422, IndexCompatibilityError: 409, SearchUnavailableError: 503}


@dataclass
class Column:
    key: str
    label: str
    hits: list[dict[str, Any]] = field(default_factory=list)
    took_ms: float | None = None
    error: str | None = None
    note: str | None = None
    ndcg: float | None = None
    more: bool = False


def _describe(fusion: FusionOptions | None) -> str:
    if fusion is None:
        return ""
    if fusion.method == "rrf":
        return f"RRF, k={fusion.rank_constant}"
    weights = "/".join(f"{w:g}" for w in fusion.weights)
    return f"linear, {fusion.normalization}, weights {weights}"


def _page_cookie(key: str) -> str:
    """What the login cookie holds: a MAC of the API key, never the key itself."""
    return hmac.new(key.encode(), b"mm-opensearch search page", hashlib.sha256).hexdigest()


def _safe_next(value: str) -> str:
    return value if value.startswith("/") and not value.startswith("//") and "\\" not in value else "/"


class Page:
    """Everything the routes share: settings, templates, judged set, thumbnails, facets."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.env = Environment(
            loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True), auto_reload=False
        )
        self.judged: JudgedSet | None = load_judged(settings.page_queries, settings.page_qrels)
        self.thumbnails = ThumbnailCache(
            settings, settings.image_roots_or(settings.data_dir),
            size=settings.page_thumbnail_px, capacity=settings.page_thumbnail_cache,
        )

    # --- access ---------------------------------------------------------------------------

    def allowed(self, request: Request) -> bool:
        key = self.settings.api_key
        if key is None:
            return True
        expected = key.get_secret_value()
        header = request.headers.get("x-api-key")
        if header is not None and hmac.compare_digest(header.encode(), expected.encode()):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return hmac.compare_digest(cookie.encode(), _page_cookie(expected).encode())

    def html(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        body = self.env.get_template(template).render(**context)
        return HTMLResponse(body, status_code=status, headers=_HEADERS)

    # --- the index's facts ------------------------------------------------------------------

    def facets(self, searcher: HybridSearcher) -> tuple[dict[str, list[str]], list[str]]:
        """Filter fields with their most frequent values (a terms aggregation), and the numeric ones (ranges)."""
        mapping = searcher.client.indices.get_mapping(index=searcher.index)
        properties: dict[str, Any] = {}
        for index_mapping in mapping.values():
            properties.update(index_mapping.get("mappings", {}).get("properties", {}))
        terms, numeric = [], []
        for name in self.settings.filter_fields:
            kind = properties.get(name, {}).get("type")
            if kind in _NUMERIC:
                numeric.append(name)
            elif kind == "keyword":
                terms.append(name)
        values: dict[str, list[str]] = {}
        if terms:
            aggs = {name: {"terms": {"field": name, "size": FACET_VALUES}} for name in terms}
            response = searcher.client.search(index=searcher.index, body={"size": 0, "aggs": aggs})
            for name in terms:
                buckets = response.get("aggregations", {}).get(name, {}).get("buckets", [])
                values[name] = sorted(str(b["key"]) for b in buckets)
        return values, numeric

    def image_value(self, searcher: HybridSearcher, product_id: str) -> object:
        field_name = self.settings.image_field
        if field_name is None:
            return None
        body = {"size": 1, "query": {"ids": {"values": [product_id]}}, "_source": [field_name]}
        hits = searcher.client.search(index=searcher.index, body=body)["hits"]["hits"]
        return hits[0]["_source"].get(field_name) if hits else None


def _filters(params: dict[str, str], terms: dict[str, list[str]], numeric: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The library's filters from ``f_<field>`` / ``f_<field>_gte`` / ``f_<field>_lte``, and what was refused."""
    filters: dict[str, Any] = {}
    refused: list[str] = []
    for name in terms:
        value = params.get(f"f_{name}", "")
        if value:
            filters[name] = value
    for name in numeric:
        bounds: dict[str, float] = {}
        for op in ("gte", "lte"):
            raw = params.get(f"f_{name}_{op}", "").strip()
            if not raw:
                continue
            try:
                bounds[op] = float(raw)
            except ValueError:
                refused.append(f"{name} {'from' if op == 'gte' else 'to'}: '{raw[:40]}' is not a number")
        if bounds:
            filters[name] = bounds
    return filters, refused


def _hit(hit: Any, settings: Settings, judged: JudgedSet | None, query_id: str | None, rank: int) -> dict[str, Any]:
    source = hit.source or {}
    image = source.get(settings.image_field) if settings.image_field else None
    legs = None
    if hit.legs is not None:
        legs = {leg: (None if where is None else {"rank": where.rank, "score": where.score}) for leg, where in hit.legs.items()}
    return {
        "id": hit.id,
        "rank": rank,
        "score": hit.score,
        "title": source.get("title") or source.get(next(iter(settings.text_fields), "title").split("^")[0]) or hit.id,
        "brand": source.get("brand"),
        "price": source.get("discounted_price") or source.get("price"),
        "image_url": image if is_url(image) else None,
        "legs": legs,
        "grade": judged.grade(query_id, hit.id) if judged is not None and query_id else None,
    }


def mount_page(app: FastAPI, settings: Settings) -> None:
    """Add the page's routes and static files to ``app`` (kept out of the OpenAPI schema)."""
    page = Page(settings)
    app.state.page = page
    router = APIRouter(include_in_schema=False)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="page-static")

    @router.get("/login")
    def login_form(request: Request, next: str = "/") -> Response:  # noqa: A002 - the query parameter's name
        return page.html("login.html", next=_safe_next(next), error=None)

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", errors="replace"))
        key = (form.get("key") or [""])[0]
        target = _safe_next((form.get("next") or ["/"])[0])
        expected = settings.api_key
        if expected is None:
            return RedirectResponse(target, status_code=303)
        if not hmac.compare_digest(key.encode(), expected.get_secret_value().encode()):
            return page.html("login.html", status=401, next=target, error="That is not the server's API key (MMOS_API_KEY).")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, _page_cookie(expected.get_secret_value()), httponly=True, samesite="strict", path="/")
        return response

    @router.get("/", response_class=HTMLResponse)
    def search_page(request: Request) -> Response:
        if not page.allowed(request):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)
        return _render(request)

    def _render(request: Request) -> Response:
        searcher: HybridSearcher = request.app.state.searcher
        params = {k: v for k, v in request.query_params.items()}
        judged = page.judged
        query_id = params.get("judged") or None
        if query_id is not None and (judged is None or query_id not in judged.queries):
            query_id = None
        query = params.get("q", "").strip()[:500]
        if query_id is not None and not query:
            query = judged.queries[query_id].text  # type: ignore[union-attr]
        third = params.get("third", "vector")
        if third not in THIRD_COLUMNS:
            third = "vector"
        try:
            page_no = max(1, min(int(params.get("page", "1")), MAX_WINDOW // PAGE_SIZE))
        except ValueError:
            page_no = 1
        status = 200
        problems: list[str] = []
        try:
            terms, numeric = page.facets(searcher)
        except Exception as e:  # noqa: BLE001 - the page still answers; the reason goes to the log
            logger.warning("no filter values for the search page: %s", e)
            terms, numeric = {}, []
            problems.append(f"filter values could not be read from index '{searcher.index}' (see the server log)")
            status = 503
        filters, refused = _filters(params, terms, numeric)
        problems += [f"filter {r}; clear it or type a number" for r in refused]
        columns: list[Column] = []
        if query:
            label, mode, vector, method = THIRD_COLUMNS[third]
            default = searcher.fusion_for(None) if searcher.tower is not None else None
            specs = [
                ("bm25", "BM25", "bm25", "fused", None),
                ("hybrid", f"hybrid ({_describe(default)})" if default else "hybrid", "hybrid", "fused", None),
                (third, label, mode, vector, method),
            ]
            for key, title, mode_, vector_, method_ in specs:
                fusion = searcher.fusion_for(method_) if method_ is not None and searcher.tower is not None else None  # type: ignore[arg-type]
                if method_ is not None and fusion is not None:
                    title = f"{title} ({_describe(fusion)})"
                column = Column(key=key, label=title)
                columns.append(column)
                start = time.perf_counter()
                try:
                    response = searcher.search(SearchRequest(
                        query=query, mode=mode_, vector=vector_, fusion=fusion, filters=filters,  # type: ignore[arg-type]
                        size=PAGE_SIZE, from_=(page_no - 1) * PAGE_SIZE, explain=True,
                    ))
                    column.took_ms = (time.perf_counter() - start) * 1000
                    column.hits = [
                        _hit(h, settings, judged, query_id, (page_no - 1) * PAGE_SIZE + i + 1)
                        for i, h in enumerate(response.hits)
                    ]
                    column.more = len(response.hits) == PAGE_SIZE and page_no * PAGE_SIZE < MAX_WINDOW
                    if response.degraded:
                        column.note = f"answered by BM25: {response.degraded_reason}"
                    if judged is not None and query_id is not None:
                        top = response.hits if page_no == 1 else searcher.search(SearchRequest(
                            query=query, mode=mode_, vector=vector_, fusion=fusion, filters=filters,  # type: ignore[arg-type]
                            size=PAGE_SIZE, with_source=False,
                        )).hits
                        column.ndcg = judged.ndcg_at_10(query_id, [h.id for h in top])
                except MMOpenSearchError as e:
                    column.error = str(e) if not isinstance(e, SearchUnavailableError) else (
                        "OpenSearch did not answer; retry later (the reason is in the server log)"
                    )
                    if isinstance(e, SearchUnavailableError):
                        logger.warning("search page: %s", e)
                    status = max(status, next((s for kind, s in _STATUS.items() if isinstance(e, kind)), 500))
        state = {"q": query, "third": third, "page": page_no}
        if query_id:
            state["judged"] = query_id
        for name, value in params.items():
            if name.startswith("f_") and value:
                state[name] = value

        def link(**changes: Any) -> str:
            merged = {**state, **changes}
            return "/?" + urlencode({k: v for k, v in merged.items() if v not in (None, "")})

        return page.html(
            "search.html", status=status, query=query, columns=columns, terms=terms, numeric=numeric, params=params,
            third=third, thirds={k: v[0] for k, v in THIRD_COLUMNS.items()}, page_no=page_no, problems=problems,
            judged=judged, query_id=query_id, filters=filters, link=link, index=searcher.index,
            more=any(c.more for c in columns), page_size=PAGE_SIZE,
            judged_query=judged.queries[query_id] if judged is not None and query_id else None,
        )

    @router.get("/images/{product_id}")
    def image(request: Request, product_id: str) -> Response:
        if not page.allowed(request):
            return Response(status_code=401, headers=_HEADERS)
        made = None
        if len(product_id) <= MAX_PRODUCT_ID:
            searcher: HybridSearcher = request.app.state.searcher
            try:
                value = page.image_value(searcher, product_id)
            except Exception as e:  # noqa: BLE001 - an image request shows the placeholder, never a 500
                logger.warning("image of product %r: %s", product_id, e)
                value = None
            made = page.thumbnails.thumbnail(f"{searcher.index}\0{product_id}", value)
        if made is None:
            placeholder = (HERE / "static" / "placeholder.svg").read_bytes()
            return Response(placeholder, status_code=404, media_type="image/svg+xml",
                            headers={**_HEADERS, "Cache-Control": "no-cache"})
        cache = "private" if settings.api_key is not None else "public"
        headers = {**_HEADERS, "Cache-Control": f"{cache}, max-age=86400", "ETag": made.etag}
        if request.headers.get("if-none-match") == made.etag:
            return Response(status_code=304, headers=headers)
        return Response(made.data, media_type=made.media_type, headers=headers)

    app.include_router(router)
