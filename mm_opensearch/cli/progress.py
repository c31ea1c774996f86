"""Progress of a long step (feature extraction, indexing, a backfill) for a person or for a log.

In a terminal: a rich progress bar. When stdout is not a terminal (a CI log, ``| tee``, a systemd
unit) rich draws nothing until the end, so a 15-minute step looked hung; there one plain line is
printed at the first update, then at most every ``LINE_EVERY_S`` seconds, and once at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["LINE_EVERY_S", "Update", "counter", "progress", "tracker"]

LINE_EVERY_S = 5.0  # a log line this often is enough to see a step moving, few enough to read

# update(completed, total, detail): total None while unknown; detail a short free text.
Update = Callable[[int, "int | None", str], None]


@contextmanager
def progress(console: Console, title: str, *, unit: str = "products") -> Iterator[Update]:
    """A display for one step; the callback sets how far it got (absolute counts, not increments)."""
    if console.is_terminal:
        columns = (TextColumn(title), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[detail]}"),
                   TimeElapsedColumn())
        with Progress(*columns, console=console) as bar:
            task = bar.add_task(title, total=None, detail="")

            started_bar = time.monotonic()

            def update_bar(completed: int, total: int | None, detail: str = "") -> None:
                rate = completed / max(1e-9, time.monotonic() - started_bar)
                shown = f"{rate:,.0f} {unit}/s" + (f" · {detail}" if detail else "")
                bar.update(task, total=total, completed=completed, detail=shown)

            yield update_bar
        return
    started = time.monotonic()
    last: dict[str, object] = {"printed": None, "state": None}

    def line(completed: int, total: int | None, detail: str) -> str:
        elapsed = time.monotonic() - started
        share = f" ({100 * completed / total:.0f}%)" if total else ""
        rate = completed / elapsed if elapsed > 0 else 0.0
        extra = f" · {detail}" if detail else ""
        of = f"/{total}" if total else ""
        return f"{title}: {completed}{of} {unit}{share} · {rate:,.0f} {unit}/s · {elapsed:.0f} s{extra}"

    def update_log(completed: int, total: int | None, detail: str = "") -> None:
        last["state"] = (completed, total, detail)
        now = time.monotonic()
        printed = last["printed"]
        if printed is None or now - float(printed) >= LINE_EVERY_S:  # type: ignore[arg-type]
            console.print(line(completed, total, detail), markup=False, highlight=False, soft_wrap=True)
            last["printed"] = now

    yield update_log
    state = last["state"]
    if state is not None:
        console.print(line(*state) + " · done", markup=False, highlight=False, soft_wrap=True)  # type: ignore[misc]


def counter(update: Update, total: int | None, detail: str = "") -> Callable[[int], None]:
    """An ``on_batch(n)`` callback (increments) feeding ``update`` (absolute counts)."""
    done = [0]
    update(0, total, detail)

    def advance(n: int) -> None:
        done[0] += n
        update(done[0], total, detail)

    return advance


def tracker(console: Console) -> Callable[[str, int], AbstractContextManager[Callable[[int], None]]]:
    """What the library's ``track`` parameters take: ``track(title, total)`` opens a display and
    gives an ``on_batch(n)`` callback; the display ends with the ``with`` block."""

    @contextmanager
    def track(title: str, total: int) -> Iterator[Callable[[int], None]]:
        with progress(console, title) as update:
            yield counter(update, total)

    return track
