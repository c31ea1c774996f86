"""Alias of :mod:`mm_opensearch_workers.app` (see workers/__init__.py)."""

import sys

import mm_opensearch_workers.app as _module

sys.modules[__name__] = _module
