"""The checks of one mode. Each returns a list of results:
{"check", "title", "status": PASS|FAIL|SKIP, "detail", "data"}."""

from concurrent.futures import ThreadPoolExecutor

from . import flow, objects

USERS = list(objects.USERS)
STAMPEDE = 20


def result(check, title, ok, detail, data=None, skip=False):
    status = "SKIP" if skip else ("PASS" if ok else "FAIL")
    return {"check": check, "title": title, "status": status, "detail": detail,
            "data": data or {}}


def _hit(cs):
    return bool(cs) and "; hit" in cs and "detail=stale" not in cs


def _summary_ok(env, exp, user, res):
    return objects.summarize(res.chart["viz"], res.payload) == exp[user][res.chart["viz"]]


def logins(env, user, via, n):
    with ThreadPoolExecutor(max_workers=min(n, 8)) as ex:
        return list(ex.map(lambda _: env.login(user, via), range(n)))


# ---- a, b, c: repeated dashboard loads per user, compared with Superset directly ----

def check_loads(env, nloads=4):
    env.reset()
    exp = env.expected()
    if exp["alice"] == exp["bob"]:
        raise RuntimeError("the data set gives alice and bob the same answers")
    via = {u: env.login(u, True) for u in USERS}
    direct = {u: env.login(u, False) for u in USERS}
    loads = {u: [] for u in USERS}
    for _ in range(nloads):
        for u in USERS:  # alternate users on identical requests: a shared key would show
            loads[u].append(flow.dashboard_load(*via[u], env.charts, env.qcs, env.wait_secs))
    ref = {u: flow.dashboard_load(*direct[u], env.charts, env.qcs, env.wait_secs)
           for u in USERS}

    # a. rows through chartcache == rows from Superset directly
    bad_a = []
    for u in USERS:
        want = {r.chart["id"]: objects.rows_of(r.payload) for r in ref[u]}
        for r in ref[u]:
            if r.payload is None:
                bad_a.append(f"{u} direct chart {r.chart['id']}: {r.error}")
        for n, load in enumerate(loads[u], 1):
            for r in load:
                if r.payload is None:
                    bad_a.append(f"{u} load {n} chart {r.chart['id']}: {r.error}")
                elif objects.rows_of(r.payload) != want[r.chart["id"]]:
                    bad_a.append(f"{u} load {n} chart {r.chart['id']}: rows differ")
    # b. nobody gets another user's rows (each answer equals its own expected values)
    bad_b = []
    for u in USERS:
        for n, load in enumerate(loads[u] + [ref[u]], 1):
            for r in load:
                if r.payload is not None and not _summary_ok(env, exp, u, r):
                    other = [o for o in USERS if o != u and objects.summarize(
                        r.chart["viz"], r.payload) == exp[o][r.chart["viz"]]]
                    bad_b.append(f"{u} load {n} chart {r.chart['id']}: "
                                 + (f"got {other[0]}'s rows" if other else "wrong values"))
    # c. the hit/miss sequence per load
    seq = {u: [[r.cache_status for r in load] for load in loads[u]] for u in USERS}
    posts = {u: [[r.post_status for r in load] for load in loads[u]] for u in USERS}
    first_hit = {}
    for u in USERS:
        first_hit[u] = next((n for n, load in enumerate(loads[u], 1)
                             if all(r.post_status == 200 and _hit(r.cache_status)
                                    for r in load)), None)
    bad_c = []
    for u in USERS:
        l1, l2 = loads[u][0], loads[u][1]
        if env.gaq:
            if not all(r.post_status == 202 and "detail=async-202" in (r.cache_status or "")
                       for r in l1):
                bad_c.append(f"{u} load 1: {posts[u][0]} {seq[u][0]} (want 202 async-202)")
        elif not all(r.post_status == 200 and "fwd=miss" in (r.cache_status or "")
                     and "stored" in r.cache_status for r in l1):
            bad_c.append(f"{u} load 1: {seq[u][0]} (want fwd=miss; stored)")
        if not all(r.post_status == 200 and _hit(r.cache_status) for r in l2):
            bad_c.append(f"{u} load 2: {posts[u][1]} {seq[u][1]} (want all 200 hits)")
    data = {"cache_status": seq, "post_status": posts, "first_all_hit_load": first_hit,
            "loads": {u: [[r.to_json() for r in load] for load in loads[u]] for u in USERS}}
    want_c = ("load 1: 202 (detail=async-202), load 2: all 200 hits" if env.gaq
              else "load 1: miss (stored), load 2: all hits")
    return [
        result("a", "answers through chartcache equal direct answers", not bad_a,
               "; ".join(bad_a[:6]) or f"{len(USERS)} users x {nloads} loads x "
               f"{len(env.charts)} charts equal"),
        result("b", "no user gets another user's rows", not bad_b,
               "; ".join(bad_b[:6]) or "every answer equals its user's RLS rows"),
        result("c", "hit/miss sequence per dashboard load", not bad_c,
               ("; ".join(bad_c[:4]) + f" | first all-hit load: {first_hit}") if bad_c
               else f"{want_c}; first all-hit load: {first_hit}", data),
    ]


