#!/usr/bin/env bash
# Run the test matrix against real OpenSearch nodes and Redis that this script starts (on test
# ports, so a developer's own services are untouched) and stops again if it started them:
#   - OpenSearch 2.19.1 single node (k-NN + neural-search): the whole suite, less the multinode tests;
#   - OpenSearch 3.4.0 single node (k-NN; Maven Central has no neural-search for 3.x): the integration
#     suite, less the tests marked neural_search (the server fusion path), upgrade (the in-place
#     upgrade test starts its own 2.19.1 and 3.4.0 nodes, so one run of it, in the 2.19 leg, is enough)
#     and multinode;
#   - multinode: a three-node 2.19.1 cluster (`dev up --nodes 3`, HTTP ports MMOS_TEST_OPENSEARCH_PORT+3..+5,
#     transport likewise): the tests marked multinode, and the server-vs-client fusion agreement test
#     on an index with a replica;
#   - smoke: every other shape started, green, a k-NN query answered, stopped: 3.4.0 secured single
#     node and 3.4.0 on three nodes (the test marked smoke).
# Each leg is timed; the durations are printed at the end. Narrow it with MMOS_TEST_VERSIONS (e.g.
# "2.19.1": the single-node legs), MMOS_TEST_LEGS (default "single multinode smoke") and pytest
# arguments, which go to the single-node legs (e.g. ./scripts/test.sh tests/integration/test_api.py -k explain).
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

single_node_legs() {
for version in $VERSIONS; do
    leg_start=$SECONDS
    # Each release has its own data folder: 3.x data cannot be opened by 2.x.
    export MMOS_DEV_OPENSEARCH_VERSION="$version" MMOS_DEV_DIR="$DEV_ROOT-$version"
    if ! "$MMOS" dev status | grep -q "opensearch.*yes"; then
        started="$MMOS_DEV_DIR"
    fi
    "$MMOS" dev up
    if [ "${version%%.*}" = "2" ]; then
        args=(-m "not multinode" "$@")
    else
        args=(-m "not neural_search and not upgrade and not multinode" "${@:-tests/integration}")
    fi
    echo "== OpenSearch $version: pytest ${args[*]}"
    "$VENV/bin/python" -m pytest -p no:cacheprovider --durations=12 "${args[@]}" || failed="$failed $version"
    stop_started
    started=""
    timings="$timings $version=$((SECONDS - leg_start))s"
done
}

# A shape this script starts and always stops: LABEL VERSION NODES SECURE, then the pytest arguments.
# Its own data folder and ports (test port + 3 onwards), so the single-node legs' data is untouched.
run_shape() {
    local label="$1" version="$2" nodes="$3" secure="$4"; shift 4
    local leg_start=$SECONDS dir="$DEV_ROOT-$label"
    local port=$((BASE_PORT + 3)) transport=$((BASE_TRANSPORT + 3)) scheme=http hosts="" i
    [ "$secure" = "true" ] && scheme=https
    for ((i = 0; i < nodes; i++)); do hosts="$hosts${hosts:+,}$scheme://127.0.0.1:$((port + i))"; done
    (
        export MMOS_DEV_DIR="$dir" MMOS_DEV_OPENSEARCH_VERSION="$version" MMOS_DEV_OPENSEARCH_NODES="$nodes"
        export MMOS_DEV_OPENSEARCH_SECURE="$secure" MMOS_DEV_OPENSEARCH_PORT="$port"
        export MMOS_DEV_OPENSEARCH_TRANSPORT_PORT="$transport" MMOS_OPENSEARCH_HOSTS="$hosts"
        trap '"$MMOS" dev down >/dev/null || true' EXIT
        "$MMOS" dev up >/dev/null || exit 1  # no tests against a shape that did not start
        if [ "$secure" = "true" ]; then
            export MMOS_OPENSEARCH_CA_CERTS="$dir/opensearch/config/root-ca.pem" MMOS_OPENSEARCH_USER=admin
            MMOS_OPENSEARCH_PASSWORD="$(cat "$dir/opensearch/config/admin-password")"
            export MMOS_OPENSEARCH_PASSWORD
        fi
        echo "== $label (OpenSearch $version, $nodes node(s), secure=$secure): pytest $*"
        "$VENV/bin/python" -m pytest -p no:cacheprovider --durations=8 "$@"
    ) || failed="$failed $label"
    timings="$timings $label=$((SECONDS - leg_start))s"
}

BASE_PORT="$MMOS_DEV_OPENSEARCH_PORT" BASE_TRANSPORT="$MMOS_DEV_OPENSEARCH_TRANSPORT_PORT"
LEGS="${MMOS_TEST_LEGS:-single multinode smoke}"
failed="" timings=""
matrix_start=$SECONDS
case " $LEGS " in *" single "*) single_node_legs "$@" ;; esac
case " $LEGS " in *" multinode "*)
    run_shape multinode-2.19.1 2.19.1 3 false -m "multinode or neural_search" tests/integration/test_cluster.py \
        tests/integration/test_cluster_faults.py \
        "tests/integration/test_hybrid_search.py::test_server_and_client_fusion_agree_within_ties" ;;
esac
case " $LEGS " in *" smoke "*)
    run_shape smoke-3.4.0-secure 3.4.0 1 true -m smoke tests/integration/test_cluster.py
    run_shape smoke-3.4.0-3nodes 3.4.0 3 false -m smoke tests/integration/test_cluster.py ;;
esac
echo "test matrix durations:$timings total=$((SECONDS - matrix_start))s"
if [ -n "$failed" ]; then
    echo "test matrix: failed on:$failed" >&2
    exit 1
fi
echo "test matrix: passed ($LEGS; OpenSearch $VERSIONS)"
