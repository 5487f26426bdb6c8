"""Superset 6.1.0: the cached virtualenv, superset_config.py per mode, metadata
init, and the gunicorn / Celery / redis-server processes."""

import os
import secrets
import shutil
import subprocess
import sys
import time

from . import procs

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONSTRAINTS = os.path.join(HERE, "constraints-6.1.0.txt")
VENV = os.path.expanduser("~/.cache/chartcache-e2e/venv-6.1.0")
ADMIN_PASSWORD = "e2e-admin-pw"

# Redis databases on the run's own redis-server.
DB_BROKER, DB_CACHE, DB_DATA, DB_GAQ = 0, 1, 2, 3


def ensure_venv(log_path):
    """Install apache-superset==6.1.0 with the pinned constraints into the
    cached venv. Built under a temporary name and renamed when it imports,
    so a broken install is never reused. Returns (seconds, "cached"|"cold")."""
    t0 = time.monotonic()
    py = os.path.join(VENV, "bin", "python")
    if os.path.exists(py):
        return time.monotonic() - t0, "cached"
    part = VENV + ".partial"
    shutil.rmtree(part, ignore_errors=True)
    os.makedirs(os.path.dirname(VENV), exist_ok=True)
    base_py = shutil.which("python3.11") or sys.executable
    procs.run([base_py, "-m", "venv", part], log_path)
    pip = os.path.join(part, "bin", "pip")
    procs.run([pip, "install", "-q", "--upgrade", "pip", "setuptools", "wheel"], log_path, timeout=600)
    # `-r` as well as `-c`: the lock also holds packages Superset imports but does
    # not declare (its CLI imports `rich`), so the whole verified set is installed.
    procs.run([pip, "install", "-q", "apache-superset==6.1.0", "gunicorn",
               "-c", CONSTRAINTS, "-r", CONSTRAINTS], log_path, timeout=1800)
    procs.run([os.path.join(part, "bin", "python"), "-c",
               "import superset, superset.cli.main, gunicorn, celery, redis"], log_path)
    # A venv's scripts carry its path in their shebang: fix them before renaming.
    for name in os.listdir(os.path.join(part, "bin")):
        p = os.path.join(part, "bin", name)
        if not os.path.isfile(p) or os.path.islink(p):
            continue
        with open(p, "rb") as f:
            data = f.read()
        if data.startswith(b"#!") and part.encode() in data[:300]:
            with open(p, "wb") as f:
                f.write(data.replace(part.encode(), VENV.encode()))
    with open(os.path.join(part, "pyvenv.cfg")) as f:
        cfg = f.read()
    with open(os.path.join(part, "pyvenv.cfg"), "w") as f:
        f.write(cfg.replace(part, VENV))
    os.rename(part, VENV)
    return time.monotonic() - t0, "cold"


def bin_(name):
    return os.path.join(VENV, "bin", name)


CONFIG_TEMPLATE = '''# Written by the chartcache e2e harness for one run.
import os

SECRET_KEY = {secret!r}
SQLALCHEMY_DATABASE_URI = "sqlite:///{meta_db}"
PREVENT_UNSAFE_DB_CONNECTIONS = False
FAB_ADD_SECURITY_API = True
WTF_CSRF_ENABLED = True
TALISMAN_ENABLED = False
SUPERSET_WEBSERVER_TIMEOUT = 120
RATELIMIT_ENABLED = False
AUTH_RATE_LIMITED = False

_REDIS = {{"CACHE_TYPE": "RedisCache", "CACHE_REDIS_HOST": "127.0.0.1",
          "CACHE_REDIS_PORT": {redis_port}, "CACHE_DEFAULT_TIMEOUT": 86400}}
CACHE_CONFIG = dict(_REDIS, CACHE_KEY_PREFIX="e2e_cache_", CACHE_REDIS_DB={db_cache})
DATA_CACHE_CONFIG = dict(_REDIS, CACHE_KEY_PREFIX="e2e_data_", CACHE_REDIS_DB={db_data})

FEATURE_FLAGS = {{"GLOBAL_ASYNC_QUERIES": {gaq}}}
GLOBAL_ASYNC_QUERIES_TRANSPORT = "polling"
GLOBAL_ASYNC_QUERIES_JWT_SECRET = {jwt_secret!r}
GLOBAL_ASYNC_QUERIES_CACHE_BACKEND = {{
    "CACHE_TYPE": "RedisCache",
    "CACHE_REDIS_HOST": "127.0.0.1",
    "CACHE_REDIS_PORT": {redis_port},
    "CACHE_REDIS_USER": "",
    "CACHE_REDIS_PASSWORD": "",
    "CACHE_REDIS_DB": {db_gaq},
    "CACHE_DEFAULT_TIMEOUT": 300,
    "CACHE_REDIS_SSL": False,
}}


class CeleryConfig:
    broker_url = "redis://127.0.0.1:{redis_port}/{db_broker}"
    result_backend = "redis://127.0.0.1:{redis_port}/{db_broker}"
    imports = ("superset.sql_lab", "superset.tasks.async_queries")
    worker_prefetch_multiplier = 1
    task_acks_late = False


CELERY_CONFIG = CeleryConfig

_QUERY_LOG = {query_log!r}


def QUERY_LOGGER(database, query, schema=None, client=None, security_manager=None,
                 log_params=None):
    """One line per query run on a database (web and worker processes)."""
    line = " ".join(str(query).split())
    with open(_QUERY_LOG, "a") as f:
        f.write(f"{{os.getpid()}} {{line}}\\n")
'''


