#!/usr/bin/env bash
# A/B of the hot hit path: two chartcache binaries, alternately, under the same
# wrk load (one key, memory store), on loopback. For measuring one change
# before and after; compare.sh is the full comparison with nginx.
#
#   loadtests/ab_hit.sh OLD_BINARY NEW_BINARY
#
# Environment (defaults): BYTES [1024] response size, AE [gzip] the client's
# Accept-Encoding ("" for none), ROUNDS [2], DURATION [8s], CONNS [64],
# THREADS [2], PERF=1 records a cpu-clock profile of each run to
# $OUT/perf-<name>-<round>.data, BASE_PORT [29100], OUT [/tmp/chartcache-ab],
# MEASURES [1] wrk runs per started process (a process can stay in a fast or
# a slow mode: loadtests/RUNS.md, run 21), WARM_CHECK [1] 0 skips the check that
# the warm-up ends in a hit (for loadtests/patches/answer-early.patch).
# Prints req/s, p50/p99, the proxy's CPU µs per request (user + system) and
# how often per request the proxy's threads were preempted (involuntary
# context switches: on two shared cores these grow with the proxy's own CPU
# time, and each costs several µs more).
#
# A binary argument may be a wrapper script that sets CHARTCACHE_* variables
# and execs the real binary.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 OLD_BINARY NEW_BINARY" >&2; exit 2; }
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOAD=${LOAD:-$ROOT/loadtests/target/release/chartcache-load}
BYTES=${BYTES:-1024}
AE=${AE-gzip}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-8s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
BASE_PORT=${BASE_PORT:-29100}
OUT=${OUT:-/tmp/chartcache-ab}
UP_PORT=$BASE_PORT CC_PORT=$((BASE_PORT + 2)) ADMIN_PORT=$((BASE_PORT + 3))
mkdir -p "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
# wait_http, warm_status, hot_setup
. "$ROOT/loadtests/common.sh"

hot_setup "$UP_PORT" "$OUT" "$BYTES" "$AE"
URL="http://127.0.0.1:$CC_PORT/api/v1/chart/data"

run() { # name binary round
    CHARTCACHE_LOG=warn CHARTCACHE_LOG__ACCESS_LOG=false "$2" --upstream "http://127.0.0.1:$UP_PORT" \
        --listen "127.0.0.1:$CC_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" >"$OUT/$1.log" 2>&1 &
    local pid=$! status
    PIDS+=($pid)
    wait_http "http://127.0.0.1:$ADMIN_PORT/healthz"
    status=$(warm_status "$URL" "$OUT/body.json" "$BYTES" "$AE")
    if [ "${WARM_CHECK:-1}" = 1 ]; then
        case "$status" in *hit*) ;; *) echo "$1: not a hit after warm-up: $status" >&2; return 1 ;; esac
    fi
    for m in $(seq 1 "${MEASURES:-1}"); do
        measure "$1" "$pid" "$3${MEASURES:+.$m}"
    done
    kill "$pid"
    wait "$pid" 2>/dev/null || true
}

measure() { # name pid label
    local pid=$2 perf_pid="" t0 t1 n
    t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    local u0 s0 u1 s1 nv0 nv1
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    nv0=$(cat /proc/"$pid"/task/*/status | awk '/^nonvoluntary_ctxt/ {n += $2} END {print n}')
    if [ "${PERF:-0}" = 1 ]; then
        perf record -e cpu-clock -F 2000 -g -p "$pid" -o "$OUT/perf-$1-$3.data" -- sleep "${DURATION%s}" >/dev/null 2>&1 &
        perf_pid=$!
    fi
    wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$OUT/wrk.lua" "$URL" >"$OUT/wrk-$1-$3.out" 2>&1
    t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    nv1=$(cat /proc/"$pid"/task/*/status | awk '/^nonvoluntary_ctxt/ {n += $2} END {print n}')
    [ -n "$perf_pid" ] && wait "$perf_pid"
    n=$(awk '/requests in/ {print $1}' "$OUT/wrk-$1-$3.out")
    printf '%-6s round %s  %9s req/s  p50 %8s  p99 %8s  CPU %s us/request (user %s, sys %s)  preempted %s/request\n' "$1" "$3" \
        "$(awk '/Requests\/sec/ {print $2}' "$OUT/wrk-$1-$3.out")" \
        "$(awk '$1=="50%" {print $2}' "$OUT/wrk-$1-$3.out")" \
        "$(awk '$1=="99%" {print $2}' "$OUT/wrk-$1-$3.out")" \
        "$(awk -v t=$((t1 - t0)) -v n="$n" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')" \
        "$(awk -v t=$((u1 - u0)) -v n="$n" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')" \
        "$(awk -v t=$((s1 - s0)) -v n="$n" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')" \
        "$(awk -v c=$((nv1 - nv0)) -v n="$n" 'BEGIN {printf "%.2f", c / n}')"
}

echo "BYTES=$BYTES AE='$AE' wrk -t$THREADS -c$CONNS -d$DURATION; load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$ROUNDS"); do
    run old "$1" "$r"
    run new "$2" "$r"
done
