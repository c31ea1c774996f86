"""What a person sees: the demo in a log prints progress lines and no log noise; a 500 is one line.

The commands run as subprocesses with stdout a pipe (not a TTY), as in CI or ``| tee``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opensearchpy import OpenSearch

from mm_opensearch.towers import ModelConfig, MultimodalModel
from tests.integration.test_cli import run_cli, tiny_shop  # noqa: F401 - the fixture, reused

pytestmark = pytest.mark.services

# A line of our log format ("2026-12-02 00:38:32,040 INFO name: ...") or a bare level word.
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ |\b(WARNING|WARN|DEBUG)\b", re.M)


@pytest.fixture
def tuned_model_dir(tmp_path: Path) -> Path:
    """A tiny model whose stored fusion is tuned (weights no default pipeline has), as `eval --tune` leaves it."""
    model = MultimodalModel.from_config(ModelConfig.tiny(), use_feature_cache=False)
    model.config = model.config.model_copy(update={"hybrid": {
        "linear": {"normalization": "min_max", "weights": [0.3, 0.7]},
        "rrf": {"rank_constant": 60, "weights": [0.4, 0.6]},
        "default": "linear",
    }})
    return model.save(tmp_path / "tuned")


def test_the_demo_in_a_log_prints_progress_lines_and_nothing_from_the_loggers(
    client: OpenSearch, tiny_shop: Path, tuned_model_dir: Path  # noqa: F811
) -> None:
    # Tuned fusions: the evaluation must create their pipelines, or its hybrid modes are fused on
    # the client with a warning on the console.
    env = {"MMOS_MODEL_DIR": str(tuned_model_dir), "MMOS_FILTER_FIELDS": "brand"}
    _delete_demo_indices(client)  # the demo reuses its indices: this run must index
    try:
        run = run_cli("demo", "--data-dir", str(tiny_shop), "--limit", "8", "--no-serve", timeout=400, **env)  # no page left running

        assert run.rc == 0, run.output
        assert "indexing (multimodal tower): 8/8 products (100%)" in run.output, run.output
        assert "indexing (zeroshot tower): 8/8 products (100%)" in run.output, run.output
        assert not LOG_LINE.search(run.output), run.output
        assert "Traceback" not in run.output
    finally:
        _delete_demo_indices(client)


def _delete_demo_indices(client: OpenSearch) -> None:
    for name in client.indices.get(index="mmos-demo-*", allow_no_indices=True, ignore_unavailable=True):
        client.indices.delete(index=name)


class _Failing(BaseHTTPRequestHandler):
    """A node whose every answer is a 500 with OpenSearch's error body, ``GET /`` included."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = (b'{"error": {"type": "exception", "reason": "disk controller on fire"}, "status": 500}')
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _answer  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def failing_node() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_500_from_the_node_reaches_the_user_as_one_line(failing_node: str) -> None:
    run = run_cli("index", "inspect", "products", MMOS_OPENSEARCH_HOSTS=failing_node, MMOS_OPENSEARCH_MAX_RETRIES="0")

    assert run.rc == 1, run.output
    lines = [line for line in run.output.splitlines() if line.strip()]
    assert len(lines) == 1, run.output
    assert lines[0].startswith("error: OpenSearch answered 500"), lines[0]
    assert "disk controller on fire" in lines[0]
