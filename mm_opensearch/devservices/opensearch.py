"""A real single-node OpenSearch 2.19.1 (k-NN, and neural-search when it loads) in one JVM.

The jars come from Maven Central through a fetch-only ``pom.xml``; a small Java launcher subclasses
``org.opensearch.node.Node`` with classpath plugins. No Docker and no tarball are needed, so the
same code runs on a laptop, in CI and inside the test suite.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx

from mm_opensearch.config import Settings
from mm_opensearch.devservices.process import ManagedProcess, ServiceStatus
from mm_opensearch.errors import DevServiceError
from mm_opensearch.resources import opensearch_launcher_dir

__all__ = ["OpenSearchNode", "find_java"]

_JDK_HINT = "install a JDK 17 (apt-get install -y openjdk-17-jdk-headless) or set MMOS_DEV_JAVA_HOME"


def _java_major(java: Path) -> int:
    done = subprocess.run([str(java), "-version"], capture_output=True, text=True, check=False)  # noqa: S603
    match = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr)
    if not match:
        msg = f"could not read the version of {java} ({done.stderr.strip()[:200]}); {_JDK_HINT}"
        raise DevServiceError(msg)
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 else major


def find_java(settings: Settings) -> Path:
    """The ``java`` binary to run the node with; OpenSearch 2.19 needs Java 11 to 23."""
    candidates: list[Path] = []
    for home in (settings.dev_java_home, os.environ.get("JAVA_HOME")):
        if home:
            candidates.append(Path(home) / "bin" / "java")
    on_path = shutil.which("java")
    if on_path:
        candidates.append(Path(on_path))
    for java in candidates:
        if java.is_file() and 11 <= _java_major(java) <= 23:
            return java
    seen = ", ".join(str(c) for c in candidates) or "none"
    msg = f"no Java 11-23 runtime found (looked at: {seen}); {_JDK_HINT}"
    raise DevServiceError(msg)


def _digest(*paths: Path) -> str:
    sha = hashlib.sha256()
    for path in paths:
        for file in sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file()):
            sha.update(file.read_bytes())
    return sha.hexdigest()[:12]


class OpenSearchNode:
    """Fetch, start, stop and inspect the local OpenSearch node."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = settings.dev_opensearch_port
        self.transport_port = settings.dev_opensearch_transport_port
        self.source = opensearch_launcher_dir()
        self.jars = settings.jar_cache_dir
        self.home = settings.dev_dir.resolve() / "opensearch"
        self.process = ManagedProcess("opensearch", settings.dev_dir.resolve(), self.port)
        self.url = f"http://127.0.0.1:{self.port}"

    # --- fetch ----------------------------------------------------------------------------
    @property
    def _classes(self) -> Path:
        return self.jars / f"classes-{_digest(self.source / 'src')}"

    def fetch(self) -> Path:
        """Download the jars once per machine (keyed by the pom) and compile the launcher."""
        marker = self.jars / f".fetched-{_digest(self.source / 'pom.xml')}"
        if not marker.exists():
            mvn = shutil.which("mvn")
            if mvn is None:
                msg = "Maven ('mvn') is not installed; install it with: apt-get install -y maven"
                raise DevServiceError(msg)
            self.jars.mkdir(parents=True, exist_ok=True)
            argv = [mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(self.source / "pom.xml"), f"-Dmmos.out={self.jars}", "package"]
            done = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603
            if done.returncode != 0:
                tail = "\n".join((done.stdout + done.stderr).splitlines()[-25:])
                msg = (
                    f"Maven could not fetch the OpenSearch jars (exit {done.returncode}):\n{tail}\n"
                    "Check that Maven Central is reachable (or the mirror in ~/.m2/settings.xml), "
                    "then rerun: mm-opensearch dev fetch"
                )
                raise DevServiceError(msg)
            marker.touch()
        if not self._classes.exists():
            self._compile()
        return self.jars

    def _compile(self) -> None:
        javac = find_java(self.settings).with_name("javac")
        if not javac.exists():
            javac = Path(shutil.which("javac") or "javac")
        sources = [str(p) for p in (self.source / "src").rglob("*.java")]
        staging = self._classes.with_suffix(".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        argv = [str(javac), "-nowarn", "-cp", f"{self.jars / 'lib'}/*", "-d", str(staging), *sources]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603
        except FileNotFoundError as e:
            msg = f"javac not found; {_JDK_HINT}"
            raise DevServiceError(msg) from e
        if done.returncode != 0:
            msg = f"compiling the OpenSearch launcher failed:\n{done.stderr[-2000:]}"
            raise DevServiceError(msg)
        staging.rename(self._classes)

    # --- run ------------------------------------------------------------------------------
    def _jvm_options(self) -> list[str]:
        lines = (self.source / "jvm.options").read_text().splitlines()
        return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]

    def _health(self) -> dict | None:
        try:
            response = httpx.get(f"{self.url}/_cluster/health", timeout=2.0)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        body = response.json()
        return body if body.get("status") in {"green", "yellow"} else None

    def start(self, timeout_s: float = 240.0) -> ServiceStatus:
        """Start the node (no-op when ours is already up) and wait for a yellow/green cluster."""
        if self.process.pid() is not None:
            self.process.wait_until(lambda: self._health() is not None, timeout_s)
            return self.status()
        self.process.ensure_port_free("MMOS_DEV_OPENSEARCH_PORT")
        self.process.ensure_port_free("MMOS_DEV_OPENSEARCH_TRANSPORT_PORT", self.transport_port)
        self.fetch()
        java = find_java(self.settings)
        self.home.mkdir(parents=True, exist_ok=True)
        heap = self.settings.dev_opensearch_heap
        argv = [
            str(java),
            *self._jvm_options(),
            f"-Xms{heap}",
            f"-Xmx{heap}",
            "-cp",
            f"{self._classes}:{self.jars / 'lib'}/*",
            "mmos.Launcher",
            str(self.home),
            f"http.port={self.port}",
            f"transport.port={self.transport_port}",
        ]
        self.process.spawn(argv)
        self.process.wait_until(lambda: self._health() is not None, timeout_s)
        return self.status()

    def stop(self) -> bool:
        return self.process.stop(timeout_s=60)

    def kill(self) -> bool:
        """SIGKILL the JVM (no shutdown, no flush): what an outage test needs. ``start`` recovers from it."""
        return self.process.kill()

    def plugins(self) -> list[str]:
        """Names of the plugins the running node loaded (``GET _cat/plugins``)."""
        response = httpx.get(f"{self.url}/_cat/plugins", params={"h": "component", "format": "json"}, timeout=5)
        response.raise_for_status()
        return sorted({row["component"] for row in response.json()})

    def status(self) -> ServiceStatus:
        pid = self.process.pid()
        health = self._health() if pid is not None else None
        if health is None:
            detail = "starting or unhealthy" if pid else "not running"
            return ServiceStatus("opensearch", False, pid, self.port, detail)
        detail = f"cluster {health['status']}, plugins: {', '.join(self.plugins()) or 'none'}"
        return ServiceStatus("opensearch", True, pid, self.port, detail)
