"""Alias of :mod:`mm_opensearch_workers.tasks` (see workers/__init__.py)."""

import sys

import mm_opensearch_workers.tasks as _module

sys.modules[__name__] = _module
