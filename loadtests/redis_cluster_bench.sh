#!/usr/bin/env bash
# Hit-path benchmark of chartcache on a single Redis master against a 3-master
# Redis Cluster, in the same run: Redis-only (`redis.tiered = false`: every
# hit reads Redis) and tiered (memory L1 in front) hits, at 1 KB and 50 KB.
#
# Starts its own redis-server processes (one standalone, three
# `cluster-enabled` masters joined with `redis-cli --cluster create`; free
# loopback ports, no persistence), the Superset-shaped upstream of
# redis_bench.sh (redis_bench_upstream.py) and four chartcache processes
# (single/cluster × Redis only/tiered). Per body size it warms one entry per
# process, checks that it is a hit, then runs wrk against each process, the
# two topologies interleaved (single, cluster, single, cluster) so that drift
# in the machine's load hits both alike. Prints one markdown table. Every wait
# is bounded; a trap stops what this script started, by pid.
#
# Environment (defaults):
#   CHARTCACHE_BIN  ${CARGO_TARGET_DIR:-<repo>/target}/release/chartcache
#   SIZES           "1024 51200"   upstream body sizes in bytes
#   CONNS           64             wrk connections
#   DURATION        10             seconds per wrk run
#   ROUNDS          1              repeat the whole sequence (1..5)
#   REDIS_TIMEOUT_MS 1000          chartcache's redis.timeout_ms (see redis_bench.sh)
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
BIN="${CHARTCACHE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/chartcache}"
SIZES="${SIZES:-1024 51200}"
CONNS="${CONNS:-64}"
DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-1}"
REDIS_TIMEOUT_MS="${REDIS_TIMEOUT_MS:-1000}"
FIXTURE="$ROOT/tests/fixtures/superset-6.1/16-chart-data-bignumber-admin-miss.json"

for tool in redis-server redis-cli wrk curl python3; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "no chartcache binary at $BIN (cargo build --release)" >&2; exit 1; }
[ "$DURATION" -ge 1 ] && [ "$DURATION" -le 120 ] || { echo "DURATION must be 1..120" >&2; exit 1; }
[ "$ROUNDS" -ge 1 ] && [ "$ROUNDS" -le 5 ] || { echo "ROUNDS must be 1..5" >&2; exit 1; }

WORK="$(mktemp -d /tmp/redis-cluster-bench.XXXXXX)"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1 single + 3 cluster nodes (+ 3 bus ports), upstream, 4 × (proxy, admin).
read -r P_SINGLE P_C1 P_C2 P_C3 B_C1 B_C2 B_C3 P_UP \
    P_SR P_SRA P_ST P_STA P_CR P_CRA P_CT P_CTA < <(python3 - <<'EOF'
import socket
socks = []
for _ in range(16):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(*[s.getsockname()[1] for s in socks])
EOF
)

wait_for() { # wait_for DESCRIPTION COMMAND... : up to 20 s
    local i
    for i in $(seq 1 200); do
        if "${@:2}" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "timed out waiting for $1" >&2
    exit 1
}

redis-server --bind 127.0.0.1 --port "$P_SINGLE" --save "" --appendonly no \
    --daemonize no --logfile "$WORK/single.log" &
PIDS+=($!)
wait_for "redis single" redis-cli -p "$P_SINGLE" ping
for i in 1 2 3; do
    p_var="P_C$i"; b_var="B_C$i"
    mkdir -p "$WORK/c$i"
    (cd "$WORK/c$i" && exec redis-server --bind 127.0.0.1 --port "${!p_var}" \
        --cluster-enabled yes --cluster-port "${!b_var}" --cluster-config-file nodes.conf \
        --cluster-node-timeout 2000 --save "" --appendonly no --daemonize no \
        --logfile "$WORK/c$i/redis.log") &
    PIDS+=($!)
    wait_for "redis cluster node $i" redis-cli -p "${!p_var}" ping
done
redis-cli --cluster create "127.0.0.1:$P_C1" "127.0.0.1:$P_C2" "127.0.0.1:$P_C3" \
    --cluster-replicas 0 --cluster-yes >"$WORK/create.log"
