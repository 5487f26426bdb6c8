#!/usr/bin/env bash
# One-run comparison: chartcache (memory store, then Redis store when the build
# has it) against nginx proxy_cache, both in front of the same Superset-shaped
# upstream, on loopback.
#
#   (a) hot hit path with wrk: 1 KB, 50 KB, 500 KB bodies, 64 connections,
#       identity and gzip clients (same Accept-Encoding for both proxies);
#       identity clients also against "floor" (chartcache-load floor), a
#       tokio + hyper server that does no work: the machine's floor for any
#       proxy built on that stack (FLOOR=0 leaves it out);
#   (b) the dashboard workload (chartcache-load dashboards);
#   (c) a cold stampede: 500 concurrent identical misses (chartcache-load stampede);
#   (d) optional soak: dashboard load with a small memory cap, sampling RSS and
#       the memory store's bytes (SECTIONS=soak);
#   (e) optional scaling: throughput against connections and number of keys
#       (SECTIONS=scaling);
#   (f) optional fixed rate: hit latency of every system at the same offered
#       load, open loop (chartcache-load rate; SECTIONS=rate).
#
# Everything it starts (upstream, nginx, chartcache, redis-server) runs as its
# own processes on 127.0.0.1 ports and is stopped by pid on exit.
#
# Environment (defaults in brackets):
#   SECTIONS      sections to run [hot dashboards stampede]; add "soak" for the soak
#   REPEAT        runs of each measurement [2]
#   WRK_DURATION  per wrk run [10s]      WRK_CONNS [64]      WRK_THREADS [2]
#   SIZES         hot-path body sizes in bytes [1024 51200 512000]
#   ENCODINGS     hot-path client encodings [identity gzip]
#   DASH_SECS     per dashboard run [45]  DASH_USERS [30]  DASH_THINK_MS [1000]
#   DASH_FORCE    share of chart requests sent with Superset's "force": true [0.01]
#   STAMPEDE_N    [500]  STAMPEDE_ROUNDS [3]  STAMPEDE_LATENCY_MS [600]
#   SOAK_SECS     [600]  SOAK_MEMORY_BYTES [33554432]
#   MEMORY_BYTES  chartcache memory store cap for (a)-(c) [268435456]
#   REDIS_TIERED  memory L1 in front of Redis for the Redis replicas [false: Redis only]
#   SCALE_CONNS   [16 64 256]  SCALE_KEYS [1 1000 20000]  SCALE_FILL [8s]  (SECTIONS=scaling)
#   RATES         offered loads for (f), req/s [20000 40000]  RATE_SECS [10]  RATE_CONNS [64]
#   BASE_PORT     first of the loopback ports used [28100]
#   SKIP_BUILD=1  use existing release binaries
#   OUT           results directory [loadtests/results/<UTC timestamp>]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECTIONS=${SECTIONS:-hot dashboards stampede}
REPEAT=${REPEAT:-2}
WRK_DURATION=${WRK_DURATION:-10s}
WRK_CONNS=${WRK_CONNS:-64}
WRK_THREADS=${WRK_THREADS:-2}
SIZES=${SIZES:-1024 51200 512000}
ENCODINGS=${ENCODINGS:-identity gzip}
DASH_SECS=${DASH_SECS:-45}
DASH_USERS=${DASH_USERS:-30}
DASH_THINK_MS=${DASH_THINK_MS:-1000}
DASH_FORCE=${DASH_FORCE:-0.01}
STAMPEDE_N=${STAMPEDE_N:-500}
STAMPEDE_ROUNDS=${STAMPEDE_ROUNDS:-3}
STAMPEDE_LATENCY_MS=${STAMPEDE_LATENCY_MS:-600}
SOAK_SECS=${SOAK_SECS:-600}
SOAK_MEMORY_BYTES=${SOAK_MEMORY_BYTES:-33554432}
MEMORY_BYTES=${MEMORY_BYTES:-268435456}
SCALE_CONNS=${SCALE_CONNS:-16 64 256}
SCALE_KEYS=${SCALE_KEYS:-1 1000 20000}
SCALE_FILL=${SCALE_FILL:-8s}
REDIS_TIERED=${REDIS_TIERED:-false}
FLOOR=${FLOOR:-1}
RATES=${RATES:-20000 40000}
RATE_SECS=${RATE_SECS:-10}
RATE_CONNS=${RATE_CONNS:-64}
BASE_PORT=${BASE_PORT:-28100}
OUT=${OUT:-$ROOT/loadtests/results/$(date -u +%Y%m%dT%H%M%SZ)}

