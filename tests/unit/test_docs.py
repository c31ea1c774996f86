"""The generated docs are current: docs/configuration.md (Settings) and docs/api.md (OpenAPI schema)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from mm_opensearch.config import Settings

REPO = Path(__file__).resolve().parents[2]
REGENERATE = "stale: run `python scripts/gen_docs.py` and commit docs/"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_docs", REPO / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_setting_has_a_description() -> None:
    missing = [f"MMOS_{name.upper()}" for name, field in Settings.model_fields.items() if not field.description]
    assert not missing, f"settings without a description (docs/configuration.md shows it): {missing}"


def test_configuration_md_is_current() -> None:
    text = (REPO / "docs" / "configuration.md").read_text()
    assert text == _generator().configuration_md(), REGENERATE
    for name in Settings.model_fields:
        assert f"`MMOS_{name.upper()}`" in text


def test_configuration_md_hides_secret_defaults() -> None:
    text = (REPO / "docs" / "configuration.md").read_text()
    redis_row = next(line for line in text.splitlines() if line.startswith("| `MMOS_REDIS_URL`"))
    assert "127.0.0.1:6379" not in redis_row and "not shown" in redis_row


def test_api_md_is_current_and_lists_every_status_of_every_route() -> None:
    generator = _generator()
    schema = generator._api_app().openapi()
    text = (REPO / "docs" / "api.md").read_text()
    assert text == generator.api_md(schema), REGENERATE
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            section = text.split(f"## {method.upper()} {path}", 1)[1].split("\n## ", 1)[0]
            for status in op["responses"]:
                assert f"\n| {status} |" in section, (method, path, status)
