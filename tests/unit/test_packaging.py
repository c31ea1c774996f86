"""The wheel is self-contained (mappings and the dev launcher are found when installed); exports exist."""

from __future__ import annotations

import importlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_installed_wheel_finds_its_mappings(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
    )
    (wheel,) = tmp_path.glob("mm_opensearch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "mm_opensearch/_data/mappings/vector_fields.json" in names
    assert "mm_opensearch/_data/opensearch/pom.xml" in names
    assert "workers/__init__.py" in names
    for page_file in ("templates/search.html", "templates/login.html", "static/page.js", "static/page.css", "static/placeholder.svg"):
        assert f"mm_opensearch/web/{page_file}" in names  # the search page renders from the package
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(target)
    probe = (
        "import mm_opensearch.resources as r; "
        "print(r.mappings_dir()); print(r.opensearch_launcher_dir())"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(target)},
        check=True, capture_output=True, text=True,
    ).stdout.split()
    assert out == [str(target / "mm_opensearch/_data/mappings"), str(target / "mm_opensearch/_data/opensearch")]


@pytest.mark.parametrize(
    "package",
    ["api", "augment", "backfill", "cli", "devservices", "hybrid", "indexing", "towers", "training"],
)
def test_every_exported_name_exists(package: str) -> None:
    """``__all__`` is the public API: a name in it that the package lacks breaks ``import *``."""
    module = importlib.import_module(f"mm_opensearch.{package}")
    missing = [name for name in getattr(module, "__all__", []) if not hasattr(module, name)]
    assert missing == []
