"""Shared fixtures: settings from the environment that scripts/test.sh prepared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
MYNTRA = Path(os.environ.get("MMOS_DATA_DIR", REPO.parent / "shared" / "data" / "myntra"))


@pytest.fixture(scope="session")
def myntra_dir() -> Path:
    if not (MYNTRA / "products.jsonl.gz").exists():
        pytest.skip(f"Myntra data not found at {MYNTRA}; set MMOS_DATA_DIR")
    return MYNTRA
