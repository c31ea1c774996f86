"""Locate the files the package ships: index mappings and the dev OpenSearch launcher.

In an installed wheel they live under ``mm_opensearch/_data``; in a source checkout at the repo
root (``mappings/``, ``dev/opensearch/``). Both layouts resolve through this one module.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["default_model_dir", "mappings_dir", "opensearch_launcher_dir"]

_PACKAGE_DIR = Path(__file__).resolve().parent
_PACKAGED = _PACKAGE_DIR / "_data"
_CHECKOUT = _PACKAGE_DIR.parent


def _locate(packaged: str, checkout: str) -> Path:
    for candidate in (_PACKAGED / packaged, _CHECKOUT / checkout):
        if candidate.is_dir():
            return candidate
    msg = (
        f"package data '{packaged}' not found under {_PACKAGED} or {_CHECKOUT / checkout}; "
        "reinstall mm-opensearch (pip install --force-reinstall mm-opensearch)"
    )
    raise FileNotFoundError(msg)


def mappings_dir() -> Path:
    """Folder of the JSON index templates (``mappings/`` in the repo)."""
    return _locate("mappings", "mappings")


def opensearch_launcher_dir() -> Path:
    """Folder with the Maven ``pom.xml``, ``jvm.options`` and Java launcher of the dev node."""
    return _locate("opensearch", "dev/opensearch")


def default_model_dir() -> Path:
    """The Myntra-trained default model shipped with the package (heads only; backbones are deps)."""
    return _locate("models/default", "models/default")
