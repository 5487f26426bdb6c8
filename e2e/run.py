#!/usr/bin/env python3
"""chartcache end-to-end harness against a real Apache Superset 6.1.0.

    python3 e2e/run.py                      # both modes, every check
    python3 e2e/run.py --mode gaq --only stampede
    python3 e2e/run.py --chartcache target/release/chartcache

See e2e/README.md for what each check means."""

import argparse
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import browser, chartcache, checks, objects, procs, superset  # noqa: E402
from harness.env import Env  # noqa: E402
from harness.client import Client  # noqa: E402

ALL_CHECKS = checks.ORDER + ["browser"]
# The report's letters, accepted by --only as well.
LETTERS = {"a": "loads", "b": "loads", "c": "loads", "d": "stampede", "e": "force",
           "f": "result_url", "g": "bearer", "h": "counts", "i": "browser"}
TEMPLATE_DB = os.path.expanduser("~/.cache/chartcache-e2e/metadata-6.1.0.db")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["sync", "gaq", "both"], default="both")
    ap.add_argument("--only", default="",
                    help="comma-separated checks: " + ",".join(ALL_CHECKS))
    ap.add_argument("--chartcache", help="an already-built chartcache binary (skips cargo)")
    ap.add_argument("--profile", choices=["debug", "release"], default="debug",
                    help="cargo profile to build when --chartcache is not given")
    ap.add_argument("--wait", type=float, default=30.0,
                    help="bound (s) for one chart's data, async job included")
    ap.add_argument("--results", help="JSON results file [default: RUNDIR/results.json]")
    ap.add_argument("--no-browser", action="store_true", help="skip the Chromium check")
    ap.add_argument("--fresh-metadata", action="store_true",
                    help="run superset db upgrade/init instead of copying the cached "
                         "freshly-initialised metadata DB")
    a = ap.parse_args()
    a.only = [LETTERS.get(c.strip(), c.strip()) for c in a.only.split(",") if c.strip()]
    for c in a.only:
        if c not in ALL_CHECKS:
            ap.error(f"unknown check {c!r}; known: {', '.join(ALL_CHECKS)} or a-i")
    return a


def metadata_db(rundir, env, log, fresh):
    """A fresh metadata DB for this run: `db upgrade` + admin + `init`, or a
    copy of the same, made once and cached (it is identical for every run)."""
    dest = os.path.join(rundir, "superset.db")
    if not fresh and os.path.exists(TEMPLATE_DB):
        shutil.copyfile(TEMPLATE_DB, dest)
        return "copied"
    superset.init_metadata(env, log)
    tmp = TEMPLATE_DB + ".partial"
    shutil.copyfile(dest, tmp)
    os.replace(tmp, TEMPLATE_DB)
    return "initialised"


def run_mode(mode, a, ps, rundir, redis_port, binary, state, timings):
    """Start Superset (+ worker) and chartcache for one mode and run its checks."""
    t0 = time.monotonic()
    cfg = os.path.join(rundir, f"superset_config_{mode}.py")
    superset.write_config(cfg, rundir, redis_port, mode == "gaq", state["secret"])
    env = superset.env_for(cfg)
    if "meta" not in state:
        state["meta"] = metadata_db(rundir, env, os.path.join(rundir, "init.log"),
                                    a.fresh_metadata)
        timings["metadata_db_s"] = round(time.monotonic() - t0, 1)
    started = []
    worker = None
    g, port, secs = superset.start_gunicorn(ps, env, f"superset-{mode}")
    started.append(g)
    timings[f"{mode}_superset_start_s"] = round(secs, 1)
    direct = f"http://127.0.0.1:{port}"
    if mode == "gaq":
        worker, wsecs = superset.start_celery(ps, env, "celery-worker")
        started.append(worker)
        timings["gaq_worker_start_s"] = round(wsecs, 1)
    if "ids" not in state:
        ts = time.monotonic()
        admin = Client(direct, "admin").login_form("admin", superset.ADMIN_PASSWORD)
        admin.fetch_csrf()
        state["ids"] = objects.create_all(admin, state["data_db"])
        timings["objects_s"] = round(time.monotonic() - ts, 1)
    cc, via, admin_base, token = chartcache.start(ps, binary, direct, rundir, f"chartcache-{mode}")
    started.append(cc)
    e = Env(mode, direct, via, admin_base, token, redis_port, rundir, state["ids"],
            state["data_db"], worker.log_path if worker else None, a.wait)
    results = []
    wanted = a.only or ALL_CHECKS
    for name in checks.ORDER:
        if name not in wanted:
            continue
        tc = time.monotonic()
        try:
            rs = checks.CHECKS[name](e)
        except Exception as ex:
            traceback.print_exc()
            rs = [{"check": name, "title": name, "status": "ERROR",
                   "detail": f"{type(ex).__name__}: {ex}", "data": {}}]
        for r in rs:
            r["secs"] = round(time.monotonic() - tc, 1)
            print(f"  [{mode}] {r['check']:>2} {r['status']:<5} {r['title']}: {r['detail']}",
                  flush=True)
        results += rs
    if "browser" in wanted and not a.no_browser:
        tc = time.monotonic()
        try:
            r = browser.check(e)
        except Exception as ex:
            traceback.print_exc()
            r = {"check": "i", "title": "browser", "status": "ERROR",
                 "detail": f"{type(ex).__name__}: {ex}", "data": {}}
        r["secs"] = round(time.monotonic() - tc, 1)
        print(f"  [{mode}] {r['check']:>2} {r['status']:<5} {r['title']}: {r['detail']}",
              flush=True)
        results.append(r)
    for p in reversed(started):
        ps.stop(p)
    # Nothing of this mode's Superset survives into the next one.
    superset.redis_cli(redis_port, 0, "FLUSHALL")
    timings[f"{mode}_total_s"] = round(time.monotonic() - t0, 1)
    return results


