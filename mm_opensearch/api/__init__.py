"""HTTP API (FastAPI): an adapter over :mod:`mm_opensearch.hybrid`; needs the ``fastapi`` dependency."""

from mm_opensearch.api.app import RETRY_AFTER_S, create_app

__all__ = ["RETRY_AFTER_S", "create_app"]
