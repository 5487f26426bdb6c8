#!/usr/bin/env bash
# Hit-path benchmark of chartcache on Redis, against redis-benchmark GET of the
# same value size in the same run.
#
# Starts its own redis-server (free loopback port, no persistence), a small
# Superset-shaped upstream (redis_bench_upstream.py) and two chartcache
# processes on that Redis: Redis only (`redis.tiered = false`) and tiered
# (memory L1 in front of Redis), each with its own key prefix. Per body size it
# warms one entry per process, checks that it is served as a hit, then runs, one
# after the other:
#   redis-benchmark -t get -d SIZE -c CONNS   (key pre-set to SIZE bytes)
#   wrk (POST /api/v1/chart/data, Accept-Encoding: zstd)   Redis only
#   wrk (same)                                              tiered
# SIZE for redis-benchmark is the length of the entry chartcache stored in
# Redis for that body (STRLEN), so both read the same number of bytes.
#
# Prints one markdown table. Everything runs on 127.0.0.1; every wait is
# bounded; a trap stops what this script started, by pid.
#
# Environment (defaults):
#   CHARTCACHE_BIN  ${CARGO_TARGET_DIR:-<repo>/target}/release/chartcache
#   SIZES           "1024 51200"   upstream body sizes in bytes
#   CONNS           64             connections (wrk and redis-benchmark)
#   DURATION        10             seconds per wrk run; redis-benchmark -n is
#                                  sized to take about as long
#   WRK_THREADS     1              wrk threads (redis-benchmark uses one)
#   ROUNDS          1              repeat the whole sequence
#   REDIS_TIMEOUT_MS 1000          chartcache's redis.timeout_ms. The default
#                                  (50) is right in production, but on a small
#                                  loaded machine a GET queued behind 64
#                                  concurrent ones can exceed it: the request
#                                  then fails open to the upstream, the breaker
#                                  opens, and the run measures misses instead
#                                  of hits. The "checked" column shows hits/total.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
BIN="${CHARTCACHE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/chartcache}"
SIZES="${SIZES:-1024 51200}"
CONNS="${CONNS:-64}"
DURATION="${DURATION:-10}"
WRK_THREADS="${WRK_THREADS:-1}"
ROUNDS="${ROUNDS:-1}"
REDIS_TIMEOUT_MS="${REDIS_TIMEOUT_MS:-1000}"
FIXTURE="$ROOT/tests/fixtures/superset-6.1/16-chart-data-bignumber-admin-miss.json"

for tool in redis-server redis-cli redis-benchmark wrk curl python3; do
    command -v "$tool" >/dev/null || { echo "missing: $tool (apt-get install redis-server wrk curl python3)" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "no chartcache binary at $BIN (cargo build --release)" >&2; exit 1; }
[ "$DURATION" -ge 1 ] && [ "$DURATION" -le 120 ] || { echo "DURATION must be 1..120" >&2; exit 1; }
[ "$ROUNDS" -ge 1 ] && [ "$ROUNDS" -le 5 ] || { echo "ROUNDS must be 1..5" >&2; exit 1; }

WORK="$(mktemp -d /tmp/redis-bench.XXXXXX)"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Six distinct free loopback ports.
read -r P_REDIS P_UP P_RO P_RO_ADMIN P_TI P_TI_ADMIN < <(python3 - <<'EOF'
import socket
socks = []
for _ in range(6):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(*[s.getsockname()[1] for s in socks])
EOF
)

wait_for() { # wait_for DESCRIPTION COMMAND... : up to 10 s
    local i
    for i in $(seq 1 100); do
        if "${@:2}" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "timed out waiting for $1" >&2
    exit 1
}

rcli() { redis-cli -h 127.0.0.1 -p "$P_REDIS" "$@"; }

redis-server --bind 127.0.0.1 --port "$P_REDIS" --save "" --appendonly no \
    --daemonize no --logfile "$WORK/redis.log" &
PIDS+=($!); REDIS_PID=$!
wait_for redis-server rcli ping

python3 "$HERE/redis_bench_upstream.py" "$P_UP" 2>"$WORK/upstream.log" &
PIDS+=($!)
wait_for upstream curl -sf "http://127.0.0.1:$P_UP/health"