def print_table(all_results):
    print("\n%-5s %-3s %-6s %s" % ("mode", "id", "status", "check / detail"))
    print("-" * 100)
    for mode, rs in all_results.items():
        for r in sorted(rs, key=lambda r: r["check"]):
            print("%-5s %-3s %-6s %s" % (mode, r["check"], r["status"], r["title"]))
            print("%-16s %s" % ("", r["detail"][:400]))


def measurements(all_results):
    """The numbers worth reading across runs, pulled out of the checks' data."""
    m = {}
    for mode, rs in all_results.items():
        by = {r["check"]: r.get("data") or {} for r in rs}
        e = {}
        if by.get("h"):
            e["per_view"] = {k: {x: v[x] for x in ("sql", "jobs", "upstream_posts", "charts_with_data",
                                           "warm_sql", "warm_jobs", "warm_hits")
                                 if x in v} for k, v in by["h"].items()}
        if by.get("d"):
            e["stampede"] = {k: {x: v[x] for x in ("sql", "jobs", "got_data", "foreign_tickets")}
                             for k, v in by["d"].items()}
        if by.get("c"):
            e["first_all_hit_load"] = by["c"].get("first_all_hit_load")
        if by.get("i"):
            e["browser"] = by["i"].get("timing")
        m[mode] = e
    return m


def main():
    a = parse_args()
    # SIGTERM unwinds like Ctrl-C, so the finally below stops every process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t_start = time.monotonic()
    timings = {}
    rundir = tempfile.mkdtemp(prefix="chartcache-e2e-")
    print(f"run dir (logs, config, results): {rundir}", flush=True)
    ps = procs.Procs(rundir)
    all_results = {}
    failed_setup = None
    try:
        t = time.monotonic()
        secs, how = superset.ensure_venv(os.path.join(rundir, "install.log"))
        timings["install_s"], timings["install"] = round(secs, 1), how
        print(f"superset venv: {how} ({secs:.1f}s) {superset.VENV}", flush=True)
        if a.chartcache:
            binary = os.path.abspath(a.chartcache)
        else:
            print(f"building chartcache ({a.profile}) ...", flush=True)
            binary, bsecs = chartcache.build(a.profile, os.path.join(rundir, "cargo.log"))
            timings["chartcache_build_s"] = round(bsecs, 1)
        print(f"chartcache: {binary} ({chartcache.version(binary)})", flush=True)
        _, redis_port = superset.start_redis(ps, rundir)
        state = {"secret": secrets.token_hex(32),
                 "data_db": os.path.join(rundir, "data.db")}
        objects.make_data_db(state["data_db"])
        modes = ["sync", "gaq"] if a.mode == "both" else [a.mode]
        for mode in modes:
            print(f"== mode {mode}", flush=True)
            all_results[mode] = run_mode(mode, a, ps, rundir, redis_port, binary, state,
                                         timings)
    except Exception as ex:
        failed_setup = f"{type(ex).__name__}: {ex}"
        traceback.print_exc()
        ps.print_tails(40)
    finally:
        ps.stop_all()
    timings["total_s"] = round(time.monotonic() - t_start, 1)
    print_table(all_results)
    if failed_setup:
        print(f"\nSETUP FAILED: {failed_setup}")
    statuses = [r["status"] for rs in all_results.values() for r in rs]
    summary = {s: statuses.count(s) for s in ("PASS", "FAIL", "ERROR", "SKIP")}
    meas = measurements(all_results)
    for mode, e in meas.items():
        print(f"measured [{mode}]: {json.dumps(e)}")
    print("timings:", json.dumps(timings))
    out = a.results or os.path.join(rundir, "results.json")
    with open(out, "w") as f:
        json.dump({"timings": timings, "summary": summary, "measurements": meas, "setup_error": failed_setup,
                   "rundir": rundir, "results": all_results}, f, indent=1, default=str)
    print(f"results: {out}")
    ok = not failed_setup and summary["FAIL"] == 0 and summary["ERROR"] == 0 and statuses
    if not ok and not failed_setup:
        for p in sorted(os.listdir(rundir)):
            if p.endswith(".log") and p not in ("install.log", "cargo.log"):
                print(f"----- tail of {p} -----")
                print(procs.tail_file(os.path.join(rundir, p), 12))
    # The closing line, last so that CI logs end with the tally.
    print(f"\n{summary['PASS']} passed, {summary['FAIL'] + summary['ERROR']} failed, "
          f"{summary['SKIP']} skipped")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