# ---- d: 20 logins of one user, one identical request at once, cold cache ----

def check_stampede(env):
    table = next(c for c in env.charts if c["viz"] == "table")
    qc = env.qcs[table["id"]]
    exp = env.expected()
    out = {}
    for via in (False, True):
        ls = logins(env, "alice", via, STAMPEDE)
        env.reset()
        env.quiesce(5, 0.5)
        m = env.mark()
        res = flow.same_request(ls, table, qc, env.wait_secs)
        env.quiesce()
        sql, jobs = env.counts_since(m)
        got = sum(1 for r in res if r.payload is not None and _summary_ok(env, exp, "alice", r))
        foreign = sum(1 for r in res if r.foreign_ticket)
        out["via" if via else "direct"] = {
            "sql": sql, "jobs": jobs, "got_data": got, "foreign_tickets": foreign,
            "posts": _tally(r.post_status for r in res),
            "cache_status": _tally(_short(r.cache_status) for r in res),
            "max_ms": round(max(r.elapsed for r in res) * 1000),
            "errors": sorted({r.error for r in res if r.error})[:3]}
    v = out["via"]
    n_ok = (v["jobs"] == 1) if env.gaq else (v["sql"] == 1)
    ok = n_ok and v["got_data"] == STAMPEDE and v["foreign_tickets"] == 0
    unit = "Celery job" if env.gaq else "SQL query"
    detail = (f"via chartcache: {v['jobs'] if env.gaq else v['sql']} x {unit}, "
              f"{v['got_data']}/{STAMPEDE} got their data, {v['foreign_tickets']} tickets of "
              f"another channel, posts {v['posts']}; direct: "
              f"{out['direct']['jobs'] if env.gaq else out['direct']['sql']} x {unit}")
    if v["errors"]:
        detail += f"; errors: {v['errors']}"
    return [result("d", f"{STAMPEDE}-session stampede: 1 upstream {unit}, all get data",
                   ok, detail, out)]


# ---- e: forced refresh, then the next plain POST returns the new data ----

def check_force(env):
    env.reset()
    big = next(c for c in env.charts if c["viz"] == "big_number_total")
    qc = env.qcs[big["id"]]
    forced_qc = dict(qc, force=True)
    client, poller = env.login("alice", True)
    warm = [flow.chart_data(client, poller, big, qc, env.wait_secs) for _ in range(3)]
    before = objects.summarize("big_number_total", warm[-1].payload)
    objects.insert_row(env.data_db, "north", 100000)
    new_total = env.expected()["alice"]["big_number_total"]
    f = flow.chart_data(client, poller, big, forced_qc, env.wait_secs)
    after = flow.chart_data(client, poller, big, qc, env.wait_secs)
    got_f = objects.summarize("big_number_total", f.payload)
    got_a = objects.summarize("big_number_total", after.payload)
    ok = got_a == new_total and got_f == new_total and (f.post_status == 202 or not env.gaq)
    detail = (f"before {before}, new {new_total}; forced POST {f.post_status} "
              f"[{_short(f.cache_status)}] -> {got_f}; next POST {after.post_status} "
              f"[{_short(after.cache_status)}] -> {got_a}")
    return [result("e", "forced refresh, then the next POST has the new data", ok, detail,
                   {"warm": [r.to_json() for r in warm], "forced": f.to_json(),
                    "after": after.to_json()})]


# ---- f: the same result_url fetched by alice and bob ----

