"""What the checks of one mode share: the two base URLs (Superset directly and
through chartcache), logins, the cold-cache reset, and the counters of SQL
queries (QUERY_LOGGER's file) and Celery jobs (the worker's log)."""

import json
import os
import time
import urllib.request

from . import objects, superset
from .flow import EventPoller
from .client import Client


class Env:
    def __init__(self, mode, direct, via, admin_base, admin_token, redis_port, rundir, ids,
                 data_db, worker_log, wait_secs):
        self.mode = mode
        self.gaq = mode == "gaq"
        self.direct = direct
        self.via = via
        self.admin_base = admin_base
        self.admin_token = admin_token
        self.redis_port = redis_port
        self.rundir = rundir
        self.ids = ids
        self.data_db = data_db
        self.query_log = os.path.join(rundir, "queries.log")
        self.worker_log = worker_log
        self.wait_secs = wait_secs
        # The URL the dashboard's front end POSTs each chart's query context to.
        self.charts = [dict(c, path="/api/v1/chart/data?form_data=%7B%22slice_id%22%3A"
                                    f"{c['id']}%7D&dashboard_id={ids['dashboard']}")
                       for c in ids["charts"]]
        self.qcs = {c["id"]: objects.query_context(ids["dataset"], c["form_data"])
                    for c in self.charts}

    def base(self, via):
        return self.via if via else self.direct

    def login(self, user, via, password=None):
        """A fresh browser-like login (its own session and async channel)."""
        c = Client(self.base(via), f"{user}@{'via' if via else 'direct'}")
        c.login_form(user, password or objects.PASSWORD)
        return c, EventPoller(c)

    def expected(self):
        return {u: objects.expected(self.data_db, r) for u, r in objects.USERS.items()}

    def reset(self):
        """Cold caches: Superset's data and query-context caches, chartcache's store."""
        for db in (superset.DB_CACHE, superset.DB_DATA):
            superset.redis_cli(self.redis_port, db, "FLUSHDB")
        req = urllib.request.Request(
            self.admin_base + "/purge", data=json.dumps({"all": True}).encode(),
            headers={"Authorization": f"Bearer {self.admin_token}",
                     "Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            if r.status != 200:
                raise RuntimeError(f"chartcache purge -> {r.status}")

    # ---- counters ----

    def mark(self):
        return (_size(self.query_log), _size(self.worker_log) if self.worker_log else 0)

    def quiesce(self, max_secs=20.0, still=1.5):
        """Wait until no new query or job lines for `still` seconds (bounded)."""
        end = time.monotonic() + max_secs
        last, since = self.mark(), time.monotonic()
        while time.monotonic() < end:
            time.sleep(0.25)
            now = self.mark()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= still:
                return

    def counts_since(self, mark):
        """(SQL queries on the sales table, Celery chart-data jobs that succeeded)."""
        sql = sum(1 for line in _read_from(self.query_log, mark[0]).splitlines()
                  if "sales" in line.lower())
        jobs = 0
        if self.worker_log:
            jobs = sum(1 for line in _read_from(self.worker_log, mark[1]).splitlines()
                       if "load_chart_data_into_cache[" in line and "succeeded" in line)
        return sql, jobs


def _size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _read_from(path, offset):
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""
