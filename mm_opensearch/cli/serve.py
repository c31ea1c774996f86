"""``mm-opensearch serve``: the HTTP API and the search page under uvicorn, on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from mm_opensearch.config import get_settings
from mm_opensearch.logs import logging_config


def serve(
    host: Annotated[str, typer.Option(help="Interface to bind; 0.0.0.0 exposes the API to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes (each loads the model once).")] = 1,
    queries: Annotated[Path | None, typer.Option(help="Judged queries for the page (eval's queries TSV; MMOS_PAGE_QUERIES).")] = None,
    qrels: Annotated[Path | None, typer.Option(help="Their graded labels (eval's qrels TSV; MMOS_PAGE_QRELS).")] = None,
) -> None:
    """Serve the search page at /, POST /search, GET /healthz and GET /metrics (OpenAPI at /docs)."""
    import uvicorn  # noqa: PLC0415 - only this command needs the server

    from mm_opensearch.web.judged import load_judged  # noqa: PLC0415

    # The app factory runs in uvicorn's worker processes and reads its settings there: the files go by the environment.
    for name, value in (("MMOS_PAGE_QUERIES", queries), ("MMOS_PAGE_QRELS", qrels)):
        if value is not None:
            os.environ[name] = str(value.resolve())
    get_settings.cache_clear()  # read again with the files
    settings = get_settings()
    load_judged(settings.page_queries, settings.page_qrels)  # a wrong file is one error line now, not a crashed worker
    uvicorn.run("mm_opensearch.api.app:create_app", factory=True, host=host, port=port, workers=workers,
                log_config=logging_config(settings.log_format, settings.log_level))
