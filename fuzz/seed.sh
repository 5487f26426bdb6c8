#!/usr/bin/env bash
# Seed the fuzz corpora with the Superset fixtures' chart-data bodies and paths.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p corpus/fingerprint corpus/classify corpus/credentials
for f in ../tests/fixtures/superset-6.1/*.json; do
  name=$(basename "$f" .json)
  python3 - "$f" "corpus/fingerprint/$name" "corpus/classify/$name" <<'PY'
import json, sys
fx = json.load(open(sys.argv[1]))
req = fx["request"]
body = req.get("body")
path = req.get("path", "/")
# Byte 0 picks route and content type (see src/fuzz_harness/mod.rs); then query, NUL, body.
query = path.split("?", 1)[1] if "?" in path else ""
raw = json.dumps(body).encode() if isinstance(body, (dict, list)) else (body or "").encode()
open(sys.argv[2], "wb").write(bytes([4]) + query.encode() + b"\0" + raw)
method = {"GET": 0, "POST": 1, "PUT": 2, "DELETE": 3}.get(req.get("method", "GET"), 0)
open(sys.argv[3], "wb").write(bytes([method]) + path.encode())
PY
done
# Credential shapes (see check_credentials in src/fuzz_harness/mod.rs): byte 0 odd
# means HTTP/2; then lines of a header-name byte and the value.
printf '\0\0Bearer bob\n\1session=alice\n\3keep-alive, cookie' > corpus/credentials/connection-names-cookie
printf '\0\0Bearer bob\n\1theme=dark\n\7session=alice' > corpus/credentials/second-cookie-header
printf '\1\0Bearer bob\n\1theme=dark\n\7session=alice' > corpus/credentials/h2-crumbs
printf '\0\2made-up\n\0\n\0Bearer bob' > corpus/credentials/empty-authorization
echo "seeded $(ls corpus/fingerprint | wc -l) inputs per target"
