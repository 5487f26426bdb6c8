"""Check i: a headless Chromium dashboard load through chartcache per user,
the rendered numbers compared with the user's expected values, and the warm
load's chart-data timings (p50) through chartcache and directly."""

import json
import os
import shutil
import statistics
import subprocess

from . import objects

DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "browser")
CHROMIUM = "/usr/bin/chromium"


def ensure_deps():
    if not os.path.exists(CHROMIUM):
        raise RuntimeError("no /usr/bin/chromium: apt-get install -y chromium")
    if not shutil.which("node"):
        raise RuntimeError("no node on PATH")
    if not os.path.isdir(os.path.join(DIR, "node_modules", "playwright-core")):
        env = dict(os.environ, PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=DIR, env=env,
                       check=True, timeout=300, capture_output=True)


def run_node(base, user, password, slug, charts, outdir, loads=3, timeout_ms=60000):
    cfg = {"base": base, "user": user, "password": password, "slug": slug,
           "charts": charts, "loads": loads, "out": outdir, "chromium": CHROMIUM,
           "timeout_ms": timeout_ms}
    r = subprocess.run(["node", os.path.join(DIR, "dashboard.js"), json.dumps(cfg)],
                       capture_output=True, text=True, timeout=timeout_ms / 1000 * loads + 90)
    if r.returncode != 0 or not r.stdout.strip():
        raise RuntimeError(f"dashboard.js exited {r.returncode}: {r.stderr[-800:]}")
    return json.loads(r.stdout)


def viz_of(payload):
    """Which chart a data body belongs to, from its column names."""
    try:
        cols = set(payload["result"][0]["colnames"])
    except (KeyError, IndexError, TypeError):
        return None
    if "product" in cols:
        return "table"
    if "channel" in cols:
        return "pie"
    if "order_date" in cols:
        return "echarts_timeseries_line"
    if cols == {"SUM(revenue)"}:
        return "big_number_total"
    return None


def judge(load, exp):
    """Problems with one load (empty list: every chart rendered right)."""
    bad = []
    seen = {}
    for r in load["responses"]:
        v = viz_of(r["body"]) if r["status"] == 200 and r["body"] else None
        if v:
            seen[v] = objects.summarize(v, r["body"])
    for viz, want in exp.items():
        if viz not in seen:
            bad.append(f"no data for {viz}")
        elif seen[viz] != want:
            bad.append(f"{viz} data {seen[viz]} != {want}")
    text = (load.get("big_number") or "").replace(",", "")
    if text != str(exp["big_number_total"]):
        bad.append(f"Big Number shows {load.get('big_number')!r}, want {exp['big_number_total']:,}")
    products = sorted(row[0] for row in load.get("table_rows", []) if row)
    if products != sorted(exp["table"]):
        bad.append(f"table rows {products} != {sorted(exp['table'])}")
    if load.get("canvases", 0) < 2:
        bad.append(f"{load.get('canvases')} chart canvases (want pie and line)")
    if load.get("error_alerts"):
        bad.append(f"{load['error_alerts']} error alerts on the page")
    return bad


def p50(xs):
    return round(statistics.median(xs), 1) if xs else None


def check(env):
    ensure_deps()
    env.reset()
    exp = env.expected()
    outdir = os.path.join(env.rundir, f"browser-{env.mode}")
    os.makedirs(outdir, exist_ok=True)
    bad = []
    data = {}
    for user in objects.USERS:
        out = run_node(env.via, user, objects.PASSWORD, env.ids["slug"], len(env.charts), outdir)
        if out.get("error"):
            bad.append(f"{user}: {out['error'][:300]}")
        for load in out["loads"]:
            for problem in judge(load, exp[user]):
                bad.append(f"{user} load {load['load']}: {problem}")
        data[user] = [{k: v for k, v in load.items() if k != "responses"}
                      | {"statuses": [(r["method"], r["url"], r["status"], r["cache_status"])
                                      for r in load["responses"]]} for load in out["loads"]]
    # The same warm load straight to Superset, for comparison.
    direct = run_node(env.direct, "alice", objects.PASSWORD, env.ids["slug"], len(env.charts),
                      outdir)
    warm_via = data["alice"][-1]["post_timings_ms"] if data.get("alice") else []
    warm_direct = direct["loads"][-1]["post_timings_ms"] if direct.get("loads") else []
    timing = {"warm_post_p50_ms_via": p50(warm_via), "warm_post_p50_ms_direct": p50(warm_direct),
              "warm_ms_until_all_data_via": data.get("alice", [{}])[-1].get("ms_until_all_data"),
              "warm_ms_until_all_data_direct": (direct.get("loads") or [{}])[-1].get(
                  "ms_until_all_data")}
    data["timing"] = timing
    detail = "; ".join(bad[:5]) if bad else (
        f"alice and bob: every chart rendered their own values, 3 loads each; warm (3rd) load chart-data "
        f"POST p50 via {timing['warm_post_p50_ms_via']} ms, direct "
        f"{timing['warm_post_p50_ms_direct']} ms; screenshots in {outdir}")
    return {"check": "i", "title": "headless Chromium dashboard load renders the right numbers",
            "status": "FAIL" if bad else "PASS", "detail": detail, "data": data}
