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
# REDIS=1 serves the hits from Redis only: the script starts its own
# redis-server (port BASE_PORT + 4, no persistence) and runs both binaries
# with --redis-url, `redis.tiered = false` (every hit a Redis GET), their own
# key prefix, and redis.timeout_ms REDIS_TIMEOUT_MS [1000] (the default 50 ms
# turns a GET queued on two loaded cores into a miss that opens the breaker).
# Each line then also gives the redis-server's CPU µs and the commands it ran
# per request (INFO commandstats), and how many requests were not hits
# (chartcache_requests_total by outcome).
# CALLGRIND=1 (with REDIS=1) runs each binary under valgrind --tool=callgrind
# instead, sends CALLGRIND_HITS [2000] hits after the warm-up (chartcache-load
# rate, 4 connections, 100/s) between a zeroing and a dump of the counters,
# and prints the proxy's instructions per request (contention-free, unlike
# the times).
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
REDIS=${REDIS:-0}
REDIS_PORT=$((BASE_PORT + 4))
REDIS_TIMEOUT_MS=${REDIS_TIMEOUT_MS:-1000}
CALLGRIND=${CALLGRIND:-0}
mkdir -p "$OUT"
PIDS=()
# Stop what this script started, and wait, so the next run can bind the ports.
cleanup() {
    local p
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
# wait_http, warm_status, hot_setup
. "$ROOT/loadtests/common.sh"

hot_setup "$UP_PORT" "$OUT" "$BYTES" "$AE"
REDIS_PID=""
if [ "$REDIS" = 1 ]; then
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
        --logfile "$OUT/redis.log" &
    REDIS_PID=$!
    PIDS+=($REDIS_PID)
    for _ in $(seq 1 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
    redis-cli -p "$REDIS_PORT" ping >/dev/null
fi
URL="http://127.0.0.1:$CC_PORT/api/v1/chart/data"

run() { # name binary round
    local redis_args=() wrap=()
    if [ "$REDIS" = 1 ]; then
        redis_args=(--redis-url "redis://127.0.0.1:$REDIS_PORT")
        export CHARTCACHE_REDIS__TIERED=false CHARTCACHE_REDIS__PREFIX="ab-$1" \
            CHARTCACHE_REDIS__TIMEOUT_MS="$REDIS_TIMEOUT_MS"
    fi
    [ "$CALLGRIND" = 1 ] && wrap=(valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind-$1-$3.out")
    CHARTCACHE_LOG=warn CHARTCACHE_LOG__ACCESS_LOG=false "${wrap[@]}" "$2" --upstream "http://127.0.0.1:$UP_PORT" \
        --listen "127.0.0.1:$CC_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" "${redis_args[@]}" >"$OUT/$1.log" 2>&1 &
    local pid=$! status
    PIDS+=($pid)
    wait_http "http://127.0.0.1:$ADMIN_PORT/healthz" "$([ "$CALLGRIND" = 1 ] && echo 1200 || echo 100)"
    status=$(warm_status "$URL" "$OUT/body.json" "$BYTES" "$AE")
    # Under valgrind the entry may reach Redis after the third answer: ask again.
    for _ in $(seq 1 20); do
        case "$status" in *hit*) break ;; esac
        [ "$CALLGRIND" = 1 ] || break
        sleep 0.5
        status=$(warm_status "$URL" "$OUT/body.json" "$BYTES" "$AE")
    done
    if [ "${WARM_CHECK:-1}" = 1 ]; then
        case "$status" in *hit*) ;; *) echo "$1: not a hit after warm-up: $status" >&2; return 1 ;; esac
    fi
    if [ "$CALLGRIND" = 1 ]; then
        count_instructions "$1" "$pid" "$3"
    else
        for m in $(seq 1 "${MEASURES:-1}"); do
            measure "$1" "$pid" "$3${MEASURES:+.$m}"
        done
    fi
    kill "$pid"
    wait "$pid" 2>/dev/null || true
}

