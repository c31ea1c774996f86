#!/usr/bin/env bash
# Run the test matrix against real OpenSearch nodes and Redis that this script starts (on test
# ports, so a developer's own services are untouched) and stops again if it started them:
#   - OpenSearch 2.19.1 (k-NN + neural-search): the whole suite;
#   - OpenSearch 3.4.0 (k-NN; Maven Central has no neural-search for 3.x): the integration suite,
#     less the tests marked neural_search (the server fusion path) and upgrade (the in-place
#     upgrade test starts its own 2.19.1 and 3.4.0 nodes, so one run of it, in the 2.19 leg, is enough).
# Narrow it with MMOS_TEST_VERSIONS (e.g. "2.19.1") and pytest arguments, which go to every leg
# (e.g. ./scripts/test.sh tests/integration/test_api.py -k explain).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$(scripts/setup.sh | tail -n 1)"
MMOS="$VENV/bin/mm-opensearch"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export MMOS_DEV_OPENSEARCH_PORT="${MMOS_TEST_OPENSEARCH_PORT:-9210}"
export MMOS_DEV_OPENSEARCH_TRANSPORT_PORT="${MMOS_TEST_OPENSEARCH_TRANSPORT_PORT:-9310}"
export MMOS_DEV_REDIS_PORT="${MMOS_TEST_REDIS_PORT:-6390}"
export MMOS_OPENSEARCH_HOSTS="http://127.0.0.1:${MMOS_DEV_OPENSEARCH_PORT}"
export MMOS_REDIS_URL="redis://127.0.0.1:${MMOS_DEV_REDIS_PORT}/0"
export MMOS_CACHE_DIR="${MMOS_CACHE_DIR:-$HOME/.cache/mm-opensearch}"
VERSIONS="${MMOS_TEST_VERSIONS:-2.19.1 3.4.0}"
DEV_ROOT="${MMOS_DEV_DIR:-$ROOT/.mmos/test}"

started=""
stop_started() { [ -z "$started" ] || MMOS_DEV_DIR="$started" "$MMOS" dev down || true; }
trap stop_started EXIT

failed=""
for version in $VERSIONS; do
    # Each release has its own data folder: 3.x data cannot be opened by 2.x.
    export MMOS_DEV_OPENSEARCH_VERSION="$version" MMOS_DEV_DIR="$DEV_ROOT-$version"
    if ! "$MMOS" dev status | grep -q "opensearch.*yes"; then
        started="$MMOS_DEV_DIR"
    fi
    "$MMOS" dev up
    if [ "${version%%.*}" = "2" ]; then
        args=("$@")
    else
        args=(-m "not neural_search and not upgrade" "${@:-tests/integration}")
    fi
    echo "== OpenSearch $version: pytest ${args[*]}"
    "$VENV/bin/python" -m pytest -p no:cacheprovider "${args[@]}" || failed="$failed $version"
    stop_started
    started=""
done
if [ -n "$failed" ]; then
    echo "test matrix: failed on OpenSearch$failed" >&2
    exit 1
fi
echo "test matrix: passed on OpenSearch $VERSIONS"
