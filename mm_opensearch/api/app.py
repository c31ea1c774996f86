"""FastAPI app factory: ``POST /search``, ``GET /healthz``, ``GET /metrics``.

The app is an adapter: it validates the body, makes one library call
(:meth:`HybridSearcher.search`) and formats the result. The model is loaded once, in the lifespan;
library errors are mapped to HTTP statuses once, in exception handlers:

    ConfigError             -> 422 (unknown filter field, malformed value, window too large...)
    IndexCompatibilityError -> 409 (the index was embedded by another model than the one loaded)
    SearchUnavailableError  -> 503 with Retry-After
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mm_opensearch.api.metrics import SearchMetrics
from mm_opensearch.api.schemas import HealthOut, SearchIn, SearchOut
from mm_opensearch.config import Settings, get_settings
from mm_opensearch.errors import ConfigError, IndexCompatibilityError, MMOpenSearchError, SearchUnavailableError
from mm_opensearch.hybrid import HybridSearcher, open_searcher

__all__ = ["create_app", "RETRY_AFTER_S"]

RETRY_AFTER_S = 5
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


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


def _error(status: int, e: Exception, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": str(e)}, headers=headers)


def create_app(settings: Settings | None = None, *, searcher: HybridSearcher | None = None) -> FastAPI:
    """The API; without ``searcher`` the lifespan opens one (client + configured model) once."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = app.state.searcher is None
        if own:
            app.state.searcher = open_searcher(settings)
        yield
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

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> Response:
        # ASCII-escaped: an echoed input holding an unpaired surrogate cannot be encoded as UTF-8
        body = json.dumps({"detail": jsonable_encoder(e.errors())}, ensure_ascii=True)
        return Response(body, status_code=422, media_type="application/json")

    @app.exception_handler(ConfigError)
    async def _config_error(_: Request, e: ConfigError) -> JSONResponse:
        return _error(422, e)

    @app.exception_handler(IndexCompatibilityError)
    async def _incompatible(_: Request, e: IndexCompatibilityError) -> JSONResponse:
        return _error(409, e)

    @app.exception_handler(SearchUnavailableError)
    async def _unavailable(_: Request, e: SearchUnavailableError) -> JSONResponse:
        return _error(503, e, {"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(_Unauthorized)
    async def _unauthorized(_: Request, e: _Unauthorized) -> JSONResponse:
        return JSONResponse(
            status_code=401, content={"detail": "missing or wrong X-API-Key header"}, headers={"WWW-Authenticate": "X-API-Key"}
        )

    @app.post("/search", response_model=SearchOut, dependencies=[Depends(_require_api_key)])
    def search(body: SearchIn, searcher: Searcher, metrics: Metrics) -> SearchOut:
        """BM25, vector or hybrid search; ``explain`` adds each leg's rank and score per hit."""
        try:
            response = searcher.search(body.to_request(searcher.fusion_for))
        except MMOpenSearchError as e:
            metrics.failed(body.mode, type(e).__name__)
            raise
        metrics.observe(response)
        return SearchOut.from_response(response)

    @app.get("/healthz", response_model=HealthOut)
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

    @app.get("/metrics", dependencies=[Depends(_require_api_key)])
    def metrics_endpoint(metrics: Metrics) -> Response:
        """Prometheus text format."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