start_chartcache() { # NAME PORT ADMIN_PORT TIERED
    CHARTCACHE_REDIS__TIERED="$4" CHARTCACHE_REDIS__PREFIX="bench-$1" \
        CHARTCACHE_REDIS__TIMEOUT_MS="$REDIS_TIMEOUT_MS" \
        "$BIN" --upstream "http://127.0.0.1:$P_UP" --listen "127.0.0.1:$2" \
        --admin-listen "127.0.0.1:$3" --redis-url "redis://127.0.0.1:$P_REDIS" \
        >"$WORK/chartcache-$1.log" 2>&1 &
    PIDS+=($!)
    eval "PID_$1=$!"
    wait_for "chartcache $1" curl -sf "http://127.0.0.1:$3/healthz"
}
start_chartcache ro "$P_RO" "$P_RO_ADMIN" false
start_chartcache ti "$P_TI" "$P_TI_ADMIN" true

# make_requests, post, warm, metric, to_ms, human
. "$HERE/redis_common.sh"
make_requests

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Run a load generator, recording its CPU seconds (user + system) in $WORK/gen-cpu.
timed() {
    if [ -x /usr/bin/time ]; then
        /usr/bin/time -f '%U %S' -o "$WORK/gen-cpu" "$@"
    else
        echo "0 0" >"$WORK/gen-cpu"; "$@"
    fi
}
gen_us() { # REQUESTS -> load generator CPU µs per request
    awk -v n="$1" '{ printf "%d", ($1 + $2) * 1000000 / (n > 0 ? n : 1) }' "$WORK/gen-cpu"
}
TCK=$(getconf CLK_TCK)


ROWS=()
NOTES=()

bench_redis() { # SIZE VALUE_BYTES
    local size=$1 n=$2 est req out line before after t0 t1
    rcli eval "redis.call('SET', KEYS[1], string.rep('x', tonumber(ARGV[1]))) return 1" \
        1 'key:__rand_int__' "$n" >/dev/null
    # Short run to size the measured one to about DURATION seconds.
    est=$(timeout 60 redis-benchmark -h 127.0.0.1 -p "$P_REDIS" -t get -d "$n" -c "$CONNS" \
        -n 20000 --csv | awk -F'"' '$2=="GET"{print int($4)}')
    req=$(( est * DURATION ))
    [ "$req" -ge 20000 ] || req=20000
    [ "$req" -le 3000000 ] || req=3000000
    before=$(rcli info stats | awk -F: '/^keyspace_hits/{print $2+0}')
    t0=$(cpu_ticks "$REDIS_PID")
    out=$(timed timeout $(( DURATION * 6 + 30 )) redis-benchmark -h 127.0.0.1 -p "$P_REDIS" \
        -t get -d "$n" -c "$CONNS" -n "$req" --csv)
    t1=$(cpu_ticks "$REDIS_PID")
    after=$(rcli info stats | awk -F: '/^keyspace_hits/{print $2+0}')
    line=$(echo "$out" | awk -F'"' '$2=="GET"{print $4, $10, $14}')
    read -r RB_RPS RB_P50 RB_P99 <<<"$line"
    local hits=$(( after - before ))
    local cpu_us=$(( (t1 - t0) * 1000000 / TCK / (req > 0 ? req : 1) ))
    ROWS+=("| $(human "$size") | redis-benchmark GET (${n} B value) | ${RB_RPS%.*} | ${RB_P50} | ${RB_P99} | – | ${hits}/${req} keyspace hits | redis ${cpu_us} µs, redis-benchmark $(gen_us "$req") µs |")
}

