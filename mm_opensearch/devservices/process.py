"""Detached background processes tracked by a pid file: the part OpenSearch and Redis share."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mm_opensearch.errors import DevServiceError

__all__ = ["ManagedProcess", "ServiceStatus", "port_is_open"]


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    pid: int | None
    port: int
    detail: str


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


class ManagedProcess:
    """One service process: started detached (own session), found again through its pid file."""

    def __init__(self, name: str, workdir: Path, port: int) -> None:
        self.name = name
        self.workdir = workdir
        self.port = port
        self.pid_file = workdir / f"{name}.pid"
        self.log_file = workdir / "logs" / f"{name}.out"

    def pid(self) -> int | None:
        """The pid of our running process, or None (a stale pid file is removed)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if _pid_alive(pid):
            return pid
        self.pid_file.unlink(missing_ok=True)
        return None

    def ensure_port_free(self, setting: str, port: int | None = None) -> None:
        port = self.port if port is None else port
        if port_is_open(port):
            msg = (
                f"port {port} on 127.0.0.1 is already in use by another process, so {self.name} "
                f"cannot start; stop that process or choose another port with {setting}=<port>"
            )
            raise DevServiceError(msg)

    def spawn(self, argv: Sequence[str], *, env: dict[str, str] | None = None) -> int:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(  # noqa: S603 - argv is built by this package
                list(argv),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        self.pid_file.write_text(str(proc.pid))
        return proc.pid

    def wait_until(self, ready: Callable[[], bool], timeout_s: float) -> None:
        """Poll ``ready`` until it is true; fail fast with the log tail when the process dies."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.pid() is None:
                msg = f"{self.name} exited during start-up; last lines of {self.log_file}:\n{self.log_tail()}"
                raise DevServiceError(msg)
            if ready():
                return
            time.sleep(0.5)
        msg = (
            f"{self.name} did not become ready within {timeout_s:.0f}s; see {self.log_file}:\n"
            f"{self.log_tail()}"
        )
        raise DevServiceError(msg)

    def stop(self, timeout_s: float = 60.0) -> bool:
        """SIGTERM the process group, then SIGKILL after ``timeout_s``. False when nothing ran."""
        pid = self.pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _pid_alive(pid):
            time.sleep(0.2)
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            while _pid_alive(pid):
                time.sleep(0.1)
        with contextlib.suppress(ChildProcessError):
            # reap it when this process started it: no zombie is left. Not WNOHANG: a JVM whose main
            # thread is a zombie already is reapable only once its other threads are gone, soon.
            os.waitpid(pid, 0)
        self.pid_file.unlink(missing_ok=True)
        return True

    def kill(self) -> bool:
        """SIGKILL the process group at once, as an OOM killer or a lost machine would. False when nothing ran."""
        pid = self.pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        try:
            os.waitpid(pid, 0)  # our child: reaped once every thread has exited
        except ChildProcessError:  # someone else's (`dev up` exited): gone from /proc once its reaper saw it
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
        deadline = time.monotonic() + 30  # a dying JVM frees its sockets only when its last thread is gone
        while port_is_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return True

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log written)"