def write_config(path, rundir, redis_port, gaq, secret):
    text = CONFIG_TEMPLATE.format(
        secret=secret,
        meta_db=os.path.join(rundir, "superset.db"),
        redis_port=redis_port,
        db_cache=DB_CACHE, db_data=DB_DATA, db_gaq=DB_GAQ, db_broker=DB_BROKER,
        gaq="True" if gaq else "False",
        jwt_secret=secrets.token_hex(32),
        query_log=os.path.join(rundir, "queries.log"),
    )
    with open(path, "w") as f:
        f.write(text)


def env_for(config_path):
    env = dict(os.environ)
    env["SUPERSET_CONFIG_PATH"] = config_path
    env["FLASK_APP"] = "superset.app:create_app()"
    env["PYTHONUNBUFFERED"] = "1"
    env["SUPERSET_LOG_LEVEL"] = "info"
    env.pop("PYTHONPATH", None)
    env["PATH"] = os.path.join(VENV, "bin") + os.pathsep + env.get("PATH", "")
    return env


def init_metadata(env, log_path):
    """db upgrade, admin user, roles and permissions."""
    sup = bin_("superset")
    procs.run([sup, "db", "upgrade"], log_path, env=env, timeout=600)
    procs.run([sup, "fab", "create-admin", "--username", "admin", "--firstname", "Ad",
               "--lastname", "Min", "--email", "admin@example.invalid",
               "--password", ADMIN_PASSWORD], log_path, env=env, timeout=300)
    procs.run([sup, "init"], log_path, env=env, timeout=600)


def start_redis(ps, rundir):
    port = procs.free_port()
    p = ps.start("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                           "--save", "", "--appendonly", "no", "--dir", rundir])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if redis_cli(port, 0, "PING").strip() == "PONG":
            return p, port
        time.sleep(0.1)
    raise TimeoutError("redis-server did not answer PING")


def redis_cli(port, db, *args) -> str:
    r = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), "-n", str(db), *args],
                       capture_output=True, text=True, timeout=10)
    return r.stdout


def start_gunicorn(ps, env, name, workers=2, threads=8):
    port = procs.free_port()
    p = ps.start(name, [bin_("gunicorn"), "--worker-class", "gthread", "-w", str(workers),
                        "--threads", str(threads), "--timeout", "120",
                        "-b", f"127.0.0.1:{port}", "superset.app:create_app()"], env=env)
    secs = procs.wait_http(f"http://127.0.0.1:{port}/health", 120, p)
    return p, port, secs


def start_celery(ps, env, name):
    p = ps.start(name, [bin_("celery"), "--app=superset.tasks.celery_app:app", "worker",
                        "--loglevel=INFO", "--concurrency=2", "--pool=prefork",
                        "--without-gossip", "--without-mingle", "--without-heartbeat"],
                 env=env)
    secs = procs.wait_log(p.log_path, "ready.", 120, p)
    return p, secs
