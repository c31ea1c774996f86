"""``mm-opensearch dev``: the local OpenSearch node and Redis used by the demo and the tests."""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from mm_opensearch.config import Settings, get_settings
from mm_opensearch.devservices import OpenSearchCluster, OpenSearchNode, RedisServer, ServiceStatus, running_cluster_size

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


Nodes = Annotated[
    int | None,
    typer.Option(
        "--nodes",
        min=1,
        max=9,
        help="Nodes of the dev cluster, one JVM each, node i on port+i (default: MMOS_DEV_OPENSEARCH_NODES, 1).",
    ),
]


def _settings(version: str | None, *, secure: bool = False, nodes: int | None = None) -> Settings:
    overrides: dict[str, object] = {"dev_opensearch_secure": True} if secure else {}
    if nodes is not None:
        overrides["dev_opensearch_nodes"] = nodes
    if version is None and not overrides:
        return get_settings()
    if version is not None:
        overrides["dev_opensearch_version"] = version
    try:
        return Settings(**overrides)
    except ValidationError as e:
        msg = f"'{version}' is not an OpenSearch release this can run; use 2.x.y or 3.x.y, e.g. 2.19.1 or 3.4.0"
        raise typer.BadParameter(msg, param_hint="--version") from e


def _cluster(settings: Settings) -> OpenSearchCluster:
    """The cluster `dev status` and `dev down` look at: the one started in MMOS_DEV_DIR, else the setting's."""
    started = running_cluster_size(settings)
    if started > 1:
        cluster = OpenSearchCluster(settings, started)
        if any(node.process.pid() is not None for node in cluster.nodes):
            return cluster
    return OpenSearchCluster(settings)


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
def up(version: Version = None, secure: Secure = False, nodes: Nodes = None) -> None:
    """Start OpenSearch (one node, or --nodes N) and Redis (harmless when they already run)."""
    settings = _settings(version, secure=secure, nodes=nodes)
    cluster = OpenSearchCluster(settings)
    node = cluster.nodes[0]
    with console.status("starting Redis"):
        redis_status = RedisServer(settings).start()
    waiting = "~30 s" if cluster.size == 1 else f"{cluster.size} nodes, until all joined and green; ~1-2 min"
    with console.status(f"starting OpenSearch (first start fetches jars; {waiting})"):
        os_statuses = cluster.start()
    _print([*os_statuses, redis_status])
    if cluster.size > 1:
        hosts = ",".join(cluster.hosts)
        console.print(f"clients use every node with: export MMOS_OPENSEARCH_HOSTS={hosts}",
                      soft_wrap=True, markup=False, highlight=False)
    if node.secure:
        console.print(f"secured: TLS with the dev CA {node.security.ca_cert}; admin password in "
                      f"{node.security.password_file}; client certificate {node.security.client_cert} "
                      f"(key {node.security.client_key}). Point mm-opensearch at it with:", soft_wrap=True)
        exports = " ".join(f"{k}={v}" for k, v in cluster.client_environment().items())
        console.print(f"export {exports}", soft_wrap=True, markup=False, highlight=False)


@app.command()
def down() -> None:
    """Stop both services; no process is left behind."""
    settings = get_settings()
    started = running_cluster_size(settings)
    services: list[tuple[str, OpenSearchNode | OpenSearchCluster | RedisServer]] = [
        ("opensearch", OpenSearchNode(settings))
    ]
    if started > 1:
        services.append((f"opensearch cluster ({started} nodes)", OpenSearchCluster(settings, started)))
    services.append(("redis", RedisServer(settings)))
    for name, service in services:
        console.print(f"{name}: {'stopped' if service.stop() else 'was not running'}")


@app.command()
def status() -> None:
    """Report whether each service runs and answers."""
    settings = get_settings()
    _print([*_cluster(settings).status(), RedisServer(settings).status()])
