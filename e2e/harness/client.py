"""A small HTTP client with a cookie jar, behaving like a browser tab towards
Superset: form login with the page's CSRF token, `session` and `async-token`
cookies, and JSON calls. Standard library only (http.client), one connection
per request, so no pooled connection ever meets gunicorn's 2 s keep-alive."""

import base64
import http.client
import json
import re
import time
import urllib.parse

TIMEOUT = 60.0


class Response:
    def __init__(self, status, headers, body, elapsed):
        self.status = status
        self.headers = headers  # list of (name, value), wire order
        self.body = body
        self.elapsed = elapsed

    def header(self, name):
        name = name.lower()
        vals = [v for k, v in self.headers if k.lower() == name]
        return ",".join(vals) if vals else None

    def json(self):
        return json.loads(self.body)


def request(base, method, path, headers=None, body=None, timeout=TIMEOUT) -> Response:
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    if isinstance(body, str):
        body = body.encode()
    t0 = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return Response(r.status, r.getheaders(), data, time.monotonic() - t0)
    finally:
        conn.close()


def jwt_payload(token):
    """Decoded (unverified) payload of a JWT: only to read our own cookie's channel."""
    try:
        part = token.split(".")[1]
        part += "=" * (-len(part) % 4)
        return json.loads(base64.urlsafe_b64decode(part))
    except (IndexError, ValueError):
        return None


class Client:
    """One browser-like login: a cookie jar bound to one base URL."""

    def __init__(self, base, name=""):
        self.base = base
        self.name = name
        self.cookies = {}
        self.bearer = None
        self.csrf = None

    def _headers(self, extra=None):
        h = {"Accept": "application/json"}
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if self.bearer:
            h["Authorization"] = f"Bearer {self.bearer}"
        if self.csrf:
            h["X-CSRFToken"] = self.csrf
            h["Referer"] = self.base + "/"
        if extra:
            h.update(extra)
        return h

    def _take_cookies(self, resp):
        for k, v in resp.headers:
            if k.lower() != "set-cookie":
                continue
            pair = v.split(";", 1)[0]
            if "=" in pair:
                name, val = pair.split("=", 1)
                if val == "" or "Max-Age=0" in v or "expires=Thu, 01 Jan 1970" in v:
                    self.cookies.pop(name.strip(), None)
                else:
                    self.cookies[name.strip()] = val

    def call(self, method, path, body=None, headers=None, timeout=TIMEOUT) -> Response:
        h = self._headers(headers)
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            h["Content-Type"] = "application/json"
        r = request(self.base, method, path, h, body, timeout)
        self._take_cookies(r)
        return r

    def login_form(self, username, password):
        """The browser's way: GET /login/, POST the form with its CSRF token."""
        r = self.call("GET", "/login/", headers={"Accept": "text/html"})
        if r.status != 200:
            raise RuntimeError(f"GET /login/ -> {r.status}")
        m = re.search(rb'name="csrf_token"[^>]*value="([^"]+)"', r.body) or re.search(
            rb'id="csrf_token"[^>]*value="([^"]+)"', r.body)
        if not m:
            raise RuntimeError("no csrf_token in the login page")
        form = urllib.parse.urlencode({
            "csrf_token": m.group(1).decode(), "username": username, "password": password})
        r = self.call("POST", "/login/", body=form, headers={
            "Content-Type": "application/x-www-form-urlencoded", "Accept": "text/html"})
        if r.status != 302 or r.header("location") not in ("/", "/superset/welcome/"):
            if r.status != 302:
                raise RuntimeError(f"POST /login/ as {username} -> {r.status}")
        # The first authenticated response sets the async-token cookie in GAQ mode.
        me = self.call("GET", "/api/v1/me/")
        if me.status != 200:
            raise RuntimeError(f"/api/v1/me/ after login as {username} -> {me.status}")
        return self

    def login_api(self, username, password):
        """Bearer token from POST /api/v1/security/login (no cookies kept)."""
        r = request(self.base, "POST", "/api/v1/security/login",
                    {"Content-Type": "application/json"},
                    json.dumps({"username": username, "password": password,
                                "provider": "db", "refresh": False}))
        if r.status != 200:
            raise RuntimeError(f"API login {username} -> {r.status} {r.body[:200]!r}")
        self.bearer = r.json()["access_token"]
        return self

    def fetch_csrf(self):
        r = self.call("GET", "/api/v1/security/csrf_token/")
        if r.status != 200:
            raise RuntimeError(f"csrf_token -> {r.status}")
        self.csrf = r.json()["result"]
        return self

    def channel(self):
        """The async channel of this login (from the async-token cookie), or None."""
        tok = self.cookies.get("async-token")
        p = jwt_payload(tok) if tok else None
        return p.get("channel") if p else None
