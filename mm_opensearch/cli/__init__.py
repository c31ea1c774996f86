"""The ``mm-opensearch`` command line: a thin adapter over the library (parse, call, print)."""

from mm_opensearch.cli.app import app

__all__ = ["app"]
