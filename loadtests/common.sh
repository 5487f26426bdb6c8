# Shell helpers shared by compare.sh, ab_hit.sh and big_misses.sh (sourced,
# not run; the sourcing script sets ROOT, and LOAD for hot_setup).

# The chart-data request the hot-path workloads send.
HOT_FIXTURE="$ROOT/tests/fixtures/superset-6.1/20-chart-data-timeseries-admin-miss.json"

# wait_http URL [TRIES]: wait (100 ms per try, 100 tries by default) until URL answers.
wait_http() {
    local i
    for i in $(seq 1 "${2:-100}"); do
        curl -s -o /dev/null "$1" && return 0
        sleep 0.1
    done
    echo "timed out waiting for $1" >&2
    return 1
}

# hit_lua BODY_FILE BYTES ACCEPT_ENCODING: the wrk Lua lines for the hot-path
# request: POST of BODY_FILE as user 1, the upstream asked for BYTES bytes.
# An empty ACCEPT_ENCODING sends no Accept-Encoding header.
hit_lua() {
    cat <<LUA
local f = assert(io.open("$1", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer user-1-tok-0"
wrk.headers["X-Bench-Bytes"] = "$2"
wrk.headers["X-Bench-Latency-Ms"] = "50"
LUA
    [ -n "$3" ] && echo "wrk.headers[\"Accept-Encoding\"] = \"$3\""
    return 0
}

# warm_status URL BODY_FILE BYTES ACCEPT_ENCODING: send the hit_lua request
# three times (fill, then hits) and print the last Cache-Status.
warm_status() {
    local cs="" ae=()
    [ -n "$4" ] && ae=(-H "Accept-Encoding: $4")
    for _ in 1 2 3; do
        cs=$(curl -s -o /dev/null -D - -X POST "$1" -H 'Content-Type: application/json' \
            -H 'Authorization: Bearer user-1-tok-0' -H "X-Bench-Bytes: $3" -H 'X-Bench-Latency-Ms: 50' \
            "${ae[@]}" --data-binary "@$2" | tr -d '\r' | awk -F': ' 'tolower($1)=="cache-status" {print $2}')
    done
    echo "$cs"
}

# hot_setup PORT OUT BYTES ACCEPT_ENCODING: start the Superset-shaped upstream
# on PORT (its pid appended to PIDS) and wait for it; write OUT/body.json
# (HOT_FIXTURE asking for BYTES) and OUT/wrk.lua (the hit_lua request).
hot_setup() {
    "$LOAD" upstream --listen "127.0.0.1:$1" --threads 1 >"$2/upstream.log" 2>&1 &
    PIDS+=($!)
    wait_http "http://127.0.0.1:$1/__stats"
    jq -c --argjson n "$3" '.request.body | .queries[0].row_limit = $n' "$HOT_FIXTURE" >"$2/body.json"
    hit_lua "$2/body.json" "$3" "$4" >"$2/wrk.lua"
}
