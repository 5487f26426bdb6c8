#!/usr/bin/env bash
# The chaos suite at long scale against the release build: every scenario of
# tests/chaos/support/ (Sentinel master killed and frozen, Redis killed and
# restarted, SIGTERM with requests in flight, SIGHUP under load, upstream
# 500/slow/killed, slow clients, the memory cap under 20 000 distinct
# answers) with real processes on loopback. Every process is started by the
# runner and stopped by its pid. Reports go to stdout and to
# loadtests/results/chaos-<timestamp>/; the exit status is non-zero when a
# goal was not met.
#
#   loadtests/chaos.sh                                  # all scenarios, long scale
#   SCENARIOS=sigterm_in_flight,slow_clients loadtests/chaos.sh
#   SCALE=quick loadtests/chaos.sh                      # the cargo-test sizes
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCENARIOS=${SCENARIOS:-all}
SCALE=${SCALE:-long}
command -v redis-server >/dev/null || {
    echo "chaos.sh: redis-server is needed (Debian: apt-get install redis-server)" >&2
    exit 2
}
(cd "$ROOT" && cargo build --release --bin chartcache)
(cd "$ROOT/loadtests" && cargo build --release)
OUT="$ROOT/loadtests/results/chaos-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
"$ROOT/loadtests/target/release/chartcache-load" chaos \
    --bin "$ROOT/target/release/chartcache" \
    --scenarios "$SCENARIOS" --scale "$SCALE" --json "$OUT/reports.jsonl" | tee "$OUT/report.txt"
