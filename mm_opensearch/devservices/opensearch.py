"""A real single-node OpenSearch (2.x with k-NN and neural-search, or 3.x with k-NN) in one JVM.

The jars come from Maven Central through a fetch-only ``pom.xml``; a small Java launcher subclasses
``org.opensearch.node.Node`` with classpath plugins. No Docker and no tarball are needed, so the
same code runs on a laptop, in CI and inside the test suite. What differs between the majors (module
class names, how plugins reach the node, the JDK: 3.x needs 21 or later) is settled here and in
``dev/opensearch/src/v2`` / ``src/v3``; the data folder remembers which release wrote it, because a
node cannot open data written by a newer major.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx

from mm_opensearch.config import Settings
from mm_opensearch.devservices.process import ManagedProcess, ServiceStatus
from mm_opensearch.devservices.security import ADMIN_USER, SecurityFiles, ensure_security_files
from mm_opensearch.errors import DevServiceError
from mm_opensearch.resources import opensearch_launcher_dir

__all__ = ["DEV_CLUSTER_NAME", "OpenSearchNode", "Release", "cluster_node_name", "find_java", "jvm_options"]

DEV_CLUSTER_NAME = "mm-opensearch-dev"  # cluster.name that dev/opensearch's Launcher sets

def cluster_node_name(index: int) -> str:
    """``node.name`` of node ``index`` of a dev cluster (also its ``initial_cluster_manager_nodes`` entry)."""
    return f"mmos-dev-{index}"


_JDK_DIRS = "/usr/lib/jvm/*/bin/java"  # where Debian and Temurin packages put their JDKs


@dataclass(frozen=True)
class Release:
    """One OpenSearch release the dev node can run, and what it needs."""

    version: str

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def key(self) -> tuple[int, ...]:
        """(major, minor, patch), to order releases."""
        return tuple(int(part) for part in self.version.split("."))

    @property
    def plugin_version(self) -> str:
        return f"{self.version}.0"  # k-NN and neural-search release with the core: 2.19.1 -> 2.19.1.0

    @property
    def java_range(self) -> tuple[int, int | None]:
        """JDK majors it runs on: 2.x 11-23 (its jvm.options and security manager), 3.x 21 and later."""
        return (11, 23) if self.major == 2 else (21, None)

    def java_hint(self) -> str:
        low, high = self.java_range
        wanted = f"a JDK {low}-{high}" if high else f"a JDK {low} or later"
        example = "openjdk-17-jdk-headless" if self.major == 2 else "a Temurin 21+ JDK"
        return f"OpenSearch {self.version} needs {wanted}: install one ({example}) or set MMOS_DEV_JAVA_HOME"


def _java_major(java: Path) -> int:
    done = subprocess.run([str(java), "-version"], capture_output=True, text=True, check=False)  # noqa: S603
    match = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr)
    if not match:
        msg = f"could not read the version of {java} ({done.stderr.strip()[:200]}); set MMOS_DEV_JAVA_HOME to a JDK"
        raise DevServiceError(msg)
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 else major


def find_java(settings: Settings) -> Path:
    """The ``java`` binary to run the configured release with: the first in range of MMOS_DEV_JAVA_HOME,
    JAVA_HOME, ``java`` on PATH and the JDKs under /usr/lib/jvm."""
    release = Release(settings.dev_opensearch_version)
    low, high = release.java_range
    candidates: list[Path] = []
    for home in (settings.dev_java_home, os.environ.get("JAVA_HOME")):
        if home:
            candidates.append(Path(home) / "bin" / "java")
    if settings.dev_java_home is None:  # an explicit MMOS_DEV_JAVA_HOME is the only choice
        on_path = shutil.which("java")
        if on_path:
            candidates.append(Path(on_path))
        candidates += [Path(p) for p in sorted(glob.glob(_JDK_DIRS))]
    seen: list[str] = []
    for java in candidates:
        if not java.is_file():
            seen.append(f"{java} (missing)")
            continue
        major = _java_major(java)
        if low <= major and (high is None or major <= high):
            return java
        seen.append(f"{java} (Java {major})")
    msg = f"no suitable Java found (looked at: {', '.join(seen) or 'none'}); {release.java_hint()}"
    raise DevServiceError(msg)


def jvm_options(text: str, java_major: int) -> list[str]:
    """The flags of a ``jvm.options`` text for this JDK; ``N:``, ``N-:`` and ``N-M:`` prefixes as OpenSearch's."""
    flags = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^(\d+)(-)?(\d+)?:(.*)$", line)
        if match:
            low = int(match.group(1))
            high = int(match.group(3)) if match.group(3) else (None if match.group(2) else low)
            if java_major < low or (high is not None and java_major > high):
                continue
            line = match.group(4)
        flags.append(line)
    return flags


