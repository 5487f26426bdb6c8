"""Reproduce one pinned cache key (VECTOR_BIGNUMBER_ADMIN in src/fingerprint.rs)
without chartcache's code: the key schema written out in Python.

    pip install blake3 && python3 tests/independent/key_vector.py

Not part of `cargo test` (it needs the `blake3` package); a different digest
means the Rust key and its documentation disagree.
"""
import json
import pathlib
import struct

import blake3

FIXTURE = pathlib.Path(__file__).parent.parent / "fixtures/superset-6.1/16-chart-data-bignumber-admin-miss.json"
PINNED = "8c917155a69d1398bb4ad302fca0755fa84565e7f055370eed65dea3df6255bc"


def field(h, b):
    h.update(struct.pack("<Q", len(b)))
    h.update(b)


body = json.loads(FIXTURE.read_text())["request"]["body"]
body.pop("force", None)
canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
h = blake3.blake3()
field(h, b"chartcache")
field(h, struct.pack("<I", 2))  # key schema version
field(h, b"chart_data")  # route kind
field(h, b"/api/v1/chart/data")
h.update(struct.pack("<Q", 0))  # no query parameters
field(h, b"user:1")  # identity scope
field(h, blake3.blake3(canonical).digest())  # canonical body, as its digest
got = h.hexdigest()
print(got)
assert got == PINNED, f"expected {PINNED}"
