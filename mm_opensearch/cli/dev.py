"""``mm-opensearch dev``: the local OpenSearch node and Redis used by the demo and the tests."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from mm_opensearch.config import get_settings
from mm_opensearch.devservices import OpenSearchNode, RedisServer, ServiceStatus

app = typer.Typer(help="Run a real local OpenSearch 2.19.1 (k-NN) and Redis on 127.0.0.1.", no_args_is_help=True)
console = Console()


def _print(statuses: list[ServiceStatus]) -> None:
    table = Table("service", "running", "pid", "port", "detail")
    for s in statuses:
        table.add_row(s.name, "yes" if s.running else "no", str(s.pid or "-"), str(s.port), s.detail)
    console.print(table)


@app.command()
def fetch() -> None:
    """Download the OpenSearch jars from Maven Central (cached per machine) and build the launcher."""
    path = OpenSearchNode(get_settings()).fetch()
    console.print(f"OpenSearch jars ready in {path}")


@app.command()
def up() -> None:
    """Start OpenSearch and Redis (harmless when they already run)."""
    settings = get_settings()
    with console.status("starting Redis"):
        redis_status = RedisServer(settings).start()
    with console.status("starting OpenSearch (first start fetches jars; ~30 s)"):
        os_status = OpenSearchNode(settings).start()
    _print([os_status, redis_status])


@app.command()
def down() -> None:
    """Stop both services; no process is left behind."""
    settings = get_settings()
    for name, service in (("opensearch", OpenSearchNode(settings)), ("redis", RedisServer(settings))):
        console.print(f"{name}: {'stopped' if service.stop() else 'was not running'}")


@app.command()
def status() -> None:
    """Report whether each service runs and answers."""
    settings = get_settings()
    _print([OpenSearchNode(settings).status(), RedisServer(settings).status()])
