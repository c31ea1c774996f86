"""FastAPI app factory: ``POST /search``, ``GET /healthz``, ``GET /readyz``, ``GET /metrics`` (and the search page at ``/``).

The app is an adapter: it validates the body, makes one library call
(:meth:`HybridSearcher.search`) and formats the result. The model is loaded once, in the lifespan;
library errors are mapped to HTTP statuses once, in exception handlers:

    ConfigError             -> 422 (unknown filter field, malformed value, window too large...), the
                               same ``detail`` shape as a validation 422: a list of {loc, msg, type}
    IndexCompatibilityError -> 409 (the index was embedded by another model than the one loaded)
    PermissionDeniedError   -> 403 (the server's OpenSearch user lacks a privilege; the message names it)
    SearchUnavailableError  -> 503 with Retry-After and a short reason; the cause (hosts, ports,
                               exception names) goes to the log, as a client cannot act on it

Around the app, pure ASGI middleware (:mod:`mm_opensearch.api.middleware`) answers a body over
``Settings.api_max_body_bytes`` with 413 before it is parsed, turns any other exception into a
JSON 500 (logged), and counts every response by route and status in ``/metrics``. Every status
is documented in the OpenAPI schema, which schemathesis checks the responses against
(``tests/integration/test_api.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import APIKeyHeader
from opensearchpy import ConnectionError as OSConnectionError
from opensearchpy import TransportError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mm_opensearch.api.certs import CertificateReloader, watch_certificates
from mm_opensearch.api.metrics import SearchMetrics
from mm_opensearch.api.middleware import BodySizeLimit, CountResponses, JsonErrors
from mm_opensearch.api.schemas import ErrorOut, HealthOut, ReadyOut, SearchIn, SearchOut
from mm_opensearch.config import Settings, get_settings
from mm_opensearch.client import create_serving_client
from mm_opensearch.errors import (
    ConfigError,
    IndexCompatibilityError,
    MMOpenSearchError,
    PermissionDeniedError,
    SearchUnavailableError,
)
from mm_opensearch.health import log_cluster_health
from mm_opensearch.hybrid import HybridSearcher, open_searcher
from mm_opensearch.hybrid.search import serving_settings
from mm_opensearch.web import mount_page

__all__ = ["create_app", "RETRY_AFTER_S"]

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 5
UNAVAILABLE = "search backend unavailable, retry later"
_MAX_ECHOED_CHARS = 100  # a 422 shows at most this much of the value it refused
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)

_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing or wrong X-API-Key header (when the server has an API key)"}
}
_SEARCH_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "The body could not be read as text (not UTF-8)"},
    **_UNAUTHORIZED,
    403: {"model": ErrorOut, "description": "The server's OpenSearch user lacks a privilege on the index (named)"},
    409: {"model": ErrorOut, "description": "The index holds vectors of another model than the one loaded"},
    413: {"model": ErrorOut, "description": "The body is over the server's limit (MMOS_API_MAX_BODY_BYTES)"},
    500: {"model": ErrorOut, "description": "Unexpected error (logged by the server)"},
    503: {
        "model": ErrorOut,
        "description": "OpenSearch did not answer; retry after Retry-After",
        "headers": _RETRY_AFTER,
    },
}


class _Unauthorized(Exception):
    """The X-API-Key header is missing or wrong."""


def _searcher(request: Request) -> HybridSearcher:
    return request.app.state.searcher


def _metrics(request: Request) -> SearchMetrics:
    return request.app.state.metrics


def _require_api_key(request: Request, key: Annotated[str | None, Depends(_api_key_header)]) -> None:
    expected = request.app.state.settings.api_key
    if expected is None:
        return
    if key is None or not secrets.compare_digest(key.encode(), expected.get_secret_value().encode()):
        raise _Unauthorized


Searcher = Annotated[HybridSearcher, Depends(_searcher)]
Metrics = Annotated[SearchMetrics, Depends(_metrics)]


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail}, headers=headers)


def _echoed(value: Any) -> Any:
    """What a 422 may show of a refused value: a short scalar, or a string cut short; never a large input."""
    if isinstance(value, str):
        return value if len(value) <= _MAX_ECHOED_CHARS else value[:_MAX_ECHOED_CHARS] + "..."
    if value is None or isinstance(value, bool | int | float):
        return value
    return None  # a list or an object (the whole body when a field is missing): not echoed


def _validation_errors(errors: Any) -> list[dict[str, Any]]:
    """FastAPI's validation errors with each ``input`` cut short (see :func:`_echoed`)."""
    out = []
    for error in errors:
        item = {key: value for key, value in error.items() if key != "input"}
        echoed = _echoed(error.get("input"))
        if echoed is not None:
            item["input"] = echoed
        out.append(item)
    return out


