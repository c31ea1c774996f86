"""Log output: JSON lines with extra fields, our loggers at the configured level, bad settings named."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from mm_opensearch.logs import JsonFormatter

REPO = Path(__file__).resolve().parents[2]


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord("mm_opensearch.backfill", logging.WARNING, __file__, 1, "job %s stalled", ("j1",), None)
    record.__dict__.update(extra)
    return record


def test_a_json_line_carries_the_message_and_the_extra_fields() -> None:
    line = json.loads(JsonFormatter().format(_record(job="j1", batches=["b1", "b2"])))
    assert line["message"] == "job j1 stalled" and line["level"] == "warning"
    assert line["logger"] == "mm_opensearch.backfill" and line["ts"].endswith("+00:00")
    assert line["job"] == "j1" and line["batches"] == ["b1", "b2"]
    assert "args" not in line and "exc" not in line  # LogRecord internals stay out


def test_a_json_line_carries_the_traceback() -> None:
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", (), sys.exc_info())
    assert "ZeroDivisionError" in json.loads(JsonFormatter().format(record))["exc"]


def test_our_loggers_speak_at_the_level_and_the_chatty_ones_at_warning() -> None:
    script = (
        "import logging; from mm_opensearch.logs import configure_logging; configure_logging('json', 'INFO'); "
        "logging.getLogger('opensearch').info('a request'); logging.getLogger('mm_opensearch.x').info('ours'); "
        "logging.getLogger('celery.worker').info('ready'); logging.getLogger('mm_opensearch.x').debug('quiet')"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO,  # noqa: S603
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert [json.loads(line)["message"] for line in done.stderr.splitlines()] == ["ours", "ready"]


def test_an_invalid_setting_is_named_by_its_variable() -> None:
    cli = Path(sys.executable).with_name("mm-opensearch")
    done = subprocess.run([str(cli), "config", "show"], capture_output=True, text=True, check=False, timeout=120,  # noqa: S603
                          env={**os.environ, "MMOS_LOG_FORMAT": "xml"})
    assert done.returncode == 1
    assert "MMOS_LOG_FORMAT" in done.stderr and "'text' or 'json'" in done.stderr
