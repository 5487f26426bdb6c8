# Shared by redis_bench.sh and redis_cluster_bench.sh (sourced after WORK,
# SIZES and FIXTURE are set): request bodies, the wrk script, warming an
# entry until it is a hit, reading /metrics and wrk latencies.

# Request bodies: the captured big-number query context, row_limit = body size
# (the upstream answers with that many bytes; distinct keys per size), and
# the wrk script that POSTs $BENCH_BODY.
make_requests() {
for size in $SIZES; do
    python3 - "$FIXTURE" "$size" >"$WORK/body-$size.json" <<'EOF'
import json, sys
b = json.load(open(sys.argv[1]))["request"]["body"]
b["queries"][0]["row_limit"] = int(sys.argv[2])
sys.stdout.write(json.dumps(b))
EOF
done

cat >"$WORK/post.lua" <<'EOF'
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-token"
wrk.headers["Accept-Encoding"] = "zstd"
EOF
}

post() { # PORT SIZE -> response headers on stdout, body discarded
    curl -s -o "$WORK/last-body" -D - -X POST "http://127.0.0.1:$1/api/v1/chart/data" \
        -H 'Content-Type: application/json' -H 'Authorization: Bearer bench-token' \
        -H 'Accept-Encoding: zstd' --data-binary "@$WORK/body-$2.json"
}

# Warm one entry and insist on a hit.
warm() { # NAME PORT SIZE
    local i
    post "$2" "$3" >/dev/null
    for i in $(seq 1 50); do
        if post "$2" "$3" | grep -qi '^cache-status: chartcache; hit'; then
            return 0
        fi
        sleep 0.1
    done
    echo "chartcache $1: no hit for the $3-byte body; last response:" >&2
    post "$2" "$3" >&2
    exit 1
}

# Sum of a metric's samples whose line contains every given label text.
metric() { # ADMIN_PORT NAME [LABEL...]
    curl -sf "http://127.0.0.1:$1/metrics" | python3 -c '
import sys
name, labels = sys.argv[1], sys.argv[2:]
t = 0.0
for l in sys.stdin:
    if l.startswith(name) and all(x in l for x in labels):
        t += float(l.rsplit(" ", 1)[1])
print(int(t))' "${@:2}"
}

to_ms() { # "1.23ms" | "456.00us" | "1.02s" -> ms
    python3 -c '
import sys
v = sys.argv[1]
for unit, f in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
    if v.endswith(unit):
        print("%.2f" % (float(v[: -len(unit)]) * f)); break' "$1"
}

human() { if [ "$1" -ge 1024 ] && [ $(( $1 % 1024 )) -eq 0 ]; then echo "$(( $1 / 1024 )) KB"; else echo "$1 B"; fi; }
