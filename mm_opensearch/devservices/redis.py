"""A real Redis server (Debian's ``redis-server``) on 127.0.0.1 for the broker and checkpoints.

A password (``requirepass``) and TLS (``--tls-port``, plain port off) are optional so that tests can
run the broker, the job store and the workers against a secured server like a production one. The
password goes into a 0600 config file, not onto the command line, where ``ps`` would show it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import redis

from mm_opensearch.config import Settings
from mm_opensearch.devservices.process import ManagedProcess, ServiceStatus
from mm_opensearch.errors import DevServiceError

__all__ = ["RedisServer", "RedisTLS", "ensure_redis_binary"]

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


@dataclass(frozen=True)
class RedisTLS:
    """The server's certificate and key (PEM) and the CA that signed them; clients need not present one."""

    cert_file: Path
    key_file: Path
    ca_file: Path


class RedisServer:
    """Start, stop and inspect the local Redis. Append-only persistence survives a restart.

    With ``tls`` the server listens for TLS only, on ``dev_redis_port``; with ``password`` it
    refuses commands before ``AUTH``.
    """

    def __init__(self, settings: Settings, *, password: str | None = None, tls: RedisTLS | None = None) -> None:
        self.settings = settings
        self.port = settings.dev_redis_port
        self.password = password
        self.tls = tls
        self.process = ManagedProcess("redis", settings.dev_dir.resolve(), self.port)

    @property
    def url(self) -> str:
        """The URL a client of this server needs (with the password: keep it out of logs)."""
        auth = f":{self.password}@" if self.password else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}127.0.0.1:{self.port}/0"

    def _ping(self) -> bool:
        tls = {"ssl": True, "ssl_ca_certs": str(self.tls.ca_file)} if self.tls else {}
        try:
            return bool(redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                                    socket_timeout=0.5, **tls).ping())
        except redis.RedisError:
            return False

    def _listen_args(self, data: Path) -> list[str]:
        args: list[str] = []
        if self.password:
            conf = data / "auth.conf"
            conf.touch(mode=0o600)
            conf.chmod(0o600)
            conf.write_text(f'requirepass "{self.password}"\n')
            args.append(str(conf))  # the config file must come first
        args += ["--bind", "127.0.0.1"]
        if self.tls:
            return [*args, "--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.cert_file),
                    "--tls-key-file", str(self.tls.key_file), "--tls-ca-cert-file", str(self.tls.ca_file),
                    "--tls-auth-clients", "no"]
        return [*args, "--port", str(self.port)]

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
                *self._listen_args(data),
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
