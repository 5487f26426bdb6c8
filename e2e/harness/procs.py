"""Processes the harness starts: free loopback ports, logs under the run dir,
bounded waits, and a stop-everything-by-pid that runs even on failure."""

import os
import signal
import socket
import subprocess
import time
import urllib.request


def free_port() -> int:
    """A port the kernel hands out on loopback; closed again at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """One started process. Each runs in its own process group so that
    gunicorn's and Celery's forked children stop with their parent."""

    def __init__(self, name, argv, log_path, env=None, cwd=None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.popen = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace=10.0):
        """SIGTERM to the process group led by our pid, SIGKILL after `grace`."""
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(timeout=5)
        # Children of a group leader that already exited (e.g. prefork workers).
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()

    def tail(self, n=40) -> str:
        return tail_file(self.log_path, n)


def tail_file(path, n=40) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            lines = f.read().decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-n:])
    except OSError as e:
        return f"(no log: {e})"


class Procs:
    """Registry of everything started in a run; `stop_all` in reverse order."""

    def __init__(self, logdir):
        self.logdir = logdir
        self.items = []

    def start(self, name, argv, env=None, cwd=None) -> Proc:
        p = Proc(name, argv, os.path.join(self.logdir, f"{name}.log"), env, cwd)
        self.items.append(p)
        return p

    def stop(self, proc):
        proc.stop()
        if proc in self.items:
            self.items.remove(proc)

    def stop_all(self):
        for p in reversed(self.items):
            try:
                p.stop()
            except Exception as e:  # keep stopping the others
                print(f"stopping {p.name} (pid {p.pid}): {e}")
        self.items = []

    def print_tails(self, n=30):
        for p in self.items:
            print(f"----- tail of {p.log_path} -----")
            print(p.tail(n))


def wait_http(url, timeout, proc=None, expect=(200,)) -> float:
    """Poll `url` until it answers one of `expect`; seconds waited.
    Raises if `proc` dies or the deadline passes."""
    start = time.monotonic()
    last = None
    while time.monotonic() - start < timeout:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}) while waiting for {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status in expect:
                    return time.monotonic() - start
                last = r.status
        except Exception as e:  # not up yet
            last = e
        time.sleep(0.25)
    raise TimeoutError(f"{url} not ready after {timeout}s (last: {last})")


def wait_log(path, needle, timeout, proc=None) -> float:
    """Wait until `needle` appears in the log file at `path`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited while waiting for {needle!r}")
        try:
            with open(path, "rb") as f:
                if needle.encode() in f.read():
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{needle!r} not in {path} after {timeout}s")


def run(argv, log_path, env=None, timeout=600, cwd=None):
    """Run a command to completion with its output appended to `log_path`."""
    with open(log_path, "ab") as log:
        log.write(("\n$ " + " ".join(argv) + "\n").encode())
        log.flush()
        r = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                           timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])}... failed ({r.returncode}); see {log_path}:\n"
                           + tail_file(log_path, 30))
