"""The wheel is self-contained (mappings and the dev launcher are found when installed); exports exist;
the search install's requirements hold no PyTorch."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        check=True,
    )
    (built,) = out.glob("mm_opensearch-*.whl")
    return built


def test_installed_wheel_finds_its_mappings(wheel: Path, tmp_path: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "mm_opensearch/_data/mappings/vector_fields.json" in names
    assert "mm_opensearch/_data/opensearch/pom.xml" in names
    assert "mm_opensearch_workers/app.py" in names
    assert not [name for name in names if name.startswith("workers/")], "a bare 'workers' module in site-packages"
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


_HEAVY = {"torch", "torchvision", "transformers", "matplotlib", "ranx", "celery"}  # pillow (the page's thumbnails) is light


def _requirements(metadata: str) -> dict[str | None, set[str]]:
    """Distribution names per extra (None: the core) from a wheel's METADATA."""
    out: dict[str | None, set[str]] = {}
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist: "):
            continue
        spec, _, marker = line.removeprefix("Requires-Dist: ").partition(";")
        extra = m.group(1) if (m := re.search(r"extra == [\"']([\w-]+)", marker)) else None
        name = re.split(r"[\s\[<>=!~]", spec.strip(), maxsplit=1)[0].lower()
        out.setdefault(extra, set()).add(name)
    return out


def test_the_search_extra_pulls_no_torch(wheel: Path) -> None:
    """``[api]`` (core + api) names no training, plotting or worker library; ``[dev]`` takes every role."""
    with zipfile.ZipFile(wheel) as zf:
        (meta,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        requirements = _requirements(zf.read(meta).decode())
    assert {"api", "worker", "train", "eval", "aws", "dev", "test"} <= set(requirements)
    assert (requirements[None] | requirements["api"]) & _HEAVY == set()
    assert {"onnxruntime", "tokenizers", "fastapi", "uvicorn", "jinja2", "pillow"} <= requirements["api"]
    assert {"torch", "celery"} <= requirements["worker"] and {"torch", "ranx"} <= requirements["train"]
    everything = set().union(*(requirements[extra] for extra in ("api", "worker", "train", "eval", "aws", "test")))
    assert requirements["dev"] == everything  # hatchling writes the self-references out


def test_the_search_path_imports_no_torch() -> None:
    """What ``serve`` imports before a model loads must not pull torch (the [api] install has none)."""
    probe = (
        "import sys, mm_opensearch.cli.app, mm_opensearch.api.app, mm_opensearch.hybrid.tower, "
        "mm_opensearch.towers.query_graph; print(sorted(m for m in ('torch', 'transformers', 'celery') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_the_library_does_not_import_the_workers() -> None:
    """The Celery adapter calls the library, never the reverse (the CLI, an adapter too, may)."""
    offenders = [
        str(path.relative_to(REPO))
        for path in (REPO / "mm_opensearch").rglob("*.py")
        if "cli" not in path.relative_to(REPO / "mm_opensearch").parts
        and re.search(r"^\s*(from|import) (mm_opensearch_)?workers\b", path.read_text(encoding="utf-8"), re.M)
    ]
    assert offenders == []