UP_PORT=$BASE_PORT
NGINX_PORT=$((BASE_PORT + 1))
CC_PORT=$((BASE_PORT + 2))
CC_ADMIN=$((BASE_PORT + 3))
REDIS_PORT=$((BASE_PORT + 4))
FLOOR_PORT=$((BASE_PORT + 5))
# Redis replicas: proxy ports BASE+10.., admin ports BASE+20..
UP="http://127.0.0.1:$UP_PORT"

mkdir -p "$OUT"
LOG="$OUT/compare.log"
exec > >(tee -a "$LOG") 2>&1
TMP=$(mktemp -d /tmp/chartcache-compare.XXXXXX)
PIDS=()

cleanup() {
    local p
    for p in "${PIDS[@]:-}"; do
        [ -n "$p" ] && kill "$p" 2>/dev/null || true
    done
    sleep 0.5
    for p in "${PIDS[@]:-}"; do
        [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '\n### %s  %s\n' "$(date -u +%H:%M:%S)" "$*"; }

stop_pid() {
    local pid=$1 i
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

# wait_http, hit_lua, warm_status
. "$ROOT/loadtests/common.sh"

# ---------------------------------------------------------------- tools
need_apt=()
command -v nginx >/dev/null || need_apt+=(nginx)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v curl >/dev/null || need_apt+=(curl)
command -v jq >/dev/null || need_apt+=(jq)
if [ ${#need_apt[@]} -gt 0 ]; then
    log "installing ${need_apt[*]} from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "building release binaries"
    (cd "$ROOT" && cargo build --release --quiet)
    (cd "$ROOT/loadtests" && cargo build --release --quiet)
fi
CC_BIN=${CC_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/chartcache}
LOAD=${LOAD:-$ROOT/loadtests/target/release/chartcache-load}
[ -x "$CC_BIN" ] || { echo "missing $CC_BIN" >&2; exit 1; }
[ -x "$LOAD" ] || { echo "missing $LOAD" >&2; exit 1; }

HAVE_REDIS=0
if "$CC_BIN" --help 2>/dev/null | grep -q -- '--redis-url' && command -v redis-server >/dev/null; then
    HAVE_REDIS=1
fi

# ---------------------------------------------------------------- machine
log "machine"
echo "nproc: $(nproc)"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
echo "memory: $(free -m | awk '/Mem:/ {print $2 " MiB"}')"
echo "kernel: $(uname -r)"
echo "nginx: $(nginx -v 2>&1 | cut -d/ -f2)"
echo "wrk: $(wrk -v 2>&1 | head -1 | awk '{print $2}')"
echo "chartcache: $("$CC_BIN" --version) ($(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo "redis store: $([ $HAVE_REDIS = 1 ] && echo "yes ($(redis-server --version | awk '{print $3}'))" || echo 'not available in this build')"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "sections: $SECTIONS; repeat $REPEAT"

# ---------------------------------------------------------------- upstream
log "starting the Superset-shaped upstream on :$UP_PORT"
"$LOAD" upstream --listen "127.0.0.1:$UP_PORT" --threads 1 >"$OUT/upstream.log" 2>&1 &
PIDS+=($!)
wait_http "$UP/__stats"

# ---------------------------------------------------------------- nginx
mkdir -p "$TMP/nginx/cache" "$TMP/nginx/tmp"
cat >"$TMP/nginx/nginx.conf" <<EOF
user $(id -un);
worker_processes $(nproc);
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $OUT/nginx-error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/tmp/body;
    proxy_temp_path $TMP/nginx/tmp/proxy;
    fastcgi_temp_path $TMP/nginx/tmp/fastcgi;
    uwsgi_temp_path $TMP/nginx/tmp/uwsgi;
    scgi_temp_path $TMP/nginx/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    proxy_cache_path $TMP/nginx/cache levels=1:2 keys_zone=charts:64m max_size=4g inactive=1h use_temp_path=off;
    upstream superset {
        server 127.0.0.1:$UP_PORT;
        keepalive 512;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        # \$request_body must be in memory to be part of the key.
        client_body_buffer_size 1m;
        client_max_body_size 1m;
        location = /api/v1/chart/data {
            proxy_pass http://superset;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache charts;
            proxy_cache_methods POST;
            proxy_cache_key "\$request_uri|\$http_authorization|\$request_body";
            proxy_cache_valid 200 10m;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 60s;
            proxy_cache_lock_age 60s;
            proxy_cache_use_stale updating error timeout;
            proxy_read_timeout 120s;
            add_header Cache-Status "nginx; \$upstream_cache_status" always;
        }
        location / {
            proxy_pass http://superset;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
cp "$TMP/nginx/nginx.conf" "$OUT/nginx.conf"
log "starting nginx on :$NGINX_PORT (config: $OUT/nginx.conf)"
nginx -p "$TMP/nginx" -e "$OUT/nginx-error.log" -c "$TMP/nginx/nginx.conf" >"$OUT/nginx.log" 2>&1 &
NGINX_PID=$!
PIDS+=($NGINX_PID)
wait_http "http://127.0.0.1:$NGINX_PORT/__stats"

# ---------------------------------------------------------------- chartcache
CC_PID=""
start_chartcache() { # port admin_port memory_bytes [extra args...]
    local port=$1 admin=$2 mem=$3
    shift 3
    CHARTCACHE_LOG=warn CHARTCACHE_LOG__ACCESS_LOG=false \
        "$CC_BIN" --upstream "$UP" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
        --memory-max-bytes "$mem" "$@" >>"$OUT/chartcache-$port.log" 2>&1 &
    CC_PID=$!
    PIDS+=($CC_PID)
    wait_http "http://127.0.0.1:$admin/healthz"
}

rss_kib() { ps -o rss= -p "$1" | tr -d ' '; }
# CPU ticks (user + system) used so far by a system under test (nginx: master and workers).
cpu_ticks() {
    local pids=$1 p t=0
    [ "$1" = "$NGINX_PID" ] && pids="$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')"
    for p in $pids; do
        t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    echo "$t"
}
declare -A SUT_PID
store_bytes() { # admin port
    curl -s "http://127.0.0.1:$1/metrics" | awk '/^chartcache_memory_store_bytes / {print $2}'
}

log "starting chartcache (memory store, cap $MEMORY_BYTES B) on :$CC_PORT"
start_chartcache "$CC_PORT" "$CC_ADMIN" "$MEMORY_BYTES"
CC_MEM_PID=$CC_PID
sleep 1
echo "chartcache idle RSS (empty cache): $(rss_kib $CC_MEM_PID) KiB"
echo "nginx RSS (master + workers): $(ps -o rss= --ppid $NGINX_PID | awk '{s+=$1} END {print s}') + $(rss_kib $NGINX_PID) KiB"

REDIS_TARGETS=""
if [ $HAVE_REDIS = 1 ]; then
    log "starting redis-server on :$REDIS_PORT and 3 chartcache replicas with the Redis store (tiered: $REDIS_TIERED)"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$TMP" >"$OUT/redis.log" 2>&1 &
    PIDS+=($!)
    for i in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
    for r in 0 1 2; do
        CHARTCACHE_REDIS__TIERED=$REDIS_TIERED start_chartcache $((BASE_PORT + 10 + r)) $((BASE_PORT + 20 + r)) "$MEMORY_BYTES" \
            --redis-url "redis://127.0.0.1:$REDIS_PORT"
        REDIS_TARGETS+="${REDIS_TARGETS:+,}http://127.0.0.1:$((BASE_PORT + 10 + r))"
        [ $r = 0 ] && CC_REDIS0_PID=$CC_PID
    done
fi

# name → base URL of each system under test
declare -A TARGET=([nginx]="http://127.0.0.1:$NGINX_PORT" [chartcache-memory]="http://127.0.0.1:$CC_PORT")
SUT_PID[nginx]=$NGINX_PID
SUT_PID[chartcache-memory]=$CC_MEM_PID
SYSTEMS=(nginx chartcache-memory)
if [ $HAVE_REDIS = 1 ]; then
    TARGET[chartcache-redis]="http://127.0.0.1:$((BASE_PORT + 10))"
    SUT_PID[chartcache-redis]=$CC_REDIS0_PID
    SYSTEMS+=(chartcache-redis)
fi

if [ "$FLOOR" = 1 ]; then
    "$LOAD" floor --listen "127.0.0.1:$FLOOR_PORT" --bytes "$(echo $SIZES | tr ' ' ',')" >"$OUT/floor.log" 2>&1 &
    SUT_PID[floor]=$!
    PIDS+=($!)
    TARGET[floor]="http://127.0.0.1:$FLOOR_PORT"
    wait_http "http://127.0.0.1:$FLOOR_PORT/"
fi

SUMMARY="$OUT/summary.tsv"
printf 'section\tsystem\tcase\trun\tmetric\tvalue\n' >"$SUMMARY"
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$SUMMARY"; }

# ---------------------------------------------------------------- (a) hot hit path
hot() {
    log "(a) hot hit path: wrk -t$WRK_THREADS -c$WRK_CONNS -d$WRK_DURATION, sizes: $SIZES, encodings: $ENCODINGS"
    local template=$HOT_FIXTURE
    local size enc sys run
    for size in $SIZES; do
        # One body per size (row_limit differs, so keys differ); the upstream answers X-Bench-Bytes.
        jq -c --argjson n "$size" '.request.body | .queries[0].row_limit = $n' "$template" >"$TMP/body-$size.json"
        for enc in $ENCODINGS; do
            local ae=""
            [ "$enc" = gzip ] && ae="gzip"
            [ "$enc" = zstd ] && ae="gzip, deflate, br, zstd"
            hit_lua "$TMP/body-$size.json" "$size" "$ae" >"$TMP/wrk-$size-$enc.lua"
            cat >>"$TMP/wrk-$size-$enc.lua" <<EOF
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"socket_errors":%d,"non2xx":%d,"mean_us":%.1f,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect + e.read + e.write + e.timeout, e.status,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
EOF
        done
    done
    for run in $(seq 1 "$REPEAT"); do
        for size in $SIZES; do
            for enc in $ENCODINGS; do
                local systems=("${SYSTEMS[@]}")
                # The floor server has no gzip variant: identity clients only.
                [ "$FLOOR" = 1 ] && [ "$enc" = identity ] && systems+=(floor)
                for sys in "${systems[@]}"; do
                    local url="${TARGET[$sys]}/api/v1/chart/data"
                    local ae=""
                    [ "$enc" = gzip ] && ae="gzip"
                    [ "$enc" = zstd ] && ae="gzip, deflate, br, zstd"
                    # Fill, then check the next answer is a hit.
                    local cs
                    cs=$(warm_status "$url" "$TMP/body-$size.json" "$size" "$ae")
                    echo "-- $sys size=$size enc=$enc run=$run  (Cache-Status after warm-up: $cs; load $(cut -d' ' -f1 /proc/loadavg))"
                    local out t0 t1
                    t0=$(cpu_ticks "${SUT_PID[$sys]}")
                    out=$(wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"$WRK_DURATION" --latency -s "$TMP/wrk-$size-$enc.lua" "$url" 2>&1)
                    t1=$(cpu_ticks "${SUT_PID[$sys]}")
                    echo "$out" | grep -E 'Requests/sec|Transfer/sec|Latency  |Non-2xx|Socket errors' || true
                    local j
                    j=$(echo "$out" | sed -n 's/^WRK_JSON //p')
                    local rps p50 p99
                    rps=$(jq -r '(.requests / (.duration_us / 1e6)) | floor' <<<"$j")
                    p50=$(jq -r '.p50_us / 1000' <<<"$j")
                    p99=$(jq -r '.p99_us / 1000' <<<"$j")
                    # CPU microseconds the proxy spent per response (clock ticks are 1/100 s).
                    local cpu_us
                    cpu_us=$(jq -r --argjson t $((t1 - t0)) --argjson hz "$(getconf CLK_TCK)" '(($t / $hz) * 1e6 / .requests * 10 | floor) / 10' <<<"$j")
                    echo "   => $rps req/s, p50 ${p50} ms, p99 ${p99} ms, proxy CPU ${cpu_us} us/request, errors $(jq -r '.socket_errors + .non2xx' <<<"$j")"
                    record hot "$sys" "$size/$enc" "$run" cpu_us_per_req "$cpu_us"
                    record hot "$sys" "$size/$enc" "$run" rps "$rps"
                    record hot "$sys" "$size/$enc" "$run" p50_ms "$p50"
                    record hot "$sys" "$size/$enc" "$run" p99_ms "$p99"
                    record hot "$sys" "$size/$enc" "$run" errors "$(jq -r '.socket_errors + .non2xx' <<<"$j")"
                done
            done
        done
    done
    echo "chartcache RSS after hot path: $(rss_kib $CC_MEM_PID) KiB"
}

# ---------------------------------------------------------------- (b) dashboards
dashboards() {
    log "(b) dashboard workload: $DASH_USERS users, ${DASH_SECS}s, think ${DASH_THINK_MS} ms, 90 % repeats, force share $DASH_FORCE"
    local sys run
    for run in $(seq 1 "$REPEAT"); do
        for sys in "${SYSTEMS[@]}"; do
            echo "-- $sys run=$run (load $(cut -d' ' -f1 /proc/loadavg))"
            local out
            out=$("$LOAD" dashboards --target "${TARGET[$sys]}" --upstream "$UP" --label "$sys" \
                --users "$DASH_USERS" --principals 10 --dashboards 50 --zipf 1.0 --repeat 0.9 --force "$DASH_FORCE" \
                --think-ms "$DASH_THINK_MS" --duration-secs "$DASH_SECS" --max-views 20000 \
                --accept-encoding "gzip, deflate, br, zstd" --seed $((run * 7 + 1)) 2>&1)
            echo "$out" | grep -v '^RESULT_JSON'
            local j
            j=$(echo "$out" | sed -n 's/^RESULT_JSON //p')
            record dashboards "$sys" all "$run" rps "$(jq -r .throughput_rps <<<"$j")"
            record dashboards "$sys" all "$run" hit_ratio "$(jq -r .hit_ratio <<<"$j")"
            record dashboards "$sys" all "$run" hit_p50_ms "$(jq -r '.latency_by_outcome.hit.p50_ms // -1' <<<"$j")"
            record dashboards "$sys" all "$run" hit_p99_ms "$(jq -r '.latency_by_outcome.hit.p99_ms // -1' <<<"$j")"
            record dashboards "$sys" all "$run" queries_per_view "$(jq -r .upstream.chart_queries_per_view <<<"$j")"
            record dashboards "$sys" all "$run" ratio_to_direct "$(jq -r .upstream.ratio_to_direct <<<"$j")"
            record dashboards "$sys" all "$run" view_p50_ms "$(jq -r .view_latency.p50_ms <<<"$j")"
        done
    done
    echo "chartcache RSS after dashboards: $(rss_kib $CC_MEM_PID) KiB; memory store bytes: $(store_bytes $CC_ADMIN) (cap $MEMORY_BYTES)"
}

# ---------------------------------------------------------------- (c) stampede
stampede() {
    log "(c) cold stampede: $STAMPEDE_N concurrent identical misses, upstream latency $STAMPEDE_LATENCY_MS ms, 50 KB, gzip clients"
    local sys run targets
    for run in $(seq 1 "$REPEAT"); do
        for sys in "${SYSTEMS[@]}"; do
            targets=${TARGET[$sys]}
            # Redis: spread the clients over the 3 replicas sharing Redis.
            [ "$sys" = chartcache-redis ] && targets=$REDIS_TARGETS
            echo "-- $sys run=$run (load $(cut -d' ' -f1 /proc/loadavg))"
            local out
            out=$("$LOAD" stampede --target "$targets" --upstream "$UP" --label "$sys" --n "$STAMPEDE_N" \
                --rounds "$STAMPEDE_ROUNDS" --bytes 51200 --latency-ms "$STAMPEDE_LATENCY_MS" --accept-encoding gzip 2>&1)
            echo "$out" | grep -v '^RESULT_JSON'
            local j
            j=$(echo "$out" | sed -n 's/^RESULT_JSON //p')
            local i=0
            while read -r q p90 p99 mx; do
                i=$((i + 1))
                record stampede "$sys" "round$i" "$run" upstream_queries "$q"
                record stampede "$sys" "round$i" "$run" lag_p90_ms "$p90"
                record stampede "$sys" "round$i" "$run" lag_p99_ms "$p99"
                record stampede "$sys" "round$i" "$run" lag_max_ms "$mx"
            done < <(jq -r '.rounds[] | "\(.upstream_queries) \(.lag_after_first.p90_ms) \(.lag_after_first.p99_ms) \(.lag_after_first.max_ms)"' <<<"$j")
        done
    done
}

# ---------------------------------------------------------------- (d) soak
soak() {
    log "(d) soak: chartcache memory store capped at $SOAK_MEMORY_BYTES B, dashboard load for ${SOAK_SECS}s"
    local port=$((BASE_PORT + 30)) admin=$((BASE_PORT + 31))
    start_chartcache "$port" "$admin" "$SOAK_MEMORY_BYTES"
    local pid=$CC_PID
    sleep 1
    echo "idle RSS (empty cache): $(rss_kib "$pid") KiB"
    "$LOAD" dashboards --target "http://127.0.0.1:$port" --upstream "$UP" --label soak \
        --users 40 --principals 10 --dashboards 200 --zipf 0.8 --repeat 0.7 --force 0.01 \
        --think-ms 500 --duration-secs "$SOAK_SECS" --max-views 1000000 \
        --accept-encoding "gzip, deflate, br, zstd" --seed 99 >"$OUT/soak-load.log" 2>&1 &
    local lpid=$!
    PIDS+=($lpid)
    printf '%8s %12s %14s %10s\n' "t_s" "rss_kib" "store_bytes" "cap"
    local t=0
    while kill -0 "$lpid" 2>/dev/null && [ $t -le $((SOAK_SECS + 60)) ]; do
        local rss sb
        rss=$(rss_kib "$pid")
        sb=$(store_bytes "$admin")
        printf '%8s %12s %14s %10s\n' "$t" "$rss" "$sb" "$SOAK_MEMORY_BYTES"
        record soak chartcache-memory "t=$t" 1 rss_kib "$rss"
        record soak chartcache-memory "t=$t" 1 store_bytes "$sb"
        sleep 15
        t=$((t + 15))
    done
    wait "$lpid" || true
    grep -v '^RESULT_JSON' "$OUT/soak-load.log" || true
    echo "after soak: RSS $(rss_kib "$pid") KiB, store bytes $(store_bytes "$admin") (cap $SOAK_MEMORY_BYTES)"
    stop_pid "$pid"
}

# ---------------------------------------------------------------- (e) scaling
# How cost grows with connections and with the number of distinct keys (1 KB
# bodies, identity clients). Keys rotate per request through a wrk Lua script.
# µs of proxy CPU per request from two cpu_ticks readings and a request count.
scale_cpu_us() {
    awk -v t="$(($2 - $1))" -v n="$3" -v hz="$(getconf CLK_TCK)" 'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "nan" }'
}

scaling() {
    log "(e) scaling: connections ($SCALE_CONNS) and keys ($SCALE_KEYS), 1 KB, identity"
    local template=$HOT_FIXTURE
    jq -c '.request.body | .queries[0].row_limit = 1024' "$template" >"$TMP/body-scale.json"
    local sys c k run
    for k in $SCALE_KEYS; do
        cat >"$TMP/wrk-keys-$k.lua" <<EOF
local f = assert(io.open("$TMP/body-scale.json", "rb"))
local base = f:read("*a")
f:close()
local n = $k
local i = 0
local hdrs = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer user-1-tok-0",
  ["X-Bench-Bytes"] = "1024", ["X-Bench-Latency-Ms"] = "0"}
function setup(thread) thread:set("offset", math.random(0, n - 1)) end
function request()
  i = i + 1
  local body = string.gsub(base, '"row_limit":1024', '"row_limit":' .. (100000 + (i + (offset or 0)) % n), 1)
  return wrk.format("POST", "/api/v1/chart/data", hdrs, body)
end
function done(summary, latency, requests)
  io.write(string.format('WRK_JSON {"requests":%d,"duration_us":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, summary.errors.status, latency:percentile(50), latency:percentile(99)))
end
EOF
    done
    for run in $(seq 1 "$REPEAT"); do
        for c in $SCALE_CONNS; do
            for sys in "${SYSTEMS[@]}"; do
                local url="${TARGET[$sys]}/api/v1/chart/data"
                wrk -t2 -c"$c" -d2s -s "$TMP/wrk-keys-1.lua" "$url" >/dev/null 2>&1 || true
                local j t0 t1
                t0=$(cpu_ticks "${SUT_PID[$sys]}")
                j=$(wrk -t"$WRK_THREADS" -c"$c" -d"$WRK_DURATION" -s "$TMP/wrk-keys-1.lua" "$url" 2>&1 | sed -n 's/^WRK_JSON //p')
                t1=$(cpu_ticks "${SUT_PID[$sys]}")
                local rps p99 cpu
                rps=$(jq -r '(.requests / (.duration_us / 1e6)) | floor' <<<"$j")
                p99=$(jq -r '.p99_us / 1000' <<<"$j")
                cpu=$(scale_cpu_us "$t0" "$t1" "$(jq -r .requests <<<"$j")")
                echo "-- $sys conns=$c run=$run: $rps req/s, p50 $(jq -r '.p50_us / 1000' <<<"$j") ms, p99 $p99 ms, proxy CPU $cpu us/request (load $(cut -d' ' -f1 /proc/loadavg))"
                record scaling "$sys" "conns=$c" "$run" rps "$rps"
                record scaling "$sys" "conns=$c" "$run" p99_ms "$p99"
                record scaling "$sys" "conns=$c" "$run" cpu_us_per_req "$cpu"
            done
        done
        for k in $SCALE_KEYS; do
            for sys in "${SYSTEMS[@]}"; do
                local url="${TARGET[$sys]}/api/v1/chart/data"
                # Fill: run long enough that every key has been requested.
                wrk -t2 -c64 -d"$SCALE_FILL" -s "$TMP/wrk-keys-$k.lua" "$url" >/dev/null 2>&1 || true
                local j t0 t1
                t0=$(cpu_ticks "${SUT_PID[$sys]}")
                j=$(wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"$WRK_DURATION" -s "$TMP/wrk-keys-$k.lua" "$url" 2>&1 | sed -n 's/^WRK_JSON //p')
                t1=$(cpu_ticks "${SUT_PID[$sys]}")
                local rps p99 cpu
                rps=$(jq -r '(.requests / (.duration_us / 1e6)) | floor' <<<"$j")
                p99=$(jq -r '.p99_us / 1000' <<<"$j")
                cpu=$(scale_cpu_us "$t0" "$t1" "$(jq -r .requests <<<"$j")")
                echo "-- $sys keys=$k run=$run: $rps req/s, p50 $(jq -r '.p50_us / 1000' <<<"$j") ms, p99 $p99 ms, non-2xx $(jq -r .non2xx <<<"$j"), proxy CPU $cpu us/request (load $(cut -d' ' -f1 /proc/loadavg))"
                record scaling "$sys" "keys=$k" "$run" rps "$rps"
                record scaling "$sys" "keys=$k" "$run" p99_ms "$p99"
                record scaling "$sys" "keys=$k" "$run" cpu_us_per_req "$cpu"
            done
        done
    done
    echo "chartcache RSS after scaling: $(rss_kib $CC_MEM_PID) KiB; memory store bytes: $(store_bytes $CC_ADMIN)"
}

# ---------------------------------------------------------------- (f) fixed rate
# wrk measures each system at its own maximum, where a faster proxy is also
# offered more load and wrk itself runs short of CPU on the shared cores.
# Here every system gets the same schedule of requests (open loop), so the
# latencies compare like with like.
rate() {
    log "(f) fixed rate: $RATES req/s over $RATE_CONNS connections, ${RATE_SECS}s each, sizes: $SIZES, encodings: $ENCODINGS"
    local size enc sys run r
    for size in $SIZES; do
        jq -c --argjson n "$size" '.request.body | .queries[0].row_limit = $n' "$HOT_FIXTURE" >"$TMP/body-$size.json"
    done
    for run in $(seq 1 "$REPEAT"); do
        for r in $RATES; do
            for size in $SIZES; do
                for enc in $ENCODINGS; do
                    local ae=""
                    [ "$enc" = gzip ] && ae="gzip"
                    [ "$enc" = zstd ] && ae="gzip, deflate, br, zstd"
                    for sys in "${SYSTEMS[@]}"; do
                        local url="${TARGET[$sys]}" cs out j t0 t1 n
                        cs=$(warm_status "$url/api/v1/chart/data" "$TMP/body-$size.json" "$size" "$ae")
                        t0=$(cpu_ticks "${SUT_PID[$sys]}")
                        out=$("$LOAD" rate --target "$url" --body "$TMP/body-$size.json" --bytes "$size" \
                            --accept-encoding "$ae" --rps "$r" --conns "$RATE_CONNS" --duration-secs "$RATE_SECS" --label "$sys" 2>&1)
                        t1=$(cpu_ticks "${SUT_PID[$sys]}")
                        j=$(echo "$out" | sed -n 's/^RESULT_JSON //p')
                        n=$(jq -r .count <<<"$j")
                        local cpu case="$r/$size/$enc"
                        cpu=$(scale_cpu_us "$t0" "$t1" "$n")
                        echo "-- $sys rate=$r size=$size enc=$enc run=$run ($cs; load $(cut -d' ' -f1 /proc/loadavg)): $(echo "$out" | grep -v '^RESULT_JSON' | cut -d: -f2-), proxy CPU $cpu us/request"
                        for m in p50_ms p90_ms p99_ms p999_ms max_ms errors unsent late_share rps_answered; do
                            record rate "$sys" "$case" "$run" "$m" "$(jq -r ".$m" <<<"$j")"
                        done
                        record rate "$sys" "$case" "$run" cpu_us_per_req "$cpu"
                    done
                done
            done
        done
    done
}

for s in $SECTIONS; do
    case $s in
        hot) hot ;;
        dashboards) dashboards ;;
        stampede) stampede ;;
        soak) soak ;;
        scaling) scaling ;;
        rate) rate ;;
        *) echo "unknown section $s" >&2 ;;
    esac
done

log "summary: values of each run (every number also in $SUMMARY)"
awk -F'\t' 'NR > 1 { k = $1 "\t" $2 "\t" $3 "\t" $5; v[k] = v[k] " " $6 } END { for (k in v) print k "\t" v[k] }' "$SUMMARY" | sort
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "results in $OUT"
