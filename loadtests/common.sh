# Shell helpers shared by compare.sh and ab_hit.sh (sourced, not run).

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
