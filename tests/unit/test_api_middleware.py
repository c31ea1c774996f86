"""The API's ASGI middleware on a bare app: body limit (declared and streamed), JSON 500s, status counts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from mm_opensearch.api.middleware import INTERNAL_ERROR, BodySizeLimit, CountResponses, JsonErrors

LIMIT = 1000


@pytest.fixture
def seen() -> list[tuple[str, int]]:
    return []


@pytest.fixture
def http(seen: list[tuple[str, int]]) -> Iterator[TestClient]:
    app = FastAPI()
    app.state.read = 0

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        body = await request.body()
        app.state.read += len(body)
        return {"bytes": len(body)}

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals at 10.0.0.7:9200")

    app.add_middleware(JsonErrors)
    app.add_middleware(BodySizeLimit, max_bytes=LIMIT)
    app.add_middleware(CountResponses, observe=lambda route, status: seen.append((route, status)))
    with TestClient(app, raise_server_exceptions=False) as client:
        client.app_state = app.state  # type: ignore[attr-defined]
        yield client


def test_a_body_within_the_limit_reaches_the_app_whole(http: TestClient) -> None:
    assert http.post("/echo", content=b"x" * LIMIT).json() == {"bytes": LIMIT}


def test_a_declared_body_over_the_limit_gets_413_unread(http: TestClient) -> None:
    response = http.post("/echo", content=b"x" * (LIMIT + 1))
    assert response.status_code == 413
    assert response.json() == {"detail": f"request body over {LIMIT} bytes; send a smaller request"}
    assert http.app_state.read == 0  # type: ignore[attr-defined]


def test_a_chunked_body_is_counted_as_it_streams(http: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(50):
            yield b"x" * 100

    response = http.post("/echo", content=chunks())  # no Content-Length: Transfer-Encoding chunked
    assert response.status_code == 413
    assert http.app_state.read == 0  # type: ignore[attr-defined]
    small = http.post("/echo", content=iter([b"ab", b"cd"]))
    assert small.json() == {"bytes": 4}


def test_an_unexpected_exception_is_a_short_json_500_and_logged(
    http: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    response = http.get("/boom")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"detail": INTERNAL_ERROR}
    assert "10.0.0.7" not in response.text
    assert "secret internals" in caplog.text


def test_every_response_is_counted_by_route_and_status(http: TestClient, seen: list[tuple[str, int]]) -> None:
    http.post("/echo", content=b"{}")
    http.post("/echo", content=b"x" * (LIMIT + 1))
    http.get("/boom")
    http.get("/nowhere")
    assert seen == [("/echo", 200), ("unmatched", 413), ("/boom", 500), ("unmatched", 404)]