cluster_ok() { redis-cli -p "$P_C1" cluster info | grep -q 'cluster_state:ok'; }
wait_for "cluster state ok" cluster_ok

python3 "$HERE/redis_bench_upstream.py" "$P_UP" 2>"$WORK/upstream.log" &
PIDS+=($!)
wait_for upstream curl -sf "http://127.0.0.1:$P_UP/health"

start_chartcache() { # NAME PORT ADMIN TIERED REDIS_URL
    CHARTCACHE_REDIS__TIERED="$4" CHARTCACHE_REDIS__PREFIX="bench-$1" \
        CHARTCACHE_REDIS__TIMEOUT_MS="$REDIS_TIMEOUT_MS" \
        "$BIN" --upstream "http://127.0.0.1:$P_UP" --listen "127.0.0.1:$2" \
        --admin-listen "127.0.0.1:$3" --redis-url "$5" \
        >"$WORK/chartcache-$1.log" 2>&1 &
    PIDS+=($!)
    wait_for "chartcache $1" curl -sf "http://127.0.0.1:$3/healthz"
}
SINGLE="redis://127.0.0.1:$P_SINGLE"
CLUSTER="redis+cluster://127.0.0.1:$P_C1,127.0.0.1:$P_C2,127.0.0.1:$P_C3"
start_chartcache sr "$P_SR" "$P_SRA" false "$SINGLE"
start_chartcache st "$P_ST" "$P_STA" true "$SINGLE"
start_chartcache cr "$P_CR" "$P_CRA" false "$CLUSTER"
start_chartcache ct "$P_CT" "$P_CTA" true "$CLUSTER"

# make_requests, post, warm, metric, to_ms, human
. "$HERE/redis_common.sh"
make_requests

ROWS=()
run() { # TOPOLOGY MODE PORT ADMIN SIZE
    local h0 r0 h1 r1 out rps p50 p99 errs
    h0=$(metric "$4" chartcache_requests_total 'outcome="hit"')
    r0=$(metric "$4" chartcache_requests_total)
    out=$(BENCH_BODY="$WORK/body-$5.json" timeout $(( DURATION + 30 )) \
        wrk -t 1 -c "$CONNS" -d "${DURATION}s" --timeout 5s --latency \
        -s "$WORK/post.lua" "http://127.0.0.1:$3/api/v1/chart/data")
    h1=$(metric "$4" chartcache_requests_total 'outcome="hit"')
    r1=$(metric "$4" chartcache_requests_total)
    rps=$(echo "$out" | awk '/^Requests\/sec:/{print int($2)}')
    p50=$(to_ms "$(echo "$out" | awk '$1=="50%"{print $2}')")
    p99=$(to_ms "$(echo "$out" | awk '$1=="99%"{print $2}')")
    errs=$(echo "$out" | grep -E 'Non-2xx|Socket errors' | tr -s ' ' | paste -sd ';' - || true)
    ROWS+=("| $(human "$5") | $1 | $2 | $rps | $p50 | $p99 | $(( h1 - h0 ))/$(( r1 - r0 )) hits ${errs} |")
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for round in $(seq 1 "$ROUNDS"); do
    for size in $SIZES; do
        for n in "sr $P_SR" "st $P_ST" "cr $P_CR" "ct $P_CT"; do
            set -- $n
            warm "$1" "$2" "$size"
        done
        run "single master" "Redis only" "$P_SR" "$P_SRA" "$size"
        run "3-master cluster" "Redis only" "$P_CR" "$P_CRA" "$size"
        run "single master" "tiered (L1)" "$P_ST" "$P_STA" "$size"
        run "3-master cluster" "tiered (L1)" "$P_CT" "$P_CTA" "$size"
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(redis-server --version | cut -d' ' -f3); load average before ${LOAD_BEFORE}, after ${LOAD_AFTER}"
echo "wrk -t 1 -c ${CONNS} -d ${DURATION}s; rounds ${ROUNDS}; chartcache redis.timeout_ms ${REDIS_TIMEOUT_MS}"
echo
echo "| body | Redis | chartcache | req/s | p50 ms | p99 ms | checked |"
echo "|---|---|---|---:|---:|---:|---|"
printf '%s\n' "${ROWS[@]}"
