#!/usr/bin/env bash
# Seed the fuzz corpora with the Superset fixtures' chart-data bodies and paths.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p corpus/fingerprint corpus/classify
for f in ../tests/fixtures/superset-6.1/*.json; do
  name=$(basename "$f" .json)
  python3 - "$f" "corpus/fingerprint/$name" "corpus/classify/$name" <<'PY'
import json, sys
fx = json.load(open(sys.argv[1]))
req = fx["request"]
body = req.get("body")
path = req.get("path", "/")
# Byte 0 picks route and content type (see src/fuzz_harness.rs); then query, NUL, body.
query = path.split("?", 1)[1] if "?" in path else ""
raw = json.dumps(body).encode() if isinstance(body, (dict, list)) else (body or "").encode()
open(sys.argv[2], "wb").write(bytes([4]) + query.encode() + b"\0" + raw)
method = {"GET": 0, "POST": 1, "PUT": 2, "DELETE": 3}.get(req.get("method", "GET"), 0)
open(sys.argv[3], "wb").write(bytes([method]) + path.encode())
PY
done
echo "seeded $(ls corpus/fingerprint | wc -l) inputs per target"
