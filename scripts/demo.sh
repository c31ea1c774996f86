#!/usr/bin/env bash
# Fresh machine to results: virtualenv + Python deps + OpenSearch jars, start OpenSearch and Redis,
# then index the sample catalog, answer hybrid queries and print metrics. Extra args go to `demo`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$(scripts/setup.sh | tail -n 1)"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$VENV/bin/mm-opensearch" dev up
"$VENV/bin/mm-opensearch" demo "$@"
echo "the demo index is served as 'mmos-demo': '$VENV/bin/mm-opensearch search \"red dress\" --index mmos-demo --explain'"
echo "services keep running: '$VENV/bin/mm-opensearch dev down' stops them"