measure() { # name pid label
    local pid=$2 perf_pid="" t0 t1 n
    t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    local u0 s0 u1 s1 nv0 nv1
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    nv0=$(cat /proc/"$pid"/task/*/status | awk '/^nonvoluntary_ctxt/ {n += $2} END {print n}')
    local r0=0 c0=0 h0=0 q0=0
    if [ -n "$REDIS_PID" ]; then
        r0=$(cpu_ticks "$REDIS_PID"); c0=$(redis_calls); read -r h0 q0 < <(hits_and_requests)
    fi
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
    local extra=""
    if [ -n "$REDIS_PID" ]; then
        local r1 c1 h1 q1
        r1=$(cpu_ticks "$REDIS_PID"); c1=$(redis_calls); read -r h1 q1 < <(hits_and_requests)
        extra=$(awk -v t=$((r1 - r0)) -v c=$((c1 - c0)) -v n="$n" -v hz="$(getconf CLK_TCK)" \
            -v miss=$(( (q1 - q0) - (h1 - h0) )) \
            'BEGIN {printf "  redis CPU %.1f us, %.2f commands/request  not hits %d", t / hz * 1e6 / n, c / n, miss}')
    fi
    printf '%-6s round %s  %9s req/s  p50 %8s  p99 %8s  CPU %s us/request (user %s, sys %s)  preempted %s/request\n' "$1" "$3" \
        "$(awk '/Requests\/sec/ {print $2}' "$OUT/wrk-$1-$3.out")" \
        "$(awk '$1=="50%" {print $2}' "$OUT/wrk-$1-$3.out")" \
        "$(awk '$1=="99%" {print $2}' "$OUT/wrk-$1-$3.out")" \
        "$(awk -v t=$((t1 - t0)) -v n="$n" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')" \
        "$(awk -v t=$((u1 - u0)) -v n="$n" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')" \
        "$(awk -v t=$((s1 - s0)) -v n="$n" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')" \
        "$(awk -v c=$((nv1 - nv0)) -v n="$n" 'BEGIN {printf "%.2f", c / n}')"
    [ -z "$extra" ] || echo "$extra"
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Commands the redis-server has run (INFO commandstats; the INFO itself adds one).
redis_calls() {
    redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' |
        awk -F'[=,]' '/^cmdstat_/ {n += $2} END {print n + 0}'
}
# "HITS REQUESTS" from the proxy's chartcache_requests_total.
hits_and_requests() {
    curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" |
        awk '/^chartcache_requests_total/ {t += $NF; if ($0 ~ /outcome="hit"/) h += $NF} END {printf "%d %d\n", h, t}'
}

# Instructions per hit under callgrind: zero the counters, send
# CALLGRIND_HITS hits at a fixed rate (chartcache-load rate: 4 connections,
# 100/s), dump, divide by the requests the proxy counted meanwhile.
count_instructions() { # name pid round
    local n=${CALLGRIND_HITS:-2000} f h0 q0 h1 q1
    read -r h0 q0 < <(hits_and_requests)
    rm -f "$OUT"/callgrind-"$1"-"$3".out.*
    callgrind_control -z "$2" >/dev/null
    "$LOAD" rate --target "http://127.0.0.1:$CC_PORT" --body "$OUT/body.json" --rps 100 --conns 4 \
        --duration-secs $((n / 100)) --bytes "$BYTES" --accept-encoding "$AE" --threads 1 \
        >"$OUT/rate-$1-$3-callgrind.out" 2>&1
    callgrind_control -d "$2" >/dev/null
    read -r h1 q1 < <(hits_and_requests)
    sleep 1
    f=$(ls -t "$OUT"/callgrind-"$1"-"$3".out.* | head -1)
    awk -v n=$((q1 - q0)) -v h=$((h1 - h0)) -v name="$1" -v r="$3" \
        '/^(summary|totals):/ {ir = $2} END {printf "%-6s round %s  %d requests (%d hits): %.0f instructions/request\n", name, r, n, h, ir / n}' "$f"
}


echo "BYTES=$BYTES AE='$AE' wrk -t$THREADS -c$CONNS -d$DURATION; load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$ROUNDS"); do
    run old "$1" "$r"
    run new "$2" "$r"
done
