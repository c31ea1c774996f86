"""``mm-opensearch serve``: the HTTP API under uvicorn, on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

from typing import Annotated

import typer

from mm_opensearch.config import get_settings
from mm_opensearch.logs import logging_config


def serve(
    host: Annotated[str, typer.Option(help="Interface to bind; 0.0.0.0 exposes the API to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes (each loads the model once).")] = 1,
) -> None:
    """Serve POST /search, GET /healthz and GET /metrics (OpenAPI at /docs)."""
    import uvicorn  # noqa: PLC0415 - only this command needs the server

    settings = get_settings()
    uvicorn.run("mm_opensearch.api.app:create_app", factory=True, host=host, port=port, workers=workers,
                log_config=logging_config(settings.log_format, settings.log_level))
