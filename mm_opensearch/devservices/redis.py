"""A real Redis server (Debian's ``redis-server``) on 127.0.0.1 for the broker and checkpoints."""

from __future__ import annotations

import os
import shutil
import subprocess

import redis

from mm_opensearch.config import Settings
from mm_opensearch.devservices.process import ManagedProcess, ServiceStatus
from mm_opensearch.errors import DevServiceError

__all__ = ["RedisServer", "ensure_redis_binary"]

_INSTALL_HINT = "install it with: sudo apt-get update && sudo apt-get install -y redis-server"


def ensure_redis_binary(*, install: bool = True) -> str:
    """Path of ``redis-server``; installs Debian's package when missing and we are root."""
    found = shutil.which("redis-server")
    if found:
        return found
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "redis-server"]):
            done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)  # noqa: S603
            if done.returncode != 0:
                msg = f"'{' '.join(argv)}' failed ({done.stderr.strip()[-500:]}); {_INSTALL_HINT}"
                raise DevServiceError(msg)
        found = shutil.which("redis-server")
    if not found:
        msg = f"redis-server is not installed; {_INSTALL_HINT}"
        raise DevServiceError(msg)
    return found


class RedisServer:
    """Start, stop and inspect the local Redis. Append-only persistence survives a restart."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = settings.dev_redis_port
        self.process = ManagedProcess("redis", settings.dev_dir.resolve(), self.port)

    def _ping(self) -> bool:
        try:
            return bool(redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def start(self, timeout_s: float = 30.0) -> ServiceStatus:
        if self.process.pid() is not None and self._ping():
            return self.status()
        binary = ensure_redis_binary()
        self.process.ensure_port_free("MMOS_DEV_REDIS_PORT")
        data = self.process.workdir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        self.process.spawn(
            [
                binary,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--dir", str(data),
                "--appendonly", "yes",
                "--save", "",
                "--daemonize", "no",
                "--protected-mode", "yes",
            ]
        )
        self.process.wait_until(self._ping, timeout_s)
        return self.status()

    def stop(self) -> bool:
        return self.process.stop(timeout_s=20)

    def status(self) -> ServiceStatus:
        pid = self.process.pid()
        up = pid is not None and self._ping()
        detail = "PONG" if up else ("process alive, not answering" if pid else "not running")
        return ServiceStatus("redis", up, pid, self.port, detail)
