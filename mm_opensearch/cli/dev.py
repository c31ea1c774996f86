"""``mm-opensearch dev``: the local OpenSearch node and Redis used by the demo and the tests."""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from mm_opensearch.config import Settings, get_settings
from mm_opensearch.devservices import OpenSearchNode, RedisServer, ServiceStatus

app = typer.Typer(
    help="Run a real local OpenSearch (2.x or 3.x, with k-NN) and Redis on 127.0.0.1.", no_args_is_help=True
)
console = Console()

Version = Annotated[
    str | None,
    typer.Option("--version", help="OpenSearch release, e.g. 2.19.1 or 3.4.0 (default: MMOS_DEV_OPENSEARCH_VERSION)."),
]


Secure = Annotated[
    bool,
    typer.Option(
        "--secure",
        help="With the security plugin: TLS, basic and client-certificate auth, an admin user "
        "(default: MMOS_DEV_OPENSEARCH_SECURE). Certificates and the password stay in MMOS_DEV_DIR.",
    ),
]


def _settings(version: str | None, *, secure: bool = False) -> Settings:
    overrides: dict[str, object] = {"dev_opensearch_secure": True} if secure else {}
    if version is None and not overrides:
        return get_settings()
    if version is not None:
        overrides["dev_opensearch_version"] = version
    try:
        return Settings(**overrides)
    except ValidationError as e:
        msg = f"'{version}' is not an OpenSearch release this can run; use 2.x.y or 3.x.y, e.g. 2.19.1 or 3.4.0"
        raise typer.BadParameter(msg, param_hint="--version") from e


def _print(statuses: list[ServiceStatus]) -> None:
    table = Table("service", "running", "pid", "port", "detail")
    for s in statuses:
        table.add_row(s.name, "yes" if s.running else "no", str(s.pid or "-"), str(s.port), s.detail)
    console.print(table)


@app.command()
def fetch(version: Version = None, secure: Secure = False) -> None:
    """Download the OpenSearch jars from Maven Central (cached per machine and version) and build the launcher."""
    path = OpenSearchNode(_settings(version, secure=secure)).fetch()
    console.print(f"OpenSearch jars ready in {path}")


@app.command()
def up(version: Version = None, secure: Secure = False) -> None:
    """Start OpenSearch and Redis (harmless when they already run)."""
    settings = _settings(version, secure=secure)
    node = OpenSearchNode(settings)
    with console.status("starting Redis"):
        redis_status = RedisServer(settings).start()
    with console.status("starting OpenSearch (first start fetches jars; ~30 s)"):
        os_status = node.start()
    _print([os_status, redis_status])
    if node.secure:
        console.print(f"secured: TLS with the dev CA {node.security.ca_cert}; admin password in "
                      f"{node.security.password_file}; client certificate {node.security.client_cert} "
                      f"(key {node.security.client_key}). Point mm-opensearch at it with:", soft_wrap=True)
        exports = " ".join(f"{k}={v}" for k, v in node.client_environment().items())
        console.print(f"export {exports}", soft_wrap=True, markup=False, highlight=False)


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
