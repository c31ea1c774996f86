"""Shared fixtures: settings from the environment that scripts/test.sh prepared."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
MYNTRA = Path(os.environ.get("MMOS_DATA_DIR", REPO.parent / "shared" / "data" / "myntra"))


@pytest.fixture(scope="session")
def myntra_dir() -> Path:
    if not (MYNTRA / "products.jsonl.gz").exists():
        pytest.skip(f"Myntra data not found at {MYNTRA}; set MMOS_DATA_DIR")
    return MYNTRA


COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "black": (10, 10, 10)}
TYPES = ["shirt", "shoes", "bag", "watch", "dress"]


@pytest.fixture(scope="session")
def synthetic_shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A catalog with other field names whose colour is in no text field, only in the picture.

    Queries "<colour> <type>": grade 2 for the right type and colour, 1 for the type alone.
    """
    root = tmp_path_factory.mktemp("shop")
    (root / "img").mkdir()
    rows, colour_of = [], {}
    for colour, rgb in COLOURS.items():
        for kind in TYPES:
            for variant in range(2):
                sku = f"p{len(rows) + 1}"
                Image.new("RGB", (32, 32), rgb).save(root / "img" / f"{sku}.jpg")
                rows.append({"sku": sku, "prod_name": f"{kind} model {variant}", "detail_desc": f"a {kind}",
                             "picture": f"img/{sku}.jpg", "kind": kind})
                colour_of[sku] = colour
    queries, qrels = ["query_id\tsplit\ttemplate\tquery"], ["query_id\tproduct_id\tgrade"]
    for qid, (colour, kind) in enumerate(((c, k) for c in COLOURS for k in TYPES), start=1):
        queries.append(f"q{qid}\ttrain\tcolour_type\t{colour} {kind}")
        qrels += [f"q{qid}\t{r['sku']}\t{2 if colour_of[r['sku']] == colour else 1}" for r in rows if r["kind"] == kind]
    (root / "catalog.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (root / "queries.tsv").write_text("\n".join(queries) + "\n")
    (root / "qrels.tsv").write_text("\n".join(qrels) + "\n")
    return root
