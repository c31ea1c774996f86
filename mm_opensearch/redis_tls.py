"""TLS options for Redis clients (redis-py, Celery's broker and result backend) from the settings.

One function so the job store, the preflight probe and the Celery app verify a ``rediss://`` server
the same way: against ``MMOS_REDIS_CA_FILE`` when set, the system's CAs otherwise, never unverified.
Celery's result backend refuses a ``rediss://`` URL without an explicit ``ssl_cert_reqs``.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

__all__ = ["redis_ssl_options"]


def redis_ssl_options(url: str, ca_file: Path | None) -> dict[str, Any]:
    """Keyword arguments for redis-py (and kombu's ``broker_use_ssl``); empty for a plain URL."""
    if not url.startswith("rediss://"):
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if ca_file is not None:
        options["ssl_ca_certs"] = str(ca_file)
    return options
