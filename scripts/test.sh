#!/usr/bin/env bash
# Run the whole test suite against a real OpenSearch node and Redis that this script starts (on
# test ports, so a developer's own services are untouched) and stops again if it started them.
# Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$(scripts/setup.sh | tail -n 1)"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export MMOS_DEV_DIR="${MMOS_DEV_DIR:-$ROOT/.mmos/test}"
export MMOS_DEV_OPENSEARCH_PORT="${MMOS_TEST_OPENSEARCH_PORT:-9210}"
export MMOS_DEV_OPENSEARCH_TRANSPORT_PORT="${MMOS_TEST_OPENSEARCH_TRANSPORT_PORT:-9310}"
export MMOS_DEV_REDIS_PORT="${MMOS_TEST_REDIS_PORT:-6390}"
export MMOS_OPENSEARCH_HOSTS="http://127.0.0.1:${MMOS_DEV_OPENSEARCH_PORT}"
export MMOS_REDIS_URL="redis://127.0.0.1:${MMOS_DEV_REDIS_PORT}/0"
export MMOS_CACHE_DIR="${MMOS_CACHE_DIR:-$HOME/.cache/mm-opensearch}"

# Stop on exit only what this run started.
if ! "$VENV/bin/mm-opensearch" dev status | grep -q "opensearch.*yes"; then
    trap '"$VENV/bin/mm-opensearch" dev down' EXIT
fi
"$VENV/bin/mm-opensearch" dev up
"$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
