"""The chart-data requests a dashboard makes, as Superset's front end makes
them: POST /api/v1/chart/data; on 202 (GLOBAL_ASYNC_QUERIES) poll the login's
own channel at /api/v1/async_event/?last_id=... until the job's event is done,
then GET its result_url. Every wait is bounded."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

POLL_INTERVAL = 0.5  # GLOBAL_ASYNC_QUERIES_POLLING_DELAY's default


class EventPoller:
    """One per login, like the front end's single polling loop: keeps last_id
    and hands each job's event to whoever waits for it."""

    def __init__(self, client):
        self.client = client
        self.last_id = None
        self.events = {}
        self.lock = threading.Lock()
        self.next_poll = 0.0
        self.polls = 0

    def wait(self, job_id, deadline):
        while time.monotonic() < deadline:
            with self.lock:
                if job_id in self.events:
                    return self.events[job_id]
                now = time.monotonic()
                if now >= self.next_poll:
                    self.next_poll = now + POLL_INTERVAL
                    path = "/api/v1/async_event/"
                    if self.last_id:
                        path += f"?last_id={self.last_id}"
                    r = self.client.call("GET", path, timeout=10)
                    self.polls += 1
                    if r.status == 200:
                        for ev in r.json().get("result", []):
                            self.last_id = ev.get("id", self.last_id)
                            if ev.get("status") in ("done", "error"):
                                self.events[ev.get("job_id")] = ev
                    if job_id in self.events:
                        return self.events[job_id]
            time.sleep(0.05)
        return None


class ChartResult:
    """What one chart's request sequence saw."""

    def __init__(self, chart):
        self.chart = chart
        self.post_status = None
        self.cache_status = None  # chartcache's Cache-Status on the POST
        self.ticket = None  # 202 body
        self.foreign_ticket = False  # 202 carried another login's channel
        self.result_url = None
        self.result_status = None
        self.result_cache_status = None
        self.payload = None  # the data body finally received
        self.error = None
        self.elapsed = 0.0

    def to_json(self):
        return {"chart": self.chart["id"], "post": self.post_status,
                "cache_status": self.cache_status, "ticket": bool(self.ticket),
                "foreign_ticket": self.foreign_ticket, "result_url": self.result_url,
                "result_status": self.result_status,
                "result_cache_status": self.result_cache_status,
                "error": self.error, "elapsed_ms": round(self.elapsed * 1000, 1)}


def chart_data(client, poller, chart, qc, wait_secs):
    """One chart's full request sequence for one login."""
    res = ChartResult(chart)
    t0 = time.monotonic()
    try:
        r = client.call("POST", chart.get("path", "/api/v1/chart/data"), qc,
                        timeout=wait_secs + 10)
        res.post_status = r.status
        res.cache_status = r.header("cache-status")
        if r.status == 200:
            res.payload = r.json()
        elif r.status == 202:
            res.ticket = r.json()
            own = client.channel()
            res.foreign_ticket = res.ticket.get("channel_id") != own
            ev = poller.wait(res.ticket.get("job_id"), t0 + wait_secs)
            if ev is None:
                res.error = "no event for the job within %ss%s" % (
                    wait_secs, " (ticket of another channel)" if res.foreign_ticket else "")
            elif ev.get("status") != "done":
                res.error = f"job {ev.get('status')}: {ev.get('errors')}"
            else:
                res.result_url = ev.get("result_url")
                g = client.call("GET", res.result_url, timeout=wait_secs)
                res.result_status = g.status
                res.result_cache_status = g.header("cache-status")
                if g.status == 200:
                    res.payload = g.json()
                else:
                    res.error = f"result_url -> {g.status}"
        else:
            res.error = f"POST -> {r.status}: {r.body[:200]!r}"
    except Exception as e:  # a failed request is a result, not a crash
        res.error = f"{type(e).__name__}: {e}"
    res.elapsed = time.monotonic() - t0
    return res


def dashboard_load(client, poller, charts, qcs, wait_secs):
    """All charts of the dashboard at once, as the browser requests them."""
    with ThreadPoolExecutor(max_workers=len(charts)) as ex:
        futs = [ex.submit(chart_data, client, poller, c, qcs[c["id"]], wait_secs)
                for c in charts]
        return [f.result() for f in futs]


def many_loads(logins, charts, qcs, wait_secs):
    """Every login opens the dashboard at the same moment (barrier start)."""
    barrier = threading.Barrier(len(logins))

    def one(lp):
        client, poller = lp
        barrier.wait(timeout=30)
        return dashboard_load(client, poller, charts, qcs, wait_secs)

    with ThreadPoolExecutor(max_workers=len(logins)) as ex:
        return list(ex.map(one, logins))


def same_request(logins, chart, qc, wait_secs):
    """Every login POSTs the identical chart-data request at the same moment."""
    barrier = threading.Barrier(len(logins))

    def one(lp):
        client, poller = lp
        barrier.wait(timeout=30)
        return chart_data(client, poller, chart, qc, wait_secs)

    with ThreadPoolExecutor(max_workers=len(logins)) as ex:
        return list(ex.map(one, logins))