def check_result_url(env):
    if not env.gaq:
        return [result("f", "result_url GETs per user", True, "GAQ mode only", skip=True)]
    env.reset()
    exp = env.expected()
    table = next(c for c in env.charts if c["viz"] == "table")
    qc = env.qcs[table["id"]]
    lp = {u: env.login(u, True) for u in USERS}
    first = {u: flow.chart_data(*lp[u], table, qc, env.wait_secs) for u in USERS}
    urls = {u: first[u].result_url for u in USERS}
    if not all(urls.values()):
        return [result("f", "result_url GETs per user", False,
                       f"no result_url for someone: { {u: first[u].to_json() for u in USERS} }")]
    bad = []
    seen = []
    for round_ in range(2):  # each user GETs every user's result_url, twice, interleaved
        for url in sorted(set(urls.values())):
            for u in (USERS if round_ == 0 else USERS[::-1]):
                r = lp[u][0].call("GET", url)
                s = objects.summarize("table", r.json()) if r.status == 200 else None
                seen.append({"user": u, "status": r.status, "cache_status": r.header("cache-status")})
                if s != exp[u]["table"]:
                    bad.append(f"{u} GET {url[-12:]} -> {r.status} "
                               + ("another user's rows" if s is not None else "no data"))
    same = len(set(urls.values())) == 1
    return [result("f", "result_url GETs per user", not bad,
                   "; ".join(bad[:4]) or f"{len(seen)} GETs, each user got own rows "
                   f"(result_url shared by both users: {same})", {"gets": seen})]


# ---- g: a Bearer-token client without the async-token cookie ----

def check_bearer(env):
    from .client import Client
    env.reset()
    big = next(c for c in env.charts if c["viz"] == "big_number_total")
    qc = env.qcs[big["id"]]
    out = {}
    for via in (False, True):
        c = Client(env.base(via)).login_api("alice", objects.PASSWORD)
        r = c.call("POST", big["path"], qc)
        out["via" if via else "direct"] = {"status": r.status,
                                           "cache_status": r.header("cache-status")}
    want = 401 if env.gaq else 200
    ok = out["direct"]["status"] == want and out["via"]["status"] == want
    return [result("g", "Bearer client without async-token: Superset's answer on a miss",
                   ok, f"direct {out['direct']['status']}, via {out['via']['status']} "
                   f"[{_short(out['via']['cache_status'])}] (want {want})", out)]


# ---- h: SQL queries and Celery jobs per dashboard view ----

def check_counts(env):
    exp = env.expected()
    rows = {}
    pool = {via: logins(env, "alice", via, STAMPEDE) for via in (False, True)}
    bad = []
    for n in (1, STAMPEDE):
        for via in (False, True):
            ls = pool[via][:n]
            env.reset()
            env.quiesce(5, 0.5)
            m = env.mark()
            loads = flow.many_loads(ls, env.charts, env.qcs, env.wait_secs)
            env.quiesce()
            sql, jobs = env.counts_since(m)
            got = sum(1 for load in loads for r in load
                      if r.payload is not None and _summary_ok(env, exp, "alice", r))
            # POSTs that reached Superset (chartcache's coalesced followers did not).
            upstream = sum(1 for load in loads for r in load
                           if not _hit(r.cache_status) and "collapsed" not in (r.cache_status or ""))
            entry = {"sql": sql, "jobs": jobs, "upstream_posts": upstream,
                     "charts_with_data": got, "charts_requested": n * len(env.charts)}
            if n == 1:  # a second, warm view by the same login
                m = env.mark()
                load = flow.dashboard_load(*ls[0], env.charts, env.qcs, env.wait_secs)
                env.quiesce(10, 1.0)
                entry["warm_sql"], entry["warm_jobs"] = env.counts_since(m)
                entry["warm_hits"] = sum(1 for r in load if _hit(r.cache_status))
            rows[f"{n}x{'via' if via else 'direct'}"] = entry
            if got != n * len(env.charts):
                bad.append(f"{n} sessions {'via' if via else 'direct'}: "
                           f"{got}/{n * len(env.charts)} charts got their data")
    for n in (1, STAMPEDE):
        v = rows[f"{n}xvia"]
        upstream = v["jobs"] if env.gaq else v["sql"]
        if upstream > len(env.charts):
            bad.append(f"{n} sessions via: {upstream} upstream queries for "
                       f"{len(env.charts)} charts")
    detail = ", ".join(f"{k}: sql={v['sql']} jobs={v['jobs']}" for k, v in rows.items())
    if bad:
        detail = "; ".join(bad[:4]) + " | " + detail
    return [result("h", "queries per dashboard view (1 and 20 sessions, direct vs via)",
                   not bad, detail, rows)]


def _tally(items):
    t = {}
    for i in items:
        t[str(i)] = t.get(str(i), 0) + 1
    return t


def _short(cs):
    return (cs or "-").replace("chartcache; ", "")


CHECKS = {"loads": check_loads, "result_url": check_result_url, "bearer": check_bearer,
          "stampede": check_stampede, "counts": check_counts, "force": check_force}
# Order matters only for `force`, which changes the data: it runs last.
ORDER = ["loads", "result_url", "bearer", "stampede", "counts", "force"]
