#!/usr/bin/env python3
"""A minimal Superset-shaped upstream for loadtests/redis_bench.sh.

GET  /api/v1/me/          -> {"result": {"id": 1, "username": "bench"}} for any Bearer token
POST /api/v1/chart/data   -> a chart-data JSON body whose zstd form is about
                             queries[0].row_limit bytes

The body's filler is random base64 (6 bits per byte), 4/3 of the wanted size:
zstd brings it back to about that size, so the entry chartcache stores in Redis
and the zstd body it serves are both about row_limit bytes, like the value
redis-benchmark GETs. Only warm-up requests and identity look-ups reach it.
Usage: redis_bench_upstream.py PORT (binds 127.0.0.1 only).
"""
import base64
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def chart_body(size):
    head = {"result": [{"cache_timeout": 86400, "status": "success", "rowcount": 1,
                        "data": [{"filler": ""}]}]}
    n = max(0, size * 4 // 3 - 100)
    filler = base64.b64encode(os.urandom(n))[:n].decode()
    head["result"][0]["data"][0]["filler"] = filler
    return json.dumps(head, separators=(",", ":")).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def authed(self):
        return self.headers.get("Authorization", "").startswith("Bearer ")

    def do_GET(self):
        if self.path.rstrip("/") == "/api/v1/me" and self.authed():
            return self.reply(200, b'{"result": {"id": 1, "username": "bench"}}')
        if self.path == "/health":
            return self.reply(200, b'{"ok": true}')
        return self.reply(401 if self.path.startswith("/api/v1/me") else 404, b'{"msg": "no"}')

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(n)
        if self.path.rstrip("/") != "/api/v1/chart/data":
            return self.reply(404, b'{"message": "Not found"}')
        if not self.authed():
            return self.reply(401, b'{"msg": "Missing Authorization Header"}')
        try:
            size = int(json.loads(raw)["queries"][0]["row_limit"])
        except Exception:
            return self.reply(400, b'{"message": "bad request"}')
        self.reply(200, chart_body(min(size, 8 << 20)))


if __name__ == "__main__":
    port = int(sys.argv[1])
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
