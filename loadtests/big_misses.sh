#!/usr/bin/env bash
# Hits while large misses arrive: wrk on one hot 1 KB key (identity clients,
# -t2 -c64, 8 s) while 24 distinct 2 MB chart responses are fetched and
# stored, one every 250 ms. Shows what storing large entries costs the hits
# served meanwhile. Two binaries, alternately, ROUNDS [2] times each.
#
#   loadtests/big_misses.sh OLD_BINARY NEW_BINARY
#
# Loopback only; BASE_PORT [29940].
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 OLD_BINARY NEW_BINARY" >&2; exit 2; }
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOAD=${LOAD:-$ROOT/loadtests/target/release/chartcache-load}
ROUNDS=${ROUNDS:-2}
BASE_PORT=${BASE_PORT:-29940}
OUT=${OUT:-/tmp/chartcache-big-misses}
UP=$BASE_PORT CC=$((BASE_PORT + 2)) AD=$((BASE_PORT + 3))
URL=http://127.0.0.1:$CC/api/v1/chart/data
mkdir -p "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
# wait_http, warm_status, hot_setup, HOT_FIXTURE
. "$ROOT/loadtests/common.sh"

hot_setup "$UP" "$OUT" 1024 ""

run() { # name binary
    CHARTCACHE_LOG=warn CHARTCACHE_LOG__ACCESS_LOG=false "$2" --upstream "http://127.0.0.1:$UP" \
        --listen "127.0.0.1:$CC" --admin-listen "127.0.0.1:$AD" >"$OUT/$1.log" 2>&1 &
    local pid=$! wrk_pid i misses=()
    PIDS+=($pid)
    wait_http "http://127.0.0.1:$AD/healthz"
    warm_status "$URL" "$OUT/body.json" 1024 "" >/dev/null
    wrk -t2 -c64 -d8s --latency -s "$OUT/wrk.lua" "$URL" >"$OUT/wrk-$1.txt" 2>&1 &
    wrk_pid=$!
    sleep 0.5
    for i in $(seq 1 24); do
        # A distinct body per miss: row_limit differs.
        jq -c --argjson n $((100000 * ${1##*-} + i)) '.request.body | .queries[0].row_limit = $n' "$HOT_FIXTURE" |
            curl -s -o /dev/null -X POST "$URL" -H 'Content-Type: application/json' \
                -H 'Authorization: Bearer user-1-tok-0' -H 'X-Bench-Bytes: 2000000' \
                -H 'X-Bench-Latency-Ms: 1' --data-binary @- &
        misses+=($!)
        sleep 0.25
    done
    wait "$wrk_pid" "${misses[@]}"
    local stored
    stored=$(curl -s "http://127.0.0.1:$AD/metrics" | awk '/^chartcache_requests_total\{outcome="miss",route="chart_data"/ {n += $2} END {print n + 0}')
    printf '%-8s %s req/s  p50 %s  p99 %s  (misses %s)\n' "${1%-*}" \
        "$(awk '/Requests\/sec/ {print $2}' "$OUT/wrk-$1.txt")" \
        "$(awk '$1 == "50%" {print $2}' "$OUT/wrk-$1.txt")" \
        "$(awk '$1 == "99%" {print $2}' "$OUT/wrk-$1.txt")" "$stored"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
}

echo "wrk -t2 -c64 -d8s, 1 KB identity hits, 24 misses of 2 MB; load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$ROUNDS"); do
    run "old-$r" "$1"
    run "new-$r" "$2"
done