bench_chartcache() { # NAME LABEL PORT ADMIN PID SIZE
    local name=$1 label=$2 port=$3 admin=$4 pid=$5 size=$6
    local h0 r0 g0 t0 h1 r1 g1 t1 rt0 rt1 out rps p50 p99 errs
    h0=$(metric "$admin" chartcache_requests_total 'outcome="hit"')
    r0=$(metric "$admin" chartcache_requests_total)
    g0=$(metric "$admin" chartcache_store_operations_total 'store="redis"' 'op="get"' 'result="hit"')
    t0=$(cpu_ticks "$pid"); rt0=$(cpu_ticks "$REDIS_PID")
    out=$(BENCH_BODY="$WORK/body-$size.json" timed timeout $(( DURATION + 30 )) \
        wrk -t "$WRK_THREADS" -c "$CONNS" -d "${DURATION}s" --timeout 5s --latency \
        -s "$WORK/post.lua" "http://127.0.0.1:$port/api/v1/chart/data")
    t1=$(cpu_ticks "$pid"); rt1=$(cpu_ticks "$REDIS_PID")
    h1=$(metric "$admin" chartcache_requests_total 'outcome="hit"')
    r1=$(metric "$admin" chartcache_requests_total)
    g1=$(metric "$admin" chartcache_store_operations_total 'store="redis"' 'op="get"' 'result="hit"')
    echo "$out" >>"$WORK/wrk.log"
    rps=$(echo "$out" | awk '/^Requests\/sec:/{print int($2)}')
    p50=$(to_ms "$(echo "$out" | awk '$1=="50%"{print $2}')")
    p99=$(to_ms "$(echo "$out" | awk '$1=="99%"{print $2}')")
    errs=$(echo "$out" | grep -E 'Non-2xx|Socket errors' | tr -s ' ' | paste -sd ';' - || true)
    local total=$(( r1 - r0 )) hits=$(( h1 - h0 )) gets=$(( g1 - g0 ))
    local cpu_us=$(( (t1 - t0) * 1000000 / TCK / (total > 0 ? total : 1) ))
    local rcpu_us=$(( (rt1 - rt0) * 1000000 / TCK / (total > 0 ? total : 1) ))
    local ratio=–
    if [ "$name" = ro ] && [ "${RB_RPS%.*}" -gt 0 ]; then
        ratio="$(( rps * 100 / ${RB_RPS%.*} )) %"
        RATIOS+=("$(human "$size"): $ratio")
    fi
    ROWS+=("| $(human "$size") | chartcache $label | $rps | $p50 | $p99 | $ratio | ${hits}/${total} hits, ${gets} redis GET hits | chartcache ${cpu_us} µs, redis ${rcpu_us} µs, wrk $(gen_us "$total") µs |")
    [ -z "$errs" ] || NOTES+=("$(human "$size") $label: $errs")
}


LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
RATIOS=()
declare -A ENTRY_LEN
for round in $(seq 1 "$ROUNDS"); do
    for size in $SIZES; do
        keys_before=$(rcli --scan --pattern 'bench-ro:e:*' | sort)
        warm ro "$P_RO" "$size"
        warm ti "$P_TI" "$size"
        if [ -z "${ENTRY_LEN[$size]:-}" ]; then
            body_len=$(stat -c %s "$WORK/last-body")
            new_key=$(comm -13 <(echo "$keys_before") <(rcli --scan --pattern 'bench-ro:e:*' | sort))
            [ "$(echo "$new_key" | grep -c .)" -eq 1 ] || { echo "expected one new Redis entry, got: $new_key" >&2; exit 1; }
            ENTRY_LEN[$size]=$(rcli strlen "$new_key")
            NOTES+=("$(human "$size") body: ${body_len} B served (zstd, Accept-Encoding: zstd); Redis entry ${ENTRY_LEN[$size]} B")
        fi
        bench_redis "$size" "${ENTRY_LEN[$size]}"
        bench_chartcache ro "Redis only" "$P_RO" "$P_RO_ADMIN" "$PID_ro" "$size"
        bench_chartcache ti "tiered (L1)" "$P_TI" "$P_TI_ADMIN" "$PID_ti" "$size"
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(redis-server --version | cut -d' ' -f3); load average before ${LOAD_BEFORE}, after ${LOAD_AFTER}"
echo "wrk -t ${WRK_THREADS} -c ${CONNS} -d ${DURATION}s; redis-benchmark -t get -c ${CONNS} (-n sized to ~${DURATION}s); rounds ${ROUNDS}; chartcache redis.timeout_ms ${REDIS_TIMEOUT_MS}, access log on (default)"
echo
echo "| body | what | req/s | p50 ms | p99 ms | chartcache Redis only / redis-benchmark | checked | CPU per request |"
echo "|---|---|---:|---:|---:|---:|---|---|"
printf '%s\n' "${ROWS[@]}"
echo
printf -- '- %s\n' "${NOTES[@]}"
echo "RATIOS ${RATIOS[*]}"
