"""Reload the API's OpenSearch client when its TLS files change, without restarting the process.

Certificates are rotated by replacing the files MMOS_OPENSEARCH_CA_CERTS, _CLIENT_CERT and
_CLIENT_KEY name (docs/security.md, "Rotating certificates"). The API polls their stat signature
every ``MMOS_OPENSEARCH_CERT_RELOAD_S``; on a change it first checks that the files load as one
consistent set (the key matches the certificate, the CA bundle parses), so a half-written rotation
keeps the old client until the next poll finds the set complete. Then it builds a new client and
swaps it into the searcher: requests already running finish on the old one, which is closed at the
next swap or at shutdown (closing it at once could cut them off). Polling rather than a signal:
it works the same under several uvicorn workers and with Kubernetes secret volumes (an atomic
symlink swap changes the inode), and needs no access to the process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Callable
from pathlib import Path

from opensearchpy import OpenSearch
from starlette.concurrency import run_in_threadpool

from mm_opensearch.config import Settings
from mm_opensearch.hybrid.search import HybridSearcher

__all__ = ["CertificateReloader", "watch_certificates"]

logger = logging.getLogger(__name__)

Signature = tuple[tuple[int, int, int] | None, ...]


class CertificateReloader:
    """Watches the TLS files of ``settings`` and gives ``searcher`` a new client when they change."""

    def __init__(self, settings: Settings, searcher: HybridSearcher, build: Callable[[Settings], OpenSearch]) -> None:
        self.settings = settings
        self.searcher = searcher
        self.build = build
        self.paths: list[Path] = [p for p in (settings.opensearch_ca_certs, settings.opensearch_client_cert,
                                              settings.opensearch_client_key) if p is not None]
        self.signature = self._signature()
        self._refused: Signature | None = None  # a set found inconsistent: warned about once
        self._retired: OpenSearch | None = None
        self.reloads = 0

    @property
    def watching(self) -> bool:
        return bool(self.paths)

    def _signature(self) -> Signature:
        signature = []
        for path in self.paths:
            try:
                st = os.stat(path)  # follows symlinks: a swapped secret volume is a new inode
            except OSError:
                signature.append(None)
            else:
                signature.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(signature)

    def _consistent(self) -> str | None:
        """Why the files do not load as one set (None when they do), as ssl would refuse them per connection."""
        context = ssl.create_default_context()
        try:
            if self.settings.opensearch_ca_certs:
                context.load_verify_locations(cafile=str(self.settings.opensearch_ca_certs))
            if self.settings.opensearch_client_cert:
                key = self.settings.opensearch_client_key
                context.load_cert_chain(str(self.settings.opensearch_client_cert), str(key) if key else None)
        except (OSError, ssl.SSLError) as e:
            return f"{type(e).__name__}: {e}"
        return None

    def check(self) -> bool:
        """Reload when the files changed and load; whether the client was replaced."""
        signature = self._signature()
        if signature == self.signature:
            return False
        problem = self._consistent()
        if problem is not None:
            if signature != self._refused:
                logger.warning("the TLS files changed but do not load as a set (%s); the API keeps its client "
                               "and checks again (MMOS_OPENSEARCH_CA_CERTS, _CLIENT_CERT, _CLIENT_KEY)", problem)
                self._refused = signature
            return False
        client = self.build(self.settings)
        previous = self.searcher.replace_client(client)
        if self._retired is not None:
            self._retired.close()
        self._retired = previous
        self.signature = signature
        self.reloads += 1
        logger.info("reloaded the OpenSearch client with the new TLS files (%s)", ", ".join(map(str, self.paths)))
        return True

    def close(self) -> None:
        if self._retired is not None:
            self._retired.close()
            self._retired = None


async def watch_certificates(reloader: CertificateReloader, interval_s: float) -> None:
    """Poll ``reloader`` every ``interval_s`` (off when 0 or nothing to watch) until cancelled."""
    if interval_s <= 0 or not reloader.watching:
        return
    while True:
        await asyncio.sleep(interval_s)
        try:
            await run_in_threadpool(reloader.check)
        except Exception:  # a failed rebuild keeps the old client; the next poll tries again
            logger.warning("reloading the OpenSearch client failed; it keeps the old one", exc_info=True)