def create_app(settings: Settings | None = None, *, searcher: HybridSearcher | None = None) -> FastAPI:
    """The API; without ``searcher`` the lifespan opens one (client + configured model) once."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = app.state.searcher is None
        if own:
            app.state.searcher = open_searcher(settings)
        log_cluster_health(app.state.searcher.client)  # one line: yellow or red is worth knowing at start
        reloader = CertificateReloader(serving_settings(settings), app.state.searcher, create_serving_client)
        app.state.cert_reloader = reloader
        watch = asyncio.create_task(watch_certificates(reloader, settings.opensearch_cert_reload_s))
        yield
        watch.cancel()
        reloader.close()
        if own:
            app.state.searcher.close()

    app = FastAPI(
        title="mm-opensearch",
        summary="Multimodal (image + text) hybrid product search over OpenSearch.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.searcher = searcher
    app.state.metrics = SearchMetrics()
    # the last added runs first: count everything, then refuse large bodies, then answer a stray exception
    app.add_middleware(JsonErrors)
    app.add_middleware(BodySizeLimit, max_bytes=settings.api_max_body_bytes)
    app.add_middleware(CountResponses, observe=app.state.metrics.responded)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> Response:
        # ASCII-escaped: an echoed input holding an unpaired surrogate cannot be encoded as UTF-8
        body = json.dumps({"detail": jsonable_encoder(_validation_errors(e.errors()))}, ensure_ascii=True)
        return Response(body, status_code=422, media_type="application/json")

    @app.exception_handler(ConfigError)
    async def _config_error(_: Request, e: ConfigError) -> JSONResponse:
        # the shape of a validation 422, so a client reads both alike; the message names the field
        detail = [{"loc": ["body"], "msg": str(e), "type": "value_error"}]
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(IndexCompatibilityError)
    async def _incompatible(_: Request, e: IndexCompatibilityError) -> JSONResponse:
        return _error(409, str(e))

    @app.exception_handler(PermissionDeniedError)
    async def _forbidden(request: Request, e: PermissionDeniedError) -> JSONResponse:
        # the operator's fix, not the caller's; logged too, since the caller may not pass it on
        logger.warning("%s %s: %s", request.method, request.url.path, e)
        return _error(403, str(e))

    @app.exception_handler(SearchUnavailableError)
    async def _unavailable(request: Request, e: SearchUnavailableError) -> JSONResponse:
        logger.warning("%s %s: %s", request.method, request.url.path, e)
        return _error(503, UNAVAILABLE, {"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(_Unauthorized)
    async def _unauthorized(_: Request, e: _Unauthorized) -> JSONResponse:
        return JSONResponse(
            status_code=401, content={"detail": "missing or wrong X-API-Key header"}, headers={"WWW-Authenticate": "X-API-Key"}
        )

    @app.post("/search", response_model=SearchOut, dependencies=[Depends(_require_api_key)], responses=_SEARCH_ERRORS)
    def search(body: SearchIn, searcher: Searcher, metrics: Metrics) -> SearchOut:
        """BM25, vector or hybrid search; ``explain`` adds each leg's rank and score per hit."""
        try:
            response = searcher.search(body.to_request(searcher.fusion_for))
        except MMOpenSearchError as e:
            metrics.failed(body.mode, type(e).__name__)
            raise
        metrics.observe(response)
        return SearchOut.from_response(response)

    @app.get(
        "/healthz",
        response_model=HealthOut,
        responses={503: {"model": HealthOut, "description": "OpenSearch does not answer", "headers": _RETRY_AFTER}},
    )
    def healthz(searcher: Searcher, response: Response) -> HealthOut:
        """``ok``; ``degraded`` without a query tower (BM25 answers); ``unavailable`` (503) without OpenSearch."""
        up = searcher.ping()
        status = "unavailable" if not up else "ok" if searcher.tower is not None else "degraded"
        if not up:
            response.status_code = 503
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return HealthOut(
            status=status,
            opensearch=up,
            index=searcher.index,
            model_id=searcher.tower_model_id,
            tower_error=searcher.tower_error,
        )

    @app.get(
        "/readyz",
        response_model=ReadyOut,
        responses={503: {"model": ReadyOut, "description": "OpenSearch, the index or the model is missing",
                         "headers": _RETRY_AFTER}},
    )
    def readyz(searcher: Searcher, response: Response) -> ReadyOut:
        """200 only with everything a hybrid search needs: OpenSearch answers, the index exists, the model is loaded.

        ``/healthz`` stays 200 when degraded (BM25 still answers); a load balancer or compose
        healthcheck that should wait for the full service asks this one.
        """
        up = searcher.ping()
        exists = False
        if up:
            try:
                exists = bool(searcher.client.indices.exists(index=searcher.index))
            except (OSConnectionError, TransportError) as e:
                logger.warning("GET /readyz: cannot check index %s: %s", searcher.index, e)
        reason = (
            "OpenSearch does not answer" if not up
            else f"index '{searcher.index}' does not exist (MMOS_INDEX_NAME or MMOS_READ_ALIAS)" if not exists
            else f"no query tower: {searcher.tower_error}" if searcher.tower is None
            else None
        )
        if reason is not None:
            response.status_code = 503
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return ReadyOut(ready=reason is None, opensearch=up, index=searcher.index, index_exists=exists,
                        model_id=searcher.tower_model_id, reason=reason)

    @app.get(
        "/metrics",
        dependencies=[Depends(_require_api_key)],
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **_UNAUTHORIZED},
    )
    def metrics_endpoint(metrics: Metrics) -> Response:
        """Prometheus text format (``text/plain; version=...``)."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    mount_page(app, settings)  # the search page at / (mm_opensearch.web), outside the OpenAPI schema
    return app