_JAR_NAME = re.compile(r"^(?P<artifact>.+?)-(?P<version>\d[\w.]*?)(?:-jre|\.Final)?\.jar$")


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def drop_older_duplicate_jars(lib: Path) -> list[str]:
    """Delete the older copy where two plugin zips bring one library in two versions (the security
    plugin's guava 33.4 beside k-NN's 32.1, say): on a flat classpath either could win, per class."""
    newest: dict[str, Path] = {}
    dropped = []
    for jar in sorted(lib.glob("*.jar")):
        match = _JAR_NAME.match(jar.name)
        if not match:
            continue
        artifact = match.group("artifact")
        other = newest.get(artifact)
        if other is None:
            newest[artifact] = jar
            continue
        other_version = _JAR_NAME.match(other.name).group("version")  # type: ignore[union-attr]
        jar_is_newer = _version_key(other_version) < _version_key(match.group("version"))
        older, newer = (other, jar) if jar_is_newer else (jar, other)
        older.unlink()
        dropped.append(older.name)
        newest[artifact] = newer
    return dropped


def _digest(*paths: Path) -> str:
    sha = hashlib.sha256()
    for path in paths:
        for file in sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file()):
            sha.update(file.read_bytes())
    return sha.hexdigest()[:12]


class OpenSearchNode:
    """Fetch, start, stop and inspect the local OpenSearch node."""

    def __init__(self, settings: Settings, index: int = 0, cluster_size: int = 1) -> None:
        """The single dev node (``cluster_size`` 1, the default), or node ``index`` of a dev cluster.

        A cluster's nodes share one home (config, certificates, version and security markers) and
        each has its own data and log folder, pid file and ports (base + index); a cluster never
        opens the single node's data, whose voting configuration names one node only.
        """
        if not 0 <= index < cluster_size:
            msg = f"node index {index} is outside a {cluster_size}-node dev cluster"
            raise DevServiceError(msg)
        self.settings = settings
        self.release = Release(settings.dev_opensearch_version)
        self.index = index
        self.cluster_size = cluster_size
        self.port = settings.dev_opensearch_port + index
        self.transport_port = settings.dev_opensearch_transport_port + index
        self.source = opensearch_launcher_dir()
        self.jars = settings.jar_cache_dir
        dev_dir = settings.dev_dir.resolve()
        if cluster_size == 1:
            self.name = "mmos-dev"  # the Launcher's default node.name
            self.home = dev_dir / "opensearch"
            self.node_dir = self.home
            self.process = ManagedProcess("opensearch", dev_dir, self.port)
        else:
            self.name = cluster_node_name(index)
            self.home = dev_dir / "opensearch-cluster"
            self.node_dir = self.home / f"node{index}"
            self.process = ManagedProcess(f"opensearch-node{index}", dev_dir, self.port)
        self.url = f"http://127.0.0.1:{self.port}"
        self._init_security(settings)

    # --- security (dev up --secure) -------------------------------------------------------
    def _init_security(self, settings: Settings) -> None:
        """A secured node (asked for, or a home that was started secured: `dev status` then speaks TLS)
        uses its own jar folder with the security plugin, https and the admin credentials."""
        self.security = SecurityFiles(self.home / "config")
        self.secure_requested = settings.dev_opensearch_secure
        self.secure = self.secure_requested or self._secured_marker.exists()
        if self.secure:
            self.jars = settings.jar_cache_dir.with_name(f"{settings.jar_cache_dir.name}-secure")
            self.url = f"https://127.0.0.1:{self.port}"

    @property
    def _secured_marker(self) -> Path:
        return self.home / "mmos-secure"

    def _http_options(self) -> dict:
        """httpx options for our own requests to the node: the dev CA and the admin user when secured."""
        if not self.secure:
            return {}
        if not self.security.password_file.exists():
            msg = (
                f"the secured dev node's admin password file {self.security.password_file} is missing; "
                f"delete {self.home} and run `mm-opensearch dev up --secure` again"
            )
            raise DevServiceError(msg)
        return {
            "verify": ssl.create_default_context(cafile=str(self.security.ca_cert)),
            "auth": (ADMIN_USER, self.security.admin_password()),
        }

    def _prepare_security(self) -> None:
        """Certificates, plugin settings and YAML before a secured start; refuse to open a secured home
        unsecured (its security index would be readable by anyone, and opensearch.yml names the plugin)."""
        if not self.secure_requested:
            if self._secured_marker.exists():
                msg = (
                    f"the dev node in {self.home} was started secured; start it with `mm-opensearch dev up --secure` "
                    f"(MMOS_DEV_OPENSEARCH_SECURE=true), or use another MMOS_DEV_DIR for an unsecured node"
                )
                raise DevServiceError(msg)
            return
        ensure_security_files(self.security.config)
        self._secured_marker.write_text("secured by mm-opensearch dev up --secure\n")

    def client_environment(self) -> dict[str, str]:
        """The MMOS_* settings that point mm-opensearch's client at this node (password read from its file)."""
        env = {"MMOS_OPENSEARCH_HOSTS": self.url}
        if self.secure:
            env |= {
                "MMOS_OPENSEARCH_CA_CERTS": str(self.security.ca_cert),
                "MMOS_OPENSEARCH_USER": ADMIN_USER,
                "MMOS_OPENSEARCH_PASSWORD": f"$(cat {self.security.password_file})",
            }
        return env

    # --- fetch ----------------------------------------------------------------------------
    @property
    def _sources(self) -> list[Path]:
        """The launcher's common part and the part for this major."""
        return [self.source / "src" / "common", self.source / "src" / f"v{self.release.major}"]

    @property
    def _classes(self) -> Path:
        return self.jars / f"classes-{_digest(*self._sources)}"

    def fetch(self) -> Path:
        """Download the jars once per machine (keyed by the pom) and compile the launcher."""
        marker = self.jars / f".fetched-{_digest(self.source / 'pom.xml')}"
        if not marker.exists():
            mvn = shutil.which("mvn")
            if mvn is None:
                msg = "Maven ('mvn') is not installed; install it with: apt-get install -y maven"
                raise DevServiceError(msg)
            self.jars.mkdir(parents=True, exist_ok=True)
            argv = [
                mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(self.source / "pom.xml"), f"-Dmmos.out={self.jars}",
                f"-Dopensearch.version={self.release.version}", f"-Dplugin.version={self.release.plugin_version}",
                f"-Dmmos.major={self.release.major}", *(["-Dmmos.secure=true"] if self.secure else []), "package",
            ]
            done = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603
            if done.returncode != 0:
                tail = "\n".join((done.stdout + done.stderr).splitlines()[-25:])
                msg = (
                    f"Maven could not fetch the OpenSearch jars (exit {done.returncode}):\n{tail}\n"
                    "Check that Maven Central is reachable (or the mirror in ~/.m2/settings.xml), "
                    "then rerun: mm-opensearch dev fetch"
                )
                raise DevServiceError(msg)
            if self.secure:
                drop_older_duplicate_jars(self.jars / "lib")
            marker.touch()
        if not self._classes.exists():
            self._compile()
        return self.jars

    def _compile(self) -> None:
        javac = find_java(self.settings).with_name("javac")
        if not javac.exists():
            javac = Path(shutil.which("javac") or "javac")
        sources = [str(p) for folder in self._sources for p in folder.rglob("*.java")]
        staging = self._classes.with_suffix(".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        argv = [str(javac), "-nowarn", "-cp", f"{self.jars / 'lib'}/*", "-d", str(staging), *sources]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603
        except FileNotFoundError as e:
            msg = f"javac not found next to the java binary; {self.release.java_hint()}"
            raise DevServiceError(msg) from e
        if done.returncode != 0:
            msg = f"compiling the OpenSearch launcher failed:\n{done.stderr[-2000:]}"
            raise DevServiceError(msg)
        staging.rename(self._classes)

    # --- run ------------------------------------------------------------------------------
    def _check_data_version(self) -> None:
        """Refuse data written by a newer release; remember ours.

        A newer major's Lucene files cannot be read, and OpenSearch refuses any node downgrade, minor
        and patch too ("cannot downgrade a node"): either way the node would fail deep in its start.
        """
        marker = self.home / "mmos-version"
        if marker.exists():
            written = Release(marker.read_text().strip())
            if written.key > self.release.key:
                msg = (
                    f"the dev node's data in {self.home} was written by OpenSearch {written.version}, which "
                    f"{self.release.version} cannot read; start {written.version} "
                    f"(MMOS_DEV_OPENSEARCH_VERSION={written.version}) or delete {self.home} to start empty"
                )
                raise DevServiceError(msg)
        marker.write_text(self.release.version)

    def _health(self) -> dict | None:
        try:
            response = httpx.get(f"{self.url}/_cluster/health", timeout=2.0, **self._http_options())
        except httpx.HTTPError:
            return None
        if response.status_code == 401 and self.secure:
            msg = (
                f"the secured dev node refused the admin password in {self.security.password_file}; "
                f"restore that file, or delete {self.home} and run `mm-opensearch dev up --secure` again"
            )
            raise DevServiceError(msg)
        if response.status_code != 200:
            return None
        body = response.json()
        return body if body.get("status") in {"green", "yellow"} else None

    def start(self, timeout_s: float = 240.0) -> ServiceStatus:
        """Start the node (no-op when ours is already up) and wait for a yellow/green cluster."""
        if self.process.pid() is not None:
            if self.secure != self.secure_requested or self.secure != self._secured_marker.exists():
                how = "secured; use `mm-opensearch dev up --secure`" if self._secured_marker.exists() else "unsecured"
                msg = f"the dev node on port {self.port} runs {how}, or stop it first with `mm-opensearch dev down`"
                raise DevServiceError(msg)
            self.process.wait_until(lambda: self._health() is not None, timeout_s)
            running = self.version()
            if running != self.release.version:
                msg = (
                    f"the dev node on port {self.port} runs OpenSearch {running}, not {self.release.version}; "
                    "stop it first with `mm-opensearch dev down`"
                )
                raise DevServiceError(msg)
            return self.status()
        self.launch()
        self.process.wait_until(lambda: self._health() is not None, timeout_s)
        return self.status()

    def launch(self) -> int:
        """Spawn the JVM without waiting for it (a cluster waits for all its nodes at once); the pid."""
        self.process.ensure_port_free("MMOS_DEV_OPENSEARCH_PORT")
        self.process.ensure_port_free("MMOS_DEV_OPENSEARCH_TRANSPORT_PORT", self.transport_port)
        self.fetch()
        java = find_java(self.settings)
        self.home.mkdir(parents=True, exist_ok=True)
        self._check_data_version()
        self._prepare_security()
        heap = self.settings.dev_opensearch_heap
        argv = [
            str(java),
            *jvm_options((self.source / "jvm.options").read_text(), _java_major(java)),
            f"-Xms{heap}",
            f"-Xmx{heap}",
            "-cp",
            f"{self._classes}:{self.jars / 'lib'}/*",
            "mmos.Launcher",
            str(self.home),
            f"http.port={self.port}",
            f"transport.port={self.transport_port}",
            *self._cluster_arguments(),
        ]
        return self.process.spawn(argv)

    def _cluster_arguments(self) -> list[str]:
        """Launcher settings of a cluster node: discovery of its peers, its own folders, one processor.

        ``node.processors: 1`` sizes the thread pools for one core, so three nodes share this kind of
        small machine with the tests; replicas default to 1 so that one lost node loses no data.
        """
        if self.cluster_size == 1:
            return []
        base = self.settings.dev_opensearch_transport_port
        peers = ",".join(f"127.0.0.1:{base + i}" for i in range(self.cluster_size))
        managers = ",".join(cluster_node_name(i) for i in range(self.cluster_size))
        return [
            "discovery.type=zen",  # replaces the Launcher's single-node discovery
            f"discovery.seed_hosts={peers}",
            f"cluster.initial_cluster_manager_nodes={managers}",
            f"node.name={self.name}",
            "node.processors=1",
            f"path.data={self.node_dir / 'data'}",
            f"path.logs={self.node_dir / 'logs'}",
            "cluster.default_number_of_replicas=1",
        ]

    def stop(self) -> bool:
        return self.process.stop(timeout_s=60)

    def get(self, path: str, **params: str) -> httpx.Response:
        """``GET path`` on this node with the dev CA and admin user where secured; raises httpx errors."""
        return httpx.get(f"{self.url}{path}", params=params, timeout=5.0, **self._http_options())

    def version(self) -> str:
        """The release the running node reports (``GET /``)."""
        response = httpx.get(self.url, timeout=5, **self._http_options())
        response.raise_for_status()
        return str(response.json()["version"]["number"])

    def kill(self) -> bool:
        """SIGKILL the JVM (no shutdown, no flush): what an outage test needs. ``start`` recovers from it."""
        return self.process.kill()

    def plugins(self) -> list[str]:
        """Names of the plugins the running node loaded (``GET _cat/plugins``)."""
        response = httpx.get(f"{self.url}/_cat/plugins", params={"h": "component", "format": "json"}, timeout=5,
                             **self._http_options())
        response.raise_for_status()
        return sorted({row["component"] for row in response.json()})

    def status(self) -> ServiceStatus:
        pid = self.process.pid()
        health = self._health() if pid is not None else None
        if health is None:
            detail = "starting or unhealthy" if pid else "not running"
            return ServiceStatus("opensearch", False, pid, self.port, detail)
        detail = f"{self.version()}, cluster {health['status']}, plugins: {', '.join(self.plugins()) or 'none'}"
        return ServiceStatus("opensearch", True, pid, self.port, detail)
