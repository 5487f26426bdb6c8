#!/usr/bin/env python3
"""Tests for deploy/helm-superset-values.yaml on Superset's chart; run by
deploy/validate.py (and standalone: python3 deploy/test_helm_values.py).

- Helm's merge rules as deploy/helm_chart.py implements them.
- The merged values give every probe exactly one handler (the chart's default
  liveness httpGet plus this file's exec was two, which the API server rejects).
- The graceful-stop wrapper in supersetNode.command runs under dash (Superset's
  /bin/sh): on SIGTERM it holds, then signals run-server.sh's whole process
  group (gunicorn is its child, not exec'd), waits for all of it (gunicorn
  outlives the shell), and exits with run-server.sh's status.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import helm_chart  # noqa: E402

import yaml  # noqa: E402

# A stand-in for run-server.sh, which runs gunicorn in the foreground without
# exec and has no trap: SIGTERM kills the shell at once while its "gunicorn"
# (which records the signal) takes 1 s to stop gracefully, as an orphan of the
# wrapper. The shell's status is then 143.
FAKE_SERVER = """#!/bin/sh
python3 -c '
import os, signal, sys, time
out = os.path.join(os.environ["OUT"], "gunicorn")
def stop(*_):
    open(out, "a").write("term\\n")
    time.sleep(1)
    open(out, "a").write("stopped\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
open(os.path.join(os.environ["OUT"], "ready"), "w").write("1")
while True: time.sleep(0.1)
'
"""


def as_pid1():
    """In the container the wrapper is PID 1 and adopts gunicorn when the shell
    dies; a child subreaper gets the same orphans here (kept across exec)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def load(path):
    with open(path) as f:
        return yaml.safe_load(f)


class HelmMerge(unittest.TestCase):
    def test_maps_merge_null_deletes_lists_replace(self):
        base = {"a": {"x": 1, "y": {"z": 2}}, "l": [1, 2], "k": 1}
        over = {"a": {"y": {"w": 3}, "x": None}, "l": [3], "k": None}
        self.assertEqual(helm_chart.helm_merge(base, over), {"a": {"y": {"z": 2, "w": 3}}, "l": [3]})

    def test_previous_values_had_two_liveness_handlers(self):
        # The failure this guards against: without `httpGet: null` the chart's
        # default handler survives the merge.
        vals = load(helm_chart.VALUES)
        del vals["supersetNode"]["livenessProbe"]["httpGet"]
        merged = helm_chart.helm_merge(load(helm_chart.DEFAULTS), vals)
        pod = helm_chart.render_deployment(merged)["spec"]["template"]["spec"]
        self.assertTrue(any("livenessProbe has 2 handlers" in p for p in helm_chart.probe_problems(pod)))

    def test_values_render_one_handler_per_probe(self):
        pod = helm_chart.render_deployment(helm_chart.merged_values())["spec"]["template"]["spec"]
        self.assertEqual(helm_chart.probe_problems(pod), [])
        self.assertEqual(helm_chart.unique_names(pod), [])
        names = [c["name"] for c in pod["containers"]]
        self.assertEqual(names, ["superset", "chartcache"])
        superset = pod["containers"][0]
        self.assertIn("exec", superset["livenessProbe"])
        self.assertIn("httpGet", superset["readinessProbe"])


def wrapper_script(hold_secs: int, server: str) -> str:
    vals = load(helm_chart.VALUES)
    cmd = vals["supersetNode"]["command"]
    assert cmd[:2] == ["/bin/sh", "-c"], cmd
    s = cmd[2]
    boot = ". {{ .Values.configMountPath }}/superset_bootstrap.sh"
    assert boot in s and "/usr/bin/run-server.sh" in s and "sleep 25" in s, s
    return (s.replace(boot, ":").replace("/usr/bin/run-server.sh", server)
            .replace("sleep 25", f"sleep {hold_secs}"))


@unittest.skipUnless(shutil.which("setsid"), "setsid (util-linux) missing")
class GracefulStopUnderDash(unittest.TestCase):
    def test_sigterm_reaches_gunicorn_and_status_is_kept(self):
        dash = shutil.which("dash")
        self.assertIsNotNone(dash, "dash missing: apt-get install -y dash (it is /bin/sh in Superset's image)")
        with tempfile.TemporaryDirectory() as out:
            server = os.path.join(out, "run-server.sh")
            open(server, "w").write(FAKE_SERVER)
            os.chmod(server, 0o755)
            # Its own session, like PID 1 in the container: nothing else in its group.
            p = subprocess.Popen([dash, "-c", wrapper_script(1, server)], env={**os.environ, "OUT": out},
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                 preexec_fn=as_pid1)
            try:
                deadline = time.monotonic() + 10
                while not os.path.exists(os.path.join(out, "ready")):
                    self.assertLess(time.monotonic(), deadline, "fake server never started")
                    time.sleep(0.05)
                t0 = time.monotonic()
                p.send_signal(signal.SIGTERM)
                _, err = p.communicate(timeout=15)
                took = time.monotonic() - t0
            finally:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
            err = err.decode()
            self.assertNotIn("Illegal number", err)
            self.assertNotIn("can't access tty", err)
            # gunicorn (the grandchild) got SIGTERM and finished before the wrapper left.
            self.assertEqual(open(os.path.join(out, "gunicorn")).read(), "term\nstopped\n")
            # run-server.sh's own status: killed by SIGTERM, as sh reports it.
            self.assertEqual(p.returncode, 128 + signal.SIGTERM, err)
            self.assertGreaterEqual(took, 1.0)  # the hold: Superset keeps serving first


def run() -> tuple[int, list[str]]:
    """(tests run, failure descriptions), for deploy/validate.py."""
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__])
    res = unittest.TestResult()
    suite.run(res)
    fails = [f"{t.id()}: {tb.strip().splitlines()[-1]}" for t, tb in res.failures + res.errors]
    fails += [f"{t.id()}: skipped: {why}" for t, why in res.skipped]
    return res.testsRun, fails


if __name__ == "__main__":
    unittest.main()
