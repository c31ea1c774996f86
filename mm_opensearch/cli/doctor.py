"""``mm-opensearch doctor``: the checks of :mod:`mm_opensearch.doctor` as a table, exit 1 on any failure."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from mm_opensearch.config import Settings, get_settings
from mm_opensearch.doctor import ROLES, CheckResult, check_deployment, configured_model, failed
from mm_opensearch.resources import default_model_dir

__all__ = ["doctor"]

_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


class RoleChoice(str, Enum):
    search = "search"
    worker = "worker"
    admin = "admin"


def _ping_workers(settings: Settings):  # noqa: ANN202 - a closure over the Celery app
    def ping(timeout_s: float) -> list[str]:
        from mm_opensearch_workers.app import create_app  # noqa: PLC0415 - adapter, not library; Celery loads only here

        celery = create_app(settings)
        try:
            return [name for reply in celery.control.ping(timeout=timeout_s) or [] for name in reply]
        finally:
            celery.close()

    return ping


def render(results: list[CheckResult], console: Console) -> None:
    table = Table("check", "status", "detail", "fix", show_lines=False)
    for row in results:
        table.add_row(row.check, f"[{_STYLE[row.status]}]{row.status}[/]", row.detail, row.fix)
    console.print(table)


def doctor(
    role: Annotated[list[RoleChoice] | None, typer.Option(
        help="Roles this deployment's user plays (repeat the option); default all: search, worker, admin.")] = None,
    ping_timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for the workers' answers.")] = 1.0,
) -> None:
    """Check the configured deployment: cluster, TLS, credentials, plugins, privileges, index, Redis, workers.

    Exits 1 when any check fails; warnings (e.g. no worker when only search is checked) do not.
    """
    settings = get_settings()
    roles = [r.value for r in role] if role else list(ROLES)
    try:
        model, model_error = configured_model(settings.model_dir, default_model_dir), None
    except (OSError, ValueError, KeyError) as e:
        model, model_error = None, f"{type(e).__name__}: {e}"[:200]
    results = check_deployment(settings, roles=roles, model=model, model_error=model_error,
                               ping_workers=_ping_workers(settings), ping_timeout_s=ping_timeout)
    render(results, Console(soft_wrap=False))
    fails = sum(r.status == "fail" for r in results)
    warns = sum(r.status == "warn" for r in results)
    Console().print(f"{fails} failed, {warns} warnings, {len(results) - fails - warns} ok or skipped")
    if failed(results):
        raise typer.Exit(1)
