"""Progress in a log: a line at the first update, then at most every LINE_EVERY_S seconds, one at the end."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from mm_opensearch.cli import progress as progress_module
from mm_opensearch.cli.progress import LINE_EVERY_S, progress


def test_a_log_gets_a_line_every_few_seconds_and_one_at_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)

    with progress(console, "indexing") as update:
        for done in range(0, 1001, 10):  # 100 updates, 0.2 s apart: 20 s
            update(done, 1000, "")
            clock[0] += 0.2

    lines = out.getvalue().splitlines()
    assert lines[0].startswith("indexing: 0/1000 products (0%)")
    assert lines[-1].startswith("indexing: 1000/1000 products (100%)") and lines[-1].endswith("done")
    # 20 s of updates: the first line, one per LINE_EVERY_S after it, and the final one.
    assert len(lines) == int(20 / LINE_EVERY_S) + 1 + 1, lines


def test_a_terminal_gets_a_bar_and_no_lines() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    with progress(console, "indexing") as update:
        update(5, 10, "")
    assert "indexing: 5/10" not in out.getvalue()  # the bar's own rendering, not log lines
    assert "5/10" in out.getvalue()
