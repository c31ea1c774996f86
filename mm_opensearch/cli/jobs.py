"""``mm-opensearch backfill | enqueue | jobs | worker``: embedding jobs run by Celery workers."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from mm_opensearch.backfill import (
    JobCounts,
    JobQueue,
    JobStore,
    enqueue,
    follow_changes,
    retry_dead_letters,
    wait_for_job,
)
from mm_opensearch.backfill import run_backfill as _run_backfill
from mm_opensearch.catalog import CatalogSchema
from mm_opensearch.cli.progress import progress
from mm_opensearch.client import create_client
from mm_opensearch.config import get_settings
from mm_opensearch.errors import ConfigError
from mm_opensearch.preflight import check_redis

__all__ = ["jobs_app", "register"]

console = Console()
err_console = Console(stderr=True)
jobs_app = typer.Typer(help="Follow embedding jobs, the change feed and dead letters.", no_args_is_help=True)


def _queue() -> JobQueue:
    from mm_opensearch_workers.app import CeleryJobQueue, app  # noqa: PLC0415 - Celery loads only for commands that enqueue

    return CeleryJobQueue(app)


def _store() -> JobStore:
    settings = get_settings()
    check_redis(settings)  # a wrong MMOS_REDIS_URL fails in seconds, in one line
    return JobStore.from_settings(settings)


@contextmanager
def progress_display(title: str) -> Iterator[Callable[[JobCounts], None]]:
    """A progress bar (a line every few seconds in a log) fed by job counts; shows products/s."""
    with progress(console, title) as show:

        def update(counts: JobCounts) -> None:
            done = counts.written + counts.skipped + counts.missing + counts.failed + counts.dead
            show(done, max(counts.total, done) or None,
                 f"written {counts.written} skipped {counts.skipped} failed {counts.failed} dead {counts.dead}")

        yield update


def print_counts(counts: JobCounts) -> None:
    table = Table("job", "index", "status", "total", "written", "skipped", "missing", "failed", "dead", "batches")
    table.add_row(counts.job_id, counts.index, counts.status, str(counts.total), str(counts.written),
                  str(counts.skipped), str(counts.missing), str(counts.failed), str(counts.dead),
                  f"{counts.batches_settled}/{counts.batches_enqueued}")
    console.print(table)


def exit_if_dead_letters(counts: JobCounts) -> None:
    """A finished job with dead letters is not a success: say how many and how to retry them, exit 1."""
    if not counts.dead:
        return
    batches = sum(1 for letter in _store().dead_letters() if letter.payload.get("job_id") == counts.job_id)
    err_console.print(
        f"[bold red]error:[/] job {counts.job_id} finished with {counts.dead} products dead-lettered "
        f"({batches} batches); see why with `mm-opensearch jobs dead-letters --job {counts.job_id}`, send them "
        f"again with `mm-opensearch jobs dead-letters --job {counts.job_id} --retry`"
    )
    raise typer.Exit(1)


def backfill(
    index: Annotated[str, typer.Argument(help="Index or alias with vector fields (see `index augment`).")],
    slices: Annotated[int, typer.Option(min=1, help="Parallel scan slices.")] = 2,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Products per task.")] = None,
    tune: Annotated[bool, typer.Option(help="Refresh off and 0 replicas meanwhile (index not serving).")] = False,
    restart: Annotated[bool, typer.Option(help="Start over instead of resuming an unfinished run.")] = False,
    wait: Annotated[bool, typer.Option(help="Wait for the workers to write every batch.")] = True,
    timeout: Annotated[float | None, typer.Option(help="Seconds to wait for the workers.")] = None,
) -> None:
    """Give every product a current vector; resumes where a stopped run left off."""
    settings = get_settings()
    with progress_display(f"backfill {index}") as update:
        counts = _run_backfill(
            create_client(settings), _store(), _queue(), index, schema=CatalogSchema.from_settings(settings),
            image_dir=settings.data_dir, slices=slices, batch_size=batch_size or settings.backfill_batch_size,
            tune=tune, restart=restart, wait=wait, timeout_s=timeout,
            resubmit_after_s=settings.backfill_resubmit_after_s, on_progress=update,
        )
    print_counts(counts)
    if not wait:
        console.print(f"the workers go on; `mm-opensearch jobs wait {counts.job_id}` waits for them")
        return
    exit_if_dead_letters(counts)


def enqueue_ids(
    ids: Annotated[list[str], typer.Argument(help="Product ids (the documents' _id).")],
    index: Annotated[str | None, typer.Option(help="Index or write alias; default MMOS_WRITE_ALIAS or MMOS_INDEX_NAME.")] = None,
) -> None:
    """Re-embed these products soon (after an edit the change feed has not seen yet)."""
    settings = get_settings()
    target = index or settings.write_alias or settings.index_name
    job_id = enqueue(_store(), _queue(), target, ids, batch_size=settings.backfill_batch_size)
    console.print(f"enqueued {len(set(ids))} products of '{target}' as job {job_id}")


@jobs_app.command("status")
def job_status(job_id: Annotated[str, typer.Argument(help="Job id, e.g. backfill-products_v2.")]) -> None:
    """Progress and the latest item errors of one job."""
    store = _store()
    counts = store.counts(job_id)
    if counts is None:
        console.print(f"no job '{job_id}': it never started, or it finished more than MMOS_JOB_RETENTION_S "
                      f"({get_settings().job_retention_s:g} s) ago and its record expired")
        raise typer.Exit(1)
    print_counts(counts)
    if counts.expires_in_s is not None:
        console.print(f"this record expires in {counts.expires_in_s / 3600:.1f} h (MMOS_JOB_RETENTION_S)")
    oldest = store.oldest_in_flight(job_id)
    if oldest is not None:
        console.print(f"the oldest unsettled batch, {oldest[0]}, was sent {oldest[1]:.0f} s ago")
    for error in store.errors(job_id, limit=20):
        console.print(f"  {error.get('id', error.get('batch'))}: [{error.get('status')}] {error.get('error')}")


@jobs_app.command("wait")
def job_wait(
    job_id: Annotated[str, typer.Argument(help="Job id, e.g. backfill-products_v2 (see `backfill --no-wait`).")],
    timeout: Annotated[float | None, typer.Option(help="Seconds to wait for the workers.")] = None,
) -> None:
    """Wait until every batch of a job is settled, sending again those the broker lost; exit 1 on dead letters."""
    settings, store = get_settings(), _store()
    with progress_display(f"job {job_id}") as update:
        counts = wait_for_job(store, job_id, timeout_s=timeout, on_progress=update, queue=_queue(),
                              resubmit_after_s=settings.backfill_resubmit_after_s)
    print_counts(counts)
    exit_if_dead_letters(counts)


@jobs_app.command("dead-letters")
def dead_letters(
    retry: Annotated[bool, typer.Option(help="Submit them again.")] = False,
    letter_id: Annotated[list[str] | None, typer.Option("--id", help="Only these dead letters.")] = None,
    job: Annotated[str | None, typer.Option(help="Only the dead letters of this job.")] = None,
) -> None:
    """List batches that failed for good, with their reason; --retry submits them again."""
    store = _store()
    letters = [d for d in store.dead_letters()
               if (not letter_id or d.id in letter_id) and (job is None or d.payload.get("job_id") == job)]
    table = Table("id", "kind", "job", "batch", "products", "failed at", "reason")
    for d in letters:
        n = len(d.payload.get("ids") or d.payload.get("actions") or ())
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.failed_at))
        table.add_row(d.id, d.kind, d.payload["job_id"], d.payload["batch_id"], str(n), when, d.reason)
    console.print(table)
    if retry and letters:
        retried = retry_dead_letters(store, _queue(), [d.id for d in letters])
        jobs = sorted({d.payload["job_id"] for d in letters if d.id in retried})
        console.print(f"resubmitted {len(retried)} batches; wait for them with "
                      + ", ".join(f"`mm-opensearch jobs wait {j}`" for j in jobs))


@jobs_app.command("follow")
def follow(
    index: Annotated[str, typer.Argument(help="Index or alias to watch.")],
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between polls.")] = 5.0,
) -> None:
    """Poll the updated_at field and enqueue edited products until interrupted."""
    settings = get_settings()
    stop = threading.Event()
    console.print(f"following '{index}' by {settings.updated_at_field} every {interval} s (Ctrl-C stops)")
    try:
        follow_changes(create_client(settings), _store(), _queue(), index, stop=stop, interval_s=interval,
                       field=settings.updated_at_field, batch_size=settings.backfill_batch_size,
                       resubmit_after_s=settings.backfill_resubmit_after_s)
    except KeyboardInterrupt:
        stop.set()


def worker(
    queues: Annotated[str, typer.Option(help="model, io, or both (comma-separated).")] = "model,io",
    concurrency: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    threads: Annotated[int | None, typer.Option(min=1, help="Torch threads per process; default cores/concurrency.")] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "info",
) -> None:
    """Replace this process with a Celery worker (refuses an inconsistent time-limit config)."""
    from mm_opensearch_workers.app import IO_QUEUE, MODEL_QUEUE, app, check_time_limits  # noqa: PLC0415

    check_time_limits(app.conf)
    names = {"model": MODEL_QUEUE, "io": IO_QUEUE}
    wanted = [names.get(q.strip(), "") for q in queues.split(",") if q.strip()]
    if not wanted or "" in wanted:
        msg = f"--queues '{queues}' must name model, io or both (comma-separated)"
        raise ConfigError(msg)
    env = dict(os.environ)
    env["MMOS_TORCH_THREADS"] = str(threads or get_settings().torch_threads or max(1, (os.cpu_count() or 1) // concurrency))
    argv = [sys.executable, "-m", "celery", "-A", "mm_opensearch_workers.app", "worker", "-Q", ",".join(wanted),
            "--concurrency", str(concurrency), "--pool", "prefork", "--loglevel", loglevel]
    os.execve(sys.executable, argv, env)  # noqa: S606 - the point of the command


def register(app: typer.Typer) -> None:
    """Add ``backfill``, ``enqueue``, ``worker`` and the ``jobs`` group to the root app."""
    app.command("backfill")(backfill)
    app.command("enqueue")(enqueue_ids)
    app.command("worker")(worker)
    app.add_typer(jobs_app, name="jobs")
