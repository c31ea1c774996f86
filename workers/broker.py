"""Alias of :mod:`mm_opensearch_workers.broker` (see workers/__init__.py)."""

import sys

import mm_opensearch_workers.broker as _module

sys.modules[__name__] = _module
