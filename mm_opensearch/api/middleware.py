"""Pure ASGI middleware of the API: a request body limit, and every response JSON and counted.

Pure ASGI rather than ``BaseHTTPMiddleware``: the body limit must count a chunked body as it
streams, before anything parses it, and the last-resort handler must see an exception that no
exception handler took (Starlette's own ``ServerErrorMiddleware`` answers those in plain text).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodySizeLimit", "JsonErrors", "CountResponses", "json_response"]

logger = logging.getLogger(__name__)

INTERNAL_ERROR = "internal error; it was logged, retry later or report it"


async def json_response(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    """Send ``{"detail": detail}`` with ``status`` (for answers given before the app runs)."""
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class BodySizeLimit:
    """Answer 413 to a body over ``max_bytes``, by its Content-Length or as it streams (chunked).

    The body (at most ``max_bytes``) is read here and replayed to the app, so nothing downstream
    ever holds more than the limit: a 200 MB body used to be read whole and echoed in its 422.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nothing to answer
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:  # after the body, the app only waits for a disconnect
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        detail = f"request body over {self.max_bytes} bytes; send a smaller request"
        await json_response(send, 413, detail, {"Connection": "close"})


class JsonErrors:
    """Turn an exception no handler took into a JSON 500 with a short reason; the details go to the log."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception:
            logger.exception("unexpected error answering %s %s", scope.get("method"), scope.get("path"))
            if started:  # too late for another status: the client sees a cut response
                raise
            await json_response(send, 500, INTERNAL_ERROR)


class CountResponses:
    """Report every response's route and status to ``observe`` (errors before routing: ``unmatched``)."""

    def __init__(self, app: ASGIApp, *, observe: Callable[[str, int], None]) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")
                self.observe(getattr(route, "path", "unmatched"), int(message["status"]))
            await send(message)

        await self.app(scope, receive, counting)
