"""Building and starting chartcache in front of the run's Superset."""

import os
import secrets
import subprocess
import time

from . import procs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build(profile, log_path):
    """`cargo build` of the repo's binary (-j 1: the machine is shared)."""
    t0 = time.monotonic()
    argv = ["cargo", "build", "-j", "1", "--bin", "chartcache"]
    if profile == "release":
        argv.append("--release")
    procs.run(argv, log_path, cwd=REPO, timeout=3600)
    return os.path.join(REPO, "target", profile, "chartcache"), time.monotonic() - t0


def start(ps, binary, upstream, rundir, name):
    """chartcache on free loopback ports with its embedded memory store;
    returns (proc, proxy base URL, admin base URL, admin token)."""
    port, admin_port = procs.free_port(), procs.free_port()
    cfg = os.path.join(rundir, f"{name}.toml")
    with open(cfg, "w") as f:
        f.write(f'listen = "127.0.0.1:{port}"\n'
                f'admin_listen = "127.0.0.1:{admin_port}"\n'
                f'upstream = "{upstream}"\n'
                '[memory]\nmax_bytes = 268435456\n'
                '[log]\nformat = "text"\nlevel = "info"\naccess_log = true\n')
    token = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARTCACHE")}
    env["CHARTCACHE_ADMIN__TOKEN"] = token
    p = ps.start(name, [binary, "--config", cfg], env=env)
    procs.wait_http(f"http://127.0.0.1:{admin_port}/readyz", 30, p)
    return p, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}", token


def version(binary):
    try:
        return subprocess.run([binary, "--version"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except OSError as e:
        return f"unknown ({e})"
