"""A dev cluster of one or more OpenSearch nodes on loopback, and the node-level faults tests need.

Each node is an :class:`OpenSearchNode` (one JVM, its own data, log and pid file, ports base +
index). The cluster starts the nodes that are not running, waits for the condition that matters
(all nodes joined and the cluster green), and can SIGKILL or restart one node by index, so fault
tests can take a node away under load and bring it back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx

from mm_opensearch.config import Settings
from mm_opensearch.devservices.opensearch import OpenSearchNode
from mm_opensearch.devservices.process import ServiceStatus
from mm_opensearch.errors import DevServiceError

__all__ = ["NodeInfo", "OpenSearchCluster", "running_cluster_size"]

_POLL_S = 0.5
# the letters `_cat/nodes` uses for node.role
_ROLE_LETTERS = {"cluster_manager": "m", "data": "d", "ingest": "i", "remote_cluster_client": "r", "search": "s",
                 "ml": "l", "warm": "w"}


@dataclass(frozen=True)
class NodeInfo:
    """One joined node as the cluster reports it (``GET _nodes``)."""

    name: str
    roles: tuple[str, ...]
    pid: int
    http: str
    elected_manager: bool


def running_cluster_size(settings: Settings) -> int:
    """How many nodes the dev cluster in ``settings.dev_dir`` was started with (0: none ever).

    `dev down` and `dev status` run without `--nodes`; they find the nodes from the folders a
    multi-node `dev up` created, so nothing is left running whatever the setting says now.
    """
    home = settings.dev_dir.resolve() / "opensearch-cluster"
    return len(list(home.glob("node[0-9]"))) if home.is_dir() else 0


class OpenSearchCluster:
    """The dev cluster: ``size`` nodes (default ``MMOS_DEV_OPENSEARCH_NODES``); size 1 is the single node."""

    def __init__(self, settings: Settings, size: int | None = None) -> None:
        self.settings = settings
        self.size = settings.dev_opensearch_nodes if size is None else size
        if self.size == 1:
            self.nodes = [OpenSearchNode(settings)]
        else:
            self.nodes = [OpenSearchNode(settings, i, self.size) for i in range(self.size)]

    # --- addresses ------------------------------------------------------------------------
    @property
    def hosts(self) -> list[str]:
        """Every node's URL, what MMOS_OPENSEARCH_HOSTS should list for a client to use them all."""
        return [node.url for node in self.nodes]

    @property
    def secure(self) -> bool:
        return self.nodes[0].secure

    def client_environment(self) -> dict[str, str]:
        """The MMOS_* settings pointing mm-opensearch at every node of the cluster."""
        return self.nodes[0].client_environment() | {"MMOS_OPENSEARCH_HOSTS": ",".join(self.hosts)}

    # --- lifecycle ------------------------------------------------------------------------
    def start(self, index: int | None = None, timeout_s: float = 420.0) -> list[ServiceStatus]:
        """Start node ``index`` (or every node not running) and wait until all nodes joined, green.

        A single node keeps its own start (yellow or green). For a cluster, the launches are spawned
        first and then awaited together: the nodes must find each other to elect a cluster manager.
        """
        if self.size == 1:
            return [self.nodes[0].start(timeout_s)]
        targets = self.nodes if index is None else [self.node(index)]
        launched = []
        for node in targets:
            if node.process.pid() is None:
                node.launch()
                launched.append(node)
        self.wait_until_nodes(self.size, status="green", timeout_s=timeout_s, watch=launched)
        self.nodes[0].ensure_roles()  # the security index is the cluster's: one node's calls do
        return self.status()

    def stop(self, index: int | None = None) -> bool:
        """Stop node ``index`` (SIGTERM: a clean leave) or all; False when none of them ran."""
        targets = self.nodes if index is None else [self.node(index)]
        return any([node.stop() for node in targets])  # a list: stop every node, not up to the first

    def kill(self, index: int) -> bool:
        """SIGKILL node ``index``, as a lost machine or the OOM killer would; False when it did not run."""
        return self.node(index).kill()

    def node(self, index: int) -> OpenSearchNode:
        if not 0 <= index < self.size:
            msg = f"node index {index} is outside the {self.size}-node dev cluster (0-{self.size - 1})"
            raise DevServiceError(msg)
        return self.nodes[index]

    # --- conditions -----------------------------------------------------------------------
    def health(self) -> dict | None:
        """``_cluster/health`` from the first running node that answers it; None when none does."""
        for node in self.nodes:
            if node.process.pid() is None:
                continue
            try:
                response = node.get("/_cluster/health")
            except httpx.HTTPError:
                continue
            if response.status_code == 200:
                return response.json()
        return None

    def wait_until_nodes(
        self,
        count: int,
        *,
        status: str | None = "green",
        timeout_s: float = 300.0,
        watch: list[OpenSearchNode] | None = None,
    ) -> dict:
        """Poll until the cluster reports ``count`` nodes (and ``status``, if given: "green" or
        "yellow", where yellow also accepts green); fail fast with the log when a watched node dies."""
        wanted = {"green": {"green"}, "yellow": {"green", "yellow"}, None: {"green", "yellow", "red"}}[status]
        deadline = time.monotonic() + timeout_s
        last: dict | None = None
        while True:
            for node in watch or []:
                if node.process.pid() is None:
                    msg = (
                        f"OpenSearch node {node.index} ({node.name}) exited during start-up; last lines of "
                        f"{node.process.log_file}:\n{node.process.log_tail()}"
                    )
                    raise DevServiceError(msg)
            last = self.health()
            if (last and last.get("number_of_nodes") == count and last.get("status") in wanted
                    and all(self._joined(node, count) for node in watch or [])):
                return last
            if time.monotonic() >= deadline:
                seen = f"{last.get('number_of_nodes')} nodes, {last.get('status')}" if last else "no answer"
                logs = ", ".join(str(node.process.log_file) for node in self.nodes)
                msg = (
                    f"the dev cluster did not reach {count} nodes"
                    f"{f' and {status}' if status else ''} within {timeout_s:.0f}s (last: {seen}); see {logs}"
                )
                raise DevServiceError(msg)
            time.sleep(_POLL_S)

    @staticmethod
    def _joined(node: OpenSearchNode, count: int) -> bool:
        """Whether ``node`` itself answers for a cluster of ``count``: the others' health alone may still
        count a node that just left, so a restarted node's wait would end before it joined again."""
        try:
            response = node.get("/_cluster/health")
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and response.json().get("number_of_nodes") == count

    def node_info(self) -> list[NodeInfo]:
        """The joined nodes (name, roles, pid, HTTP address, whether elected cluster manager)."""
        for node in self.nodes:
            if node.process.pid() is None:
                continue
            try:
                nodes = node.get("/_nodes/process,http")
                manager = node.get("/_cat/cluster_manager", format="json", h="node")
            except httpx.HTTPError:
                continue
            if nodes.status_code != 200 or manager.status_code != 200:
                continue
            elected = {row["node"] for row in manager.json()}
            return sorted(
                (
                    NodeInfo(
                        name=info["name"],
                        roles=tuple(info.get("roles", ())),
                        pid=int(info.get("process", {}).get("id", 0)),
                        http=info.get("http", {}).get("publish_address", ""),
                        elected_manager=info["name"] in elected,
                    )
                    for info in nodes.json()["nodes"].values()
                ),
                key=lambda n: n.name,
            )
        return []

    def elected_manager(self) -> int | None:
        """Index of the node that is the elected cluster manager now, or None (none elected or none up)."""
        for info in self.node_info():
            if info.elected_manager:
                for node in self.nodes:
                    if node.name == info.name:
                        return node.index
        return None

    def status(self) -> list[ServiceStatus]:
        """One row per node: running, pid, port, and (joined) its roles and whether it is the elected manager."""
        if self.size == 1:
            return [self.nodes[0].status()]
        joined = {info.name: info for info in self.node_info()}
        health = self.health()
        cluster = (
            f"cluster {health['status']}, {health['number_of_nodes']}/{self.size} nodes"
            if health
            else "no cluster answer"
        )
        version = None
        rows = []
        for node in self.nodes:
            pid = node.process.pid()
            info = joined.get(node.name)
            if pid is None:
                rows.append(ServiceStatus(f"opensearch {node.name}", False, None, node.port, "not running"))
                continue
            if info is None:
                rows.append(ServiceStatus(f"opensearch {node.name}", False, pid, node.port, f"not joined; {cluster}"))
                continue
            if version is None:
                try:
                    version = node.version()
                except httpx.HTTPError:
                    version = "?"
            role = "elected cluster manager" if info.elected_manager else "eligible"
            roles = "".join(_ROLE_LETTERS.get(r, "?") for r in info.roles)
            detail = f"{version}, roles {roles}, {role}" + (f"; {cluster}" if not rows else "")
            rows.append(ServiceStatus(f"opensearch {node.name}", True, pid, node.port, detail))
        return rows
