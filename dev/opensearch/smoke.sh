#!/usr/bin/env bash
# End-to-end check of the dev OpenSearch: fetch jars, compile the launcher, start a node,
# exercise k-NN / reindex / neural-search hybrid, SIGTERM it.
# Usage: dev/opensearch/smoke.sh [OUT_DIR=/tmp/mmos] [HTTP_PORT=9250]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-/tmp/mmos}; PORT=${2:-9250}; U=127.0.0.1:$PORT
HOME_DIR=$(mktemp -d); PID=
cleanup() { [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null && kill -TERM "$PID" && wait "$PID" || true; rm -rf "$HOME_DIR"; }
trap cleanup EXIT

t=$(date +%s.%N)
mvn -B -q -f "$HERE/pom.xml" -Dmmos.out="$OUT" package
javac -cp "$OUT/lib/*" -d "$OUT/classes" $(find "$HERE/src/common" "$HERE/src/v2" -name "*.java")
echo "fetch+compile: $(echo "$(date +%s.%N) - $t" | bc) s"

mapfile -t JOPTS < <(grep -v '^[[:space:]]*#' "$HERE/jvm.options" | grep -v '^[[:space:]]*$')
t=$(date +%s.%N)
java -Xms1g -Xmx1g "${JOPTS[@]}" -cp "$OUT/classes:$OUT/lib/*" mmos.Launcher "$HOME_DIR" \
  http.port="$PORT" transport.port=$((PORT + 100)) >"$HOME_DIR/logs.out" 2>"$HOME_DIR/logs.err" &
PID=$!
until curl -sf "$U/_cluster/health?wait_for_status=green&timeout=1s" >/dev/null 2>&1; do
  kill -0 "$PID" 2>/dev/null || { echo "node died:"; cat "$HOME_DIR/logs.err"; exit 1; }
  sleep 0.25
done
echo "start-to-green: $(echo "$(date +%s.%N) - $t" | bc) s"

fails=0
req() { curl -s -X"$1" "$U/$2" -H 'Content-Type: application/json' ${3:+-d "$3"}; }
check() { # name, expected substring, method, path, [body]
  local name=$1 want=$2 got; shift 2; got=$(req "$@")
  if [[ $got == *"$want"* ]]; then echo "ok   $name"; else echo "FAIL $name: $got"; fails=$((fails + 1)); fi
}
MAP='{"settings":{"index.knn":true},"mappings":{"properties":{"title":{"type":"text"},"v":{"type":"knn_vector","dimension":3,"method":{"name":"hnsw","engine":"lucene","space_type":"cosinesimil"}}}}}'
HITS='filter_path=hits.hits._id'
HYBRID='{"query":{"hybrid":{"queries":[{"match":{"title":"apple"}},{"knn":{"v":{"vector":[0,0,1],"k":3}}}]}}}'
check version '"number" : "2.19.1"' GET ""
check plugins KNNPlugin GET _cat/plugins
check create-index '"acknowledged":true' PUT docs "$MAP"
check doc1 created PUT docs/_doc/1 '{"title":"red apple","v":[1,0,0]}'
check doc2 created PUT docs/_doc/2 '{"title":"green apple","v":[0.9,0.1,0]}'
check doc3 created PUT docs/_doc/3 '{"title":"blue sky","v":[0,0,1]}'
check refresh '"failed":0' POST docs/_refresh
check knn-filter '{"hits":{"hits":[{"_id":"2"}]}}' POST "docs/_search?$HITS" '{"query":{"knn":{"v":{"vector":[1,0,0],"k":3,"filter":{"match":{"title":"green"}}}}}}'
check match '[{"_id":"1"},{"_id":"2"}]' POST "docs/_search?$HITS" '{"query":{"match":{"title":"apple"}}}'
check painless-knn '{"_id":"1"' POST "docs/_search?$HITS" '{"query":{"script_score":{"query":{"match_all":{}},"script":{"source":"cosineSimilarity(params.q, doc[params.f]) + 1","params":{"f":"v","q":[1,0,0]}}}}}'
check reindex-sliced '"created":3' POST "_reindex?refresh=true&slices=2" '{"source":{"index":"docs"},"dest":{"index":"docs2"}}'
check count '"count":3' GET docs2/_count
if req GET _cat/plugins | grep -q NeuralSearch; then
  check pipe-norm '"acknowledged":true' PUT _search/pipeline/norm '{"phase_results_processors":[{"normalization-processor":{"normalization":{"technique":"min_max"},"combination":{"technique":"arithmetic_mean"}}}]}'
  check hybrid-norm '{"_id":"3"' POST "docs/_search?search_pipeline=norm&$HITS" "$HYBRID"
  check pipe-rrf '"acknowledged":true' PUT _search/pipeline/rrf '{"phase_results_processors":[{"score-ranker-processor":{"combination":{"technique":"rrf"}}}]}'
  check hybrid-rrf '[{"_id":"1"},{"_id":"2"},{"_id":"3"}]' POST "docs/_search?search_pipeline=rrf&$HITS" "$HYBRID"
else
  echo "skip neural-search (not loaded)"
fi
echo "rss: $(ps -o rss= -p "$PID") KiB"

kill -TERM "$PID"; rc=0; wait "$PID" || rc=$?; PID=
grep -q '\] closed' "$HOME_DIR/logs.out" && echo "ok   sigterm (exit $rc, node closed)" || { echo "FAIL sigterm (exit $rc)"; fails=$((fails + 1)); }
[ -s "$HOME_DIR/logs.err" ] && { echo "stderr:"; cat "$HOME_DIR/logs.err"; }
echo "$fails failed"
[ "$fails" -eq 0 ]
