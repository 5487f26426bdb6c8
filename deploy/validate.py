#!/usr/bin/env python3
"""Checks for deploy/: called by deploy/validate.sh (which installs what it needs).

1. Renders every Kustomize directory (base and overlays) with `kubectl kustomize`.
2. Validates every rendered object against the Kubernetes JSON schemas
   (kubernetes-validate, strict: unknown fields fail) for each version in
   K8S_VERSIONS. ServiceMonitor and PrometheusRule are CRDs outside those
   schemas: their required structure is checked here instead.
3. Checks what schemas cannot: chartcache's pod hardening, probes, shutdown
   timing, Service/ServiceMonitor port names, HPA targets, ConfigMap and Secret
   references, no literal secrets, and Redis wherever more than one replica
   of chartcache can run (memory-only replicas miss each other's purges).
4. Checks that the Grafana dashboard parses and that every metric it, the
   PrometheusRule, the prometheus-adapter rules and KEDA's queries use is one
   that src/metrics.rs defines (or a process_* one), with label names the
   metric has (read for every metric from its registration); runs
   `promtool check rules` and the rule unit tests (`promtool test rules`
   deploy/prometheusrule_test.yaml, deploy/prometheusrule_week_test.yaml) on
   the rendered PrometheusRule, checks every alert's runbook_url anchor
   against deploy/README.md, and that the dashboard ships as a ConfigMap
   for Grafana's sidecar.
5. If a chartcache binary is available (CHARTCACHE_BIN, else target/debug or
   target/release), runs `chartcache check-config` on the config each rendered
   chartcache container would load (ConfigMap + literal CHARTCACHE_* env + args),
   and on the config in deploy/helm-superset-values.yaml.
6. Scaling: exactly one of HPA or KEDA ScaledObject targets each Deployment
   without spec.replicas (none with it); ScaledObjects are checked field by
   field (no schema for KEDA's CRD here); the HPA's Pods metric is one the
   prometheus-adapter rules serve; every chartcache container has a CPU limit
   or server.worker_threads.
7. Merges deploy/helm-superset-values.yaml over Superset's chart defaults
   (deploy/testdata/superset-chart-defaults.yaml) with Helm's rules, renders the
   chart's web Deployment from it (deploy/helm_chart.py), checks one handler per
   probe and the schemas, and runs deploy/test_helm_values.py (the graceful-stop
   wrapper under dash).
8. Checks the Dockerfile statically (multi-stage, numeric non-root USER,
   ENTRYPOINT, EXPOSE, COPY sources exist).

Exit status 0 only if every check passed. Needs no network.
"""

from __future__ import annotations

import contextlib
import copy
import glob
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DEPLOY = os.path.join(ROOT, "deploy")
# Oldest and newest Kubernetes minor validated. 1.30 is the floor: the preStop
# `sleep` action (no shell needed in the image) is on by default from 1.30.
K8S_VERSIONS = os.environ.get("K8S_VERSIONS", "1.30.0 1.35.0").split()
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
}
# Where the alerts' runbooks live; runbook_url anchors must be headings there.
RUNBOOKS = os.path.join(ROOT, "deploy", "README.md")
RULE_TESTS = ["prometheusrule_test.yaml", "prometheusrule_week_test.yaml"]
# Labels Prometheus attaches at scrape time (target labels) or that histograms carry.
TARGET_LABELS = {
    "namespace", "pod", "job", "instance", "service", "container", "endpoint",
    "node", "le", "__name__",
}
PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed: list[str] = []
        self.notes: list[str] = []

    def check(self, ok: bool, what: str) -> bool:
        if ok:
            self.passed += 1
        else:
            self.failed.append(what)
            print(f"FAIL {what}")
        return ok

    def note(self, what: str) -> None:
        self.notes.append(what)
        print(f"note {what}")


R = Report()


# ---------------------------------------------------------------- rendering

def kustomize_dirs() -> list[str]:
    dirs = [os.path.join(DEPLOY, "base")]
    dirs += sorted(
        os.path.dirname(p)
        for p in glob.glob(os.path.join(DEPLOY, "overlays", "*", "kustomization.yaml"))
    )
    return dirs


def render(d: str) -> list[dict] | None:
    rel = os.path.relpath(d, ROOT)
    p = subprocess.run(
        ["kubectl", "kustomize", d], capture_output=True, text=True, timeout=60
    )
    if not R.check(p.returncode == 0, f"{rel}: kubectl kustomize: {p.stderr.strip()}"):
        return None
    docs = [x for x in yaml.safe_load_all(p.stdout) if x]
    R.check(len(docs) > 0, f"{rel}: renders no objects")
    return docs


def ident(o: dict) -> str:
    m = o.get("metadata", {})
    ns = m.get("namespace")
    return f"{o.get('kind')}/{(ns + '/') if ns else ''}{m.get('name')}"


# ---------------------------------------------------------------- schemas

def validate_schema(rel: str, o: dict) -> None:
    import kubernetes_validate

    key = (o.get("apiVersion"), o.get("kind"))
    if key in CRD_KINDS:
        if o["kind"] == "ServiceMonitor":
            check_servicemonitor_shape(rel, o)
        elif o["kind"] == "ScaledObject":
            check_scaledobject_shape(rel, o)
        else:
            check_prometheusrule_shape(rel, o)
        return
    for v in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(o, v, strict=True)
            R.check(True, "")
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(x) for x in e.path)
            R.check(False, f"{rel}: {ident(o)} (k8s {v}): {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError:
            R.check(False, f"{rel}: {ident(o)}: no schema for {key} in k8s {v}")


DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def check_servicemonitor_shape(rel: str, o: dict) -> None:
    spec = o.get("spec") or {}
    where = f"{rel}: {ident(o)}"
    R.check(isinstance(spec.get("selector"), dict), f"{where}: spec.selector missing")
    eps = spec.get("endpoints")
    if not R.check(isinstance(eps, list) and eps, f"{where}: spec.endpoints missing"):
        return
    for i, ep in enumerate(eps):
        R.check(
            bool(ep.get("port") or ep.get("targetPort")),
            f"{where}: endpoints[{i}] needs port or targetPort",
        )
        for f in ("interval", "scrapeTimeout"):
            if f in ep:
                R.check(bool(DURATION.match(str(ep[f]))), f"{where}: endpoints[{i}].{f} {ep[f]!r}")
        known = {"port", "targetPort", "path", "interval", "scrapeTimeout", "scheme",
                 "honorLabels", "relabelings", "metricRelabelings", "tlsConfig",
                 "bearerTokenSecret", "authorization", "params", "followRedirects"}
        extra = set(ep) - known
        R.check(not extra, f"{where}: endpoints[{i}] unknown fields {sorted(extra)}")


def check_prometheusrule_shape(rel: str, o: dict) -> None:
    where = f"{rel}: {ident(o)}"
    groups = (o.get("spec") or {}).get("groups")
    if not R.check(isinstance(groups, list) and groups, f"{where}: spec.groups missing"):
        return
    names = [g.get("name") for g in groups]
    R.check(len(set(names)) == len(names) and all(names), f"{where}: group names missing or repeated")
    for g in groups:
        rules = g.get("rules")
        if not R.check(isinstance(rules, list) and rules, f"{where}: group {g.get('name')} has no rules"):
            continue
        for r in rules:
            tag = r.get("alert") or r.get("record")
            R.check(
                ("alert" in r) != ("record" in r),
                f"{where}: rule {tag}: exactly one of alert/record",
            )
            R.check(isinstance(r.get("expr"), str) and r["expr"].strip(), f"{where}: rule {tag}: expr")
            if "for" in r:
                R.check(bool(DURATION.match(str(r["for"]))), f"{where}: rule {tag}: for {r['for']!r}")
            if "alert" in r:
                R.check(
                    (r.get("labels") or {}).get("severity") in ("critical", "warning", "info"),
                    f"{where}: alert {tag}: labels.severity must be critical|warning|info",
                )
                R.check(bool((r.get("annotations") or {}).get("summary")), f"{where}: alert {tag}: annotations.summary")
                check_runbook(where, tag, (r.get("annotations") or {}).get("runbook_url"))
            else:
                R.check(":" in r["record"], f"{where}: record {tag}: use level:metric:operations naming")


def github_anchor(heading: str) -> str:
    """The anchor GitHub/GitLab give a Markdown heading."""
    a = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return a.replace(" ", "-")


def check_runbook(where: str, alert: str, url: str | None) -> None:
    """runbook_url points at a heading of deploy/README.md that exists."""
    if not R.check(isinstance(url, str) and url.startswith("https://"),
                   f"{where}: alert {alert}: annotations.runbook_url (https) missing"):
        return
    path, _, anchor = url.partition("#")
    R.check(path.endswith("/deploy/README.md") and bool(anchor),
            f"{where}: alert {alert}: runbook_url must be .../deploy/README.md#<anchor>: {url}")
    headings = [l.lstrip("#").strip() for l in open(RUNBOOKS) if re.match(r"#{2,4} ", l)]
    R.check(anchor in {github_anchor(h) for h in headings},
            f"{where}: alert {alert}: runbook_url anchor #{anchor} is no heading of deploy/README.md")
    R.check(anchor == alert.lower(), f"{where}: alert {alert}: runbook anchor should be #{alert.lower()}")


KEDA_SO_FIELDS = {"scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval",
                  "cooldownPeriod", "idleReplicaCount", "advanced", "triggers", "fallback",
                  "initialCooldownPeriod"}
KEDA_TRIGGER_FIELDS = {"type", "name", "metadata", "metricType", "authenticationRef", "useCachedMetrics"}


def check_scaledobject_shape(rel: str, o: dict) -> None:
    """KEDA's ScaledObject (keda.sh/v1alpha1), which kubernetes-validate does
    not know: the fields KEDA reads, with the types it accepts."""
    where = f"{rel}: {ident(o)}"
    spec = o.get("spec") or {}
    extra = set(spec) - KEDA_SO_FIELDS
    R.check(not extra, f"{where}: unknown spec fields {sorted(extra)}")
    ref = spec.get("scaleTargetRef") or {}
    R.check(isinstance(ref.get("name"), str) and ref["name"], f"{where}: spec.scaleTargetRef.name missing")
    R.check(ref.get("kind", "Deployment") == "Deployment" and ref.get("apiVersion", "apps/v1") == "apps/v1",
            f"{where}: scaleTargetRef must be an apps/v1 Deployment")
    lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    R.check(isinstance(lo, int) and isinstance(hi, int) and 2 <= lo <= hi,
            f"{where}: 2 <= minReplicaCount ({lo}) <= maxReplicaCount ({hi}) (PDB, rolling restarts)")
    for f in ("pollingInterval", "cooldownPeriod"):
        if f in spec:
            R.check(isinstance(spec[f], int) and spec[f] > 0, f"{where}: spec.{f} must be a positive integer")
    triggers = spec.get("triggers")
    if not R.check(isinstance(triggers, list) and triggers, f"{where}: spec.triggers missing"):
        return
    names = [t.get("name") for t in triggers if t.get("name")]
    R.check(len(names) == len(set(names)), f"{where}: trigger names repeat")
    prom = 0
    for i, t in enumerate(triggers):
        w = f"{where}: triggers[{i}]"
        extra = set(t) - KEDA_TRIGGER_FIELDS
        R.check(not extra, f"{w}: unknown fields {sorted(extra)}")
        md = t.get("metadata") or {}
        R.check(all(isinstance(v, str) for v in md.values()), f"{w}: metadata values must be strings (KEDA: map[string]string)")
        if t.get("type") == "prometheus":
            prom += 1
            R.check(t.get("metricType", "AverageValue") in ("AverageValue", "Value"),
                    f"{w}: prometheus metricType must be AverageValue or Value")
            R.check(str(md.get("serverAddress", "")).startswith(("http://", "https://")),
                    f"{w}: metadata.serverAddress (http(s) URL) missing")
            q = md.get("query")
            if R.check(isinstance(q, str) and q.strip(), f"{w}: metadata.query missing"):
                R.check(balanced(q), f"{w}: query has unbalanced brackets or quotes")
            try:
                R.check(float(md.get("threshold")) > 0, f"{w}: metadata.threshold must be > 0")
            except (TypeError, ValueError):
                R.check(False, f"{w}: metadata.threshold must be a number in a string")
        elif t.get("type") in ("cpu", "memory"):
            R.check(t.get("metricType") in ("Utilization", "AverageValue"), f"{w}: {t['type']} metricType")
            R.check(str(md.get("value", "")).isdigit(), f"{w}: metadata.value must be a number in a string")
        else:
            R.check(False, f"{w}: trigger type {t.get('type')!r} not expected here (prometheus, cpu, memory)")
    R.check(prom >= 1, f"{where}: needs a prometheus trigger (request rate)")


def scalers(docs: list[dict]) -> dict[tuple[str, str], list[str]]:
    """(kind, name) of each scaled workload -> the HPAs/ScaledObjects targeting it."""
    out: dict[tuple[str, str], list[str]] = {}
    for o in docs:
        if o.get("kind") == "HorizontalPodAutoscaler":
            ref = o["spec"]["scaleTargetRef"]
            out.setdefault((ref.get("kind"), ref.get("name")), []).append(ident(o))
        elif o.get("kind") == "ScaledObject":
            ref = (o.get("spec") or {}).get("scaleTargetRef") or {}
            out.setdefault((ref.get("kind", "Deployment"), ref.get("name")), []).append(ident(o))
    return out


def max_replicas(docs: list[dict], kind: str, name: str) -> int:
    most = 1
    for o in docs:
        spec = o.get("spec") or {}
        if o.get("kind") == "HorizontalPodAutoscaler" and spec["scaleTargetRef"].get("name") == name:
            most = max(most, spec.get("maxReplicas", 1))
        if o.get("kind") == "ScaledObject" and (spec.get("scaleTargetRef") or {}).get("name") == name:
            most = max(most, spec.get("maxReplicaCount", 100))
    return most


def check_one_scaler(rel: str, docs: list[dict]) -> None:
    """Each Deployment is scaled by exactly one of an HPA or a ScaledObject
    (two controllers fighting over spec.replicas flap it), unless it sets
    spec.replicas itself (then by none). Every scaler targets a rendered one."""
    by = scalers(docs)
    deps = {("Deployment", o["metadata"]["name"]): o for o in docs if o.get("kind") == "Deployment"}
    for key, o in deps.items():
        n = len(by.get(key, []))
        if "replicas" in o["spec"]:
            R.check(n == 0, f"{rel}: {ident(o)}: sets spec.replicas and is scaled by {by.get(key)}")
        else:
            R.check(n == 1, f"{rel}: {ident(o)}: scaled by {n} of HPA/ScaledObject {by.get(key, [])}, expected exactly one")
    for key, who in by.items():
        R.check(key in deps, f"{rel}: {who}: scaleTargetRef {key[0]}/{key[1]} not rendered")
    for o in docs:
        if o.get("kind") != "ScaledObject":
            continue
        ns = o["metadata"].get("namespace")
        for t in o["spec"].get("triggers", []):
            q = (t.get("metadata") or {}).get("query", "")
            for m in re.finditer(r'namespace\s*=\s*"([^"]*)"', q):
                R.check(ns == m.group(1),
                        f"{rel}: {ident(o)}: trigger {t.get('name')} queries namespace {m.group(1)!r} "
                        f"but is rendered in {ns!r}: set the overlay's namespace in the queries")


def selftest_scaling_checks() -> None:
    """The scaler checks catch what they are for (on made-up objects): a
    Deployment scaled twice or not at all, a ScaledObject without a usable
    prometheus trigger, a query for another namespace."""
    global R
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "chartcache", "namespace": "ns"},
           "spec": {"template": {"metadata": {}, "spec": {"containers": []}}}}
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "chartcache"},
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "chartcache"},
                    "minReplicas": 2, "maxReplicas": 4}}
    good = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "chartcache", "namespace": "ns"},
            "spec": {"scaleTargetRef": {"name": "chartcache"}, "minReplicaCount": 2, "maxReplicaCount": 4,
                     "triggers": [{"type": "prometheus", "metadata": {
                         "serverAddress": "http://prometheus:9090", "threshold": "5",
                         "query": 'sum(chartcache_inflight_requests{namespace="ns"})'}}]}}
    no_threshold = copy.deepcopy(good)
    del no_threshold["spec"]["triggers"][0]["metadata"]["threshold"]
    other_ns = copy.deepcopy(good)
    other_ns["metadata"]["namespace"] = "elsewhere"
    dangling = copy.deepcopy(good)
    dangling["spec"]["scaleTargetRef"]["name"] = "nope"
    cases = [
        ("HPA only", [dep, hpa], 0),
        ("ScaledObject only", [dep, good], 0),
        ("HPA and ScaledObject", [dep, hpa, good], 1),
        ("no scaler", [dep], 1),
        ("trigger without threshold", [dep, no_threshold], 1),
        ("query for another namespace", [dep, other_ns], 1),
        ("ScaledObject for a missing Deployment", [dep, hpa, dangling], 1),
    ]
    real = R
    try:
        for name, docs, want_failures in cases:
            R = Report()
            with contextlib.redirect_stdout(io.StringIO()):
                for o in docs:
                    if o["kind"] == "ScaledObject":
                        check_scaledobject_shape("selftest", o)
                check_one_scaler("selftest", docs)
            got = len(R.failed)
            real.check((got > 0) == (want_failures > 0),
                       f"validate.py self-test, scaler checks, {name}: {got} failure(s) {R.failed}")
    finally:
        R = real


# ---------------------------------------------------------------- semantics

def pod_specs(docs: list[dict]):
    for o in docs:
        if o.get("kind") in ("Deployment", "StatefulSet", "DaemonSet"):
            yield o, o["spec"]["template"]["spec"], o["spec"]["template"]["metadata"].get("labels", {})


def chartcache_containers(spec: dict):
    for c in spec.get("containers", []):
        if c.get("name") == "chartcache":
            yield c


def has_redis(toml_text: str | None, env: dict, c: dict) -> bool:
    """Whether a chartcache container is certain to run with Redis: set in its
    TOML or literal env, or a Redis Secret/ConfigMap it cannot start without."""
    if any(k.upper() in ("CHARTCACHE_REDIS__URL", "CHARTCACHE_REDIS__SENTINELS") and v for k, v in env.items()):
        return True
    try:
        r = tomllib.loads(toml_text or "").get("redis", {})
    except tomllib.TOMLDecodeError:
        r = {}
    if r.get("url") or r.get("sentinels"):
        return True
    for ef in c.get("envFrom") or []:
        ref = ef.get("secretRef") or ef.get("configMapRef") or {}
        if "redis" in ref.get("name", "") and ref.get("optional") is not True:
            return True
    return False


MEMORY_ONLY_REPLICAS = (
    "replicas without Redis do not see each other's writes and purges (a replica keeps "
    "serving an entry purged elsewhere for up to its tier's fresh_secs): reference the "
    "Redis Secret with optional: false, or run one replica"
)


def check_shared_invalidation(rel: str, docs: list[dict]) -> None:
    """More than one replica of a chartcache container requires Redis."""
    for o, spec, _ in pod_specs(docs):
        most = max(o["spec"].get("replicas", 1), max_replicas(docs, o["kind"], o["metadata"]["name"]))
        for c in chartcache_containers(spec):
            toml_text, env, _ = config_for_container(docs, spec, c)
            R.check(most <= 1 or has_redis(toml_text, env, c),
                    f"{rel}: {ident(o)}/chartcache: up to {most} {MEMORY_ONLY_REPLICAS}")


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_semantics(rel: str, docs: list[dict], drain_secs: dict) -> None:
    by_kind: dict[str, dict[str, dict]] = {}
    for o in docs:
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o

    # Literal secrets: nothing that looks like a token or password may carry a value.
    for o in docs:
        R.check(o.get("kind") != "Secret", f"{rel}: {ident(o)}: Secrets are referenced by name, never committed")
    for o, spec, _ in pod_specs(docs):
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            for e in c.get("env", []) or []:
                n = e["name"].upper()
                if re.search(r"TOKEN$|PASSWORD$|SECRET", n) and "value" in e:
                    R.check(False, f"{rel}: {ident(o)}/{c['name']}: env {e['name']} has a literal value; use a Secret")

    cms = by_kind.get("ConfigMap", {})
    found_chartcache = False
    for o, spec, labels in pod_specs(docs):
        where = f"{rel}: {ident(o)}"
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        for v in vols.values():
            if "configMap" in v:
                R.check(v["configMap"]["name"] in cms, f"{where}: volume {v['name']} names ConfigMap {v['configMap']['name']} that is not rendered")
        for c in chartcache_containers(spec):
            found_chartcache = True
            w = f"{where}/chartcache"
            sc = c.get("securityContext", {})
            psc = spec.get("securityContext", {})
            R.check(sc.get("runAsNonRoot") is True or (psc.get("runAsNonRoot") is True and "runAsNonRoot" not in sc), f"{w}: runAsNonRoot")
            R.check(sc.get("readOnlyRootFilesystem") is True, f"{w}: readOnlyRootFilesystem")
            R.check(sc.get("allowPrivilegeEscalation") is False, f"{w}: allowPrivilegeEscalation false")
            R.check("ALL" in (sc.get("capabilities", {}).get("drop") or []), f"{w}: capabilities drop ALL")
            seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
            R.check(seccomp == "RuntimeDefault", f"{w}: seccompProfile RuntimeDefault")
            R.check(spec.get("enableServiceLinks") is False, f"{where}: enableServiceLinks must be false (CHARTCACHE_* service env breaks config loading)")
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            admin = [n for n, p in ports.items() if p == 9090]
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                hg = (c.get(probe) or {}).get("httpGet") or {}
                R.check(hg.get("path") == path and hg.get("port") in admin + [9090], f"{w}: {probe} must GET {path} on the admin port")
            R.check(c.get("resources", {}).get("requests", {}).get("cpu") is not None, f"{w}: cpu request (HPA needs it)")
            R.check(c.get("resources", {}).get("limits", {}).get("memory") is not None, f"{w}: memory limit")
            sleep = ((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds")
            R.check(isinstance(sleep, int) and sleep > 0, f"{w}: preStop sleep")
            grace = spec.get("terminationGracePeriodSeconds", 30)
            drain = drain_secs.get(id(c), 25)
            R.check(grace > (sleep or 0) + drain, f"{w}: terminationGracePeriodSeconds {grace} must exceed preStop {sleep} + drain {drain}")
            for m in c.get("volumeMounts", []):
                R.check(m["name"] in vols, f"{w}: volumeMount {m['name']} has no volume")
            args = " ".join(c.get("args", []))
            R.check("--admin-listen=0.0.0.0:9090" in args, f"{w}: --admin-listen=0.0.0.0:9090 (probes, Prometheus)")
        # Service targetPorts must exist in the pods they select.
        for s in by_kind.get("Service", {}).values():
            if not selects(s["spec"].get("selector", {}), labels):
                continue
            names = {p.get("name") for c in spec.get("containers", []) for p in c.get("ports", [])}
            nums = {p.get("containerPort") for c in spec.get("containers", []) for p in c.get("ports", [])}
            for p in s["spec"]["ports"]:
                t = p.get("targetPort", p["port"])
                R.check(t in names or t in nums, f"{rel}: {ident(s)}: targetPort {t} not a port of {ident(o)}")

    for h in by_kind.get("HorizontalPodAutoscaler", {}).values():
        ref = h["spec"]["scaleTargetRef"]
        R.check(ref["name"] in by_kind.get(ref["kind"], {}), f"{rel}: {ident(h)}: scaleTargetRef {ref['kind']}/{ref['name']} not rendered")
        R.check(h["spec"].get("minReplicas", 1) >= 2, f"{rel}: {ident(h)}: minReplicas >= 2 (PDB, rolling restarts)")
    for p in by_kind.get("PodDisruptionBudget", {}).values():
        sel = p["spec"]["selector"]["matchLabels"]
        R.check(any(selects(sel, l) for _, _, l in pod_specs(docs)), f"{rel}: {ident(p)}: selects no rendered pod")
    for sm in by_kind.get("ServiceMonitor", {}).values():
        sel = sm["spec"]["selector"].get("matchLabels", {})
        svcs = [s for s in by_kind.get("Service", {}).values() if selects(sel, s["metadata"].get("labels", {}))]
        if R.check(bool(svcs), f"{rel}: {ident(sm)}: selects no rendered Service"):
            for ep in sm["spec"]["endpoints"]:
                R.check(
                    all(ep.get("port") in {p.get("name") for p in s["spec"]["ports"]} for s in svcs),
                    f"{rel}: {ident(sm)}: port {ep.get('port')} not on every selected Service",
                )
    for ing in by_kind.get("Ingress", {}).values():
        for rule in ing["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                b = path["backend"]["service"]
                s = by_kind.get("Service", {}).get(b["name"])
                if R.check(s is not None, f"{rel}: {ident(ing)}: backend Service {b['name']} not rendered"):
                    R.check(
                        b["port"].get("name") in {p.get("name") for p in s["spec"]["ports"]}
                        or b["port"].get("number") in {p["port"] for p in s["spec"]["ports"]},
                        f"{rel}: {ident(ing)}: backend port {b['port']} not on Service {b['name']}",
                    )
    R.check(found_chartcache, f"{rel}: no chartcache container rendered")
    check_shared_invalidation(rel, docs)


# ---------------------------------------------------------------- metrics

def load_metrics() -> tuple[set[str], set[str], dict[str, set[str]]]:
    """Names, histogram names, and label names per metric, from src/metrics.rs.

    Every metric there is registered by one helper call that names its
    constant and, for the labelled kinds, its label list:
    `c(NAME, "help")`, `g(NAME, "help")`, `cv(NAME, "help", &["a", "b"])`,
    `gv(...)`, `hv(...)`. A constant without such a call fails the check, so
    every metric's labels are known (none is skipped)."""
    src = open(os.path.join(ROOT, "src", "metrics.rs")).read()
    consts = dict(re.findall(r'pub const ([A-Z0-9_]+): &str =\s*"([a-z0-9_:]+)";', src))
    R.check(len(consts) > 0, "src/metrics.rs: no `pub const NAME: &str = \"chartcache_...\"` found")
    string = r'"(?:[^"\\]|\\.)*"'
    call = re.compile(r"\b(c|g|cv|gv|hv)\(\s*([A-Z0-9_]+)\s*,\s*" + string + r"\s*(?:,\s*&\[([^\]]*)\])?\s*,?\s*\)", re.S)
    labels: dict[str, set[str]] = {}
    hist: set[str] = set()
    for kind, const, labs in call.findall(src):
        if const not in consts:
            continue
        name = consts[const]
        want_labels = kind.endswith("v")
        R.check(want_labels == bool(labs.strip()),
                f"src/metrics.rs: {const}: {kind}(...) {'needs' if want_labels else 'takes no'} a label list")
        R.check(name not in labels, f"src/metrics.rs: {const} registered twice")
        labels[name] = set(re.findall(r'"([a-z_]+)"', labs))
        if kind == "hv":
            hist.add(name)
    for const, name in consts.items():
        R.check(name in labels, f"src/metrics.rs: {const} is not registered with c/g/cv/gv/hv(NAME, \"help\", &[labels]): its labels cannot be checked")
    return set(consts.values()), hist, labels


def strip_groupings(expr: str) -> str:
    # by (...), without (...), on (...), ignoring (...), group_left (...), group_right (...)
    return re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)


SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")


def metric_refs(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names in its selector) for every metric in a PromQL expr."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    e = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*(:[a-z]+)?\}?", " ", e)  # Grafana variables
    e = re.sub(r"\[[^\]]*\]", " ", e)  # range selectors and subqueries
    e = strip_groupings(e)
    out: list[tuple[str, set[str]]] = []
    for m in SELECTOR.finditer(e):
        labs = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", m.group(2)))
        if m.group(1):
            out.append((m.group(1), labs))
        else:
            name = re.search(r'__name__\s*=\s*""', m.group(2))
            if not name:
                out.append(("<selector without metric name>", labs))
    e = SELECTOR.sub(" ", e)
    e = re.sub(r"\boffset\s+-?[0-9a-z]+", " ", e)
    for tok in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", e):
        name, call = tok.group(1), tok.group(2)
        if call or name.lower() in PROMQL_KEYWORDS:
            continue
        if re.fullmatch(r"[0-9.eE+-]+", name):
            continue
        out.append((name, set()))
    return out


def balanced(expr: str) -> bool:
    """Brackets balance outside string literals: a cheap PromQL syntax sanity check."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    stack = []
    pairs = {")": "(", "]": "[", "}": "{"}
    for ch in e:
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack and '"' not in e.replace('""', "")


def check_metric(where: str, name: str, labs: set[str], names: set[str], hist: set[str],
                 labels: dict[str, set[str]], recorded: set[str]) -> None:
    base = name
    for suf in ("_bucket", "_sum", "_count"):
        if name.endswith(suf) and name[: -len(suf)] in hist:
            base = name[: -len(suf)]
    if name in recorded:
        R.check(True, "")
        return
    # process_* come from the same /metrics; up is the scrape's own series.
    if name.startswith("process_") or name == "up":
        R.check(True, "")
        return
    if not R.check(base in names, f"{where}: metric {name!r} is not defined in src/metrics.rs"):
        return
    if base in labels:
        allowed = labels[base] | TARGET_LABELS
        bad = labs - allowed
        R.check(not bad, f"{where}: metric {name} has no label(s) {sorted(bad)} (has {sorted(labels[base])})")


def grafana_exprs(dash: dict) -> list[tuple[str, str]]:
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []) or []:
                if "expr" in t:
                    out.append((f"panel {p.get('title')!r}", t["expr"]))
            walk(p.get("panels", []) or [])

    walk(dash.get("panels", []))
    for v in (dash.get("templating") or {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if v.get("type") == "query" and isinstance(q, str):
            m = re.fullmatch(r"\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*", q, re.S)
            if m:
                out.append((f"variable {v.get('name')}", m.group(1)))
                out.append((f"variable {v.get('name')} label", f"{{{m.group(2)}=\"\"}}"))
            else:
                out.append((f"variable {v.get('name')}", q))
    return out


def check_metrics(rule_docs: list[dict]) -> None:
    names, hist, labels = load_metrics()
    path = os.path.join(DEPLOY, "grafana", "chartcache.json")
    try:
        dash = json.load(open(path))
        R.check(True, "")
    except (OSError, ValueError) as e:
        R.check(False, f"deploy/grafana/chartcache.json does not parse: {e}")
        dash = None
    recorded = {r["record"] for o in rule_docs for g in o["spec"]["groups"] for r in g["rules"] if "record" in r}
    if dash is not None:
        exprs = grafana_exprs(dash)
        R.check(len(exprs) >= 10, f"grafana: only {len(exprs)} queries found")
        used = set()
        for where, e in exprs:
            R.check(balanced(e), f"grafana {where}: unbalanced brackets or quotes in {e!r}")
            for name, labs in metric_refs(e):
                if name == "<selector without metric name>" and where.endswith(" label"):
                    # label_values(metric, label): the label must exist on the metric
                    metric_q = next((x for w, x in exprs if w == where[: -len(" label")]), "")
                    for m, _ in metric_refs(metric_q):
                        check_metric(f"grafana {where}", m, labs, names, hist, labels, set())
                    continue
                used.add(name)
                check_metric(f"grafana {where}", name, labs, names, hist, labels, set())
        uids = [p.get("id") for p in dash.get("panels", [])]
        R.check(len(uids) == len(set(uids)), "grafana: panel ids repeat")
        missing = {n for n in names if not any(u == n or u.startswith(n + "_") for u in used)}
        if missing:
            # Not a failure: a new metric should not break CI before it gets a panel.
            R.note(f"grafana: metrics with no panel yet: {sorted(missing)}")
    for o in rule_docs:
        for g in o["spec"]["groups"]:
            for r in g["rules"]:
                R.check(balanced(r["expr"]), f"PrometheusRule {r.get('alert') or r.get('record')}: unbalanced brackets or quotes")
                for name, labs in metric_refs(r["expr"]):
                    check_metric(f"PrometheusRule {r.get('alert') or r.get('record')}", name, labs,
                                 names, hist, labels, recorded)


def check_query_metrics(where: str, expr: str, names, hist, labels) -> None:
    R.check(balanced(expr), f"{where}: unbalanced brackets or quotes in {expr!r}")
    for name, labs in metric_refs(expr):
        check_metric(where, name, labs, names, hist, labels, set())


ADAPTER_RULES = os.path.join(DEPLOY, "prometheus-adapter", "rules.yaml")


def adapter_metrics() -> set[str]:
    """Custom metric names deploy/prometheus-adapter/rules.yaml serves; its
    series queries checked against src/metrics.rs."""
    names, hist, labels = load_metrics()
    try:
        vals = yaml.safe_load(open(ADAPTER_RULES))
        R.check(True, "")
    except (OSError, yaml.YAMLError) as e:
        R.check(False, f"deploy/prometheus-adapter/rules.yaml: {e}")
        return set()
    custom = ((vals or {}).get("rules") or {}).get("custom")
    if not R.check(isinstance(custom, list) and custom, "deploy/prometheus-adapter/rules.yaml: rules.custom missing"):
        return set()
    served = set()
    for i, r in enumerate(custom):
        where = f"deploy/prometheus-adapter/rules.yaml: rules.custom[{i}]"
        sq = r.get("seriesQuery", "")
        check_query_metrics(where, sq, names, hist, labels)
        over = ((r.get("resources") or {}).get("overrides") or {})
        R.check({"namespace", "pod"} <= set(over), f"{where}: resources.overrides must map namespace and pod (a Pods metric)")
        mq = r.get("metricsQuery", "")
        R.check("<<.Series>>" in mq and "<<.LabelMatchers>>" in mq and "<<.GroupBy>>" in mq,
                f"{where}: metricsQuery must use <<.Series>>, <<.LabelMatchers>> and <<.GroupBy>>")
        n = r.get("name") or {}
        series = [m for m, _ in metric_refs(sq)]
        R.check(bool(n.get("matches")) and all(re.search(n["matches"], s) for s in series),
                f"{where}: name.matches does not match the series queried {series}")
        if R.check(bool(n.get("as")), f"{where}: name.as missing"):
            R.check(not n["as"].endswith("_per_second"),
                    f"{where}: name.as {n['as']!r} collides with the chart's default rules (*_total -> *_per_second)")
            served.add(n["as"])
    return served


def check_hpa_metrics(rendered: dict[str, list[dict]], served: set[str]) -> None:
    """Every Pods/Object metric an HPA asks for is served by the adapter rules."""
    for rel, docs in rendered.items():
        for h in docs:
            if h.get("kind") != "HorizontalPodAutoscaler":
                continue
            for m in h["spec"].get("metrics", []):
                if m.get("type") in ("Pods", "Object"):
                    name = m[m["type"].lower()]["metric"]["name"]
                    R.check(name in served, f"{rel}: {ident(h)}: metric {name!r} is served by no rule in deploy/prometheus-adapter/rules.yaml ({sorted(served)})")


def check_keda_queries(rendered: dict[str, list[dict]]) -> None:
    names, hist, labels = load_metrics()
    for rel, docs in rendered.items():
        for o in docs:
            if o.get("kind") == "ScaledObject":
                for t in o["spec"].get("triggers", []):
                    q = (t.get("metadata") or {}).get("query")
                    if q:
                        check_query_metrics(f"{rel}: {ident(o)} trigger {t.get('name')}", q, names, hist, labels)


def check_dashboard_configmap(rendered: dict[str, list[dict]]) -> None:
    """The dashboard ships as a ConfigMap with Grafana's sidecar label, holding
    deploy/grafana/chartcache.json as it is."""
    want = open(os.path.join(DEPLOY, "grafana", "chartcache.json")).read()
    for rel, docs in rendered.items():
        cms = [o for o in docs if o.get("kind") == "ConfigMap"
               and (o["metadata"].get("labels") or {}).get("grafana_dashboard") == "1"]
        if R.check(len(cms) == 1, f"{rel}: expected one ConfigMap labelled grafana_dashboard: \"1\", found {len(cms)}"):
            R.check(cms[0].get("data", {}).get("chartcache.json") == want,
                    f"{rel}: {ident(cms[0])}: data.chartcache.json differs from deploy/grafana/chartcache.json")


def promtool_available(what: str) -> bool:
    """promtool (Debian: prometheus) runs the rule checks. Missing under CI it
    is a failure, locally a loud skip."""
    if shutil.which("promtool"):
        return True
    msg = f"promtool not found: {what} NOT run (apt-get install prometheus)"
    if os.environ.get("CI"):
        R.check(False, f"{msg}; CI is set, so this fails")
    else:
        R.note(f"SKIPPED {msg}; set CI=1 to make this a failure")
    return False


def check_rules_with_promtool(rule_docs: list[dict]) -> None:
    """`promtool check rules` on the rendered PrometheusRule's groups, then the
    unit tests (deploy/prometheusrule*_test.yaml) against them."""
    if len(rule_docs) != 1 or not promtool_available("promtool check rules / test rules"):
        return
    with tempfile.TemporaryDirectory() as tmp:
        rules = os.path.join(tmp, "chartcache-rules.yaml")
        with open(rules, "w") as f:
            yaml.safe_dump(rule_docs[0]["spec"], f, sort_keys=False)
        p = subprocess.run(["promtool", "check", "rules", rules], capture_output=True, text=True, timeout=60)
        R.check(p.returncode == 0, f"promtool check rules: {(p.stdout + p.stderr).strip()}")
        tests = []
        for t in RULE_TESTS:
            src = os.path.join(DEPLOY, t)
            if R.check(os.path.isfile(src), f"deploy/{t} missing"):
                shutil.copy(src, os.path.join(tmp, t))
                tests.append(t)
        alerts = {r["alert"] for g in rule_docs[0]["spec"]["groups"] for r in g["rules"] if "alert" in r}
        tested = set()
        for t in tests:
            doc = yaml.safe_load(open(os.path.join(tmp, t)))
            R.check(doc.get("rule_files") == ["chartcache-rules.yaml"], f"deploy/{t}: rule_files must be [chartcache-rules.yaml]")
            for case in doc.get("tests", []):
                for a in case.get("alert_rule_test", []):
                    tested.add(a["alertname"])
        R.check(alerts <= tested, f"rule unit tests: no case for {sorted(alerts - tested)}")
        p = subprocess.run(["promtool", "test", "rules", *tests], capture_output=True, text=True,
                           timeout=300, cwd=tmp)
        R.check(p.returncode == 0, f"promtool test rules: {(p.stdout + p.stderr).strip()[-4000:]}")
        if p.returncode == 0:
            print(f"promtool: rules checked, {len(tests)} unit test files passed ({len(tested)} alerts covered)")


# ---------------------------------------------------------------- check-config

def find_binary() -> str | None:
    cands = [os.environ.get("CHARTCACHE_BIN", "")]
    cands += [os.path.join(ROOT, "target", t, "chartcache") for t in ("debug", "release")]
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def run_check_config(binary: str, where: str, toml_text: str, env: dict, args: list[str]) -> dict | None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "chartcache.toml")
        open(cfg, "w").write(toml_text)
        tok = os.path.join(tmp, "token")
        open(tok, "w").write("placeholder\n")
        e = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        for k, v in env.items():
            e[k] = tok if k.endswith("_FILE") else v
        argv = [binary]
        for a in args:
            if a.startswith("--config"):
                a = f"--config={cfg}"
            argv.append(a.replace("$(POD_IP)", "10.0.0.1"))
        if not any(a.startswith("--config") for a in argv):
            argv.append(f"--config={cfg}")
        p = subprocess.run(argv + ["check-config"], capture_output=True, text=True, env=e, timeout=30)
        if not R.check(p.returncode == 0, f"{where}: chartcache check-config: {(p.stderr or p.stdout).strip()[:400]}"):
            return None
        try:
            return json.loads(p.stdout)
        except ValueError:
            return {}


def config_for_container(docs: list[dict], spec: dict, c: dict) -> tuple[str | None, dict, list[str]]:
    cms = {o["metadata"]["name"]: o for o in docs if o["kind"] == "ConfigMap"}
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    cfg_path = next((a.split("=", 1)[1] for a in c.get("args", []) if a.startswith("--config=")), None)
    toml_text = None
    for m in c.get("volumeMounts", []):
        v = vols.get(m["name"], {})
        if cfg_path and "configMap" in v and cfg_path.startswith(m["mountPath"].rstrip("/") + "/"):
            key = cfg_path[len(m["mountPath"].rstrip("/")) + 1:]
            toml_text = cms.get(v["configMap"]["name"], {}).get("data", {}).get(key)
    env = {e["name"]: e["value"] for e in c.get("env", []) or [] if "value" in e and e["name"].startswith("CHARTCACHE_")}
    return toml_text, env, c.get("args", [])


def check_configs(rendered: dict[str, list[dict]]) -> dict:
    """Returns {id(container): drain_timeout_secs} for the shutdown-timing check."""
    drains: dict = {}
    binary = find_binary()
    if binary is None:
        R.note("no chartcache binary (cargo build, or set CHARTCACHE_BIN): check-config skipped; TOML syntax checked only")
    for rel, docs in rendered.items():
        for o, spec, _ in pod_specs(docs):
            for c in chartcache_containers(spec):
                where = f"{rel}: {ident(o)}/chartcache"
                toml_text, env, args = config_for_container(docs, spec, c)
                if not R.check(toml_text is not None, f"{where}: --config file is not mounted from a rendered ConfigMap"):
                    continue
                try:
                    parsed = tomllib.loads(toml_text)
                    R.check(True, "")
                except tomllib.TOMLDecodeError as e:
                    R.check(False, f"{where}: config is not TOML: {e}")
                    continue
                drains[id(c)] = parsed.get("server", {}).get("drain_timeout_secs", 25)
                if binary:
                    eff = run_check_config(binary, where, toml_text, env, args)
                    if eff:
                        drains[id(c)] = eff.get("server", {}).get("drain_timeout_secs", drains[id(c)])
    # The Helm values carry their own config and container.
    hv = os.path.join(DEPLOY, "helm-superset-values.yaml")
    try:
        vals = yaml.safe_load(open(hv))
        R.check(True, "")
    except (OSError, yaml.YAMLError) as e:
        R.check(False, f"deploy/helm-superset-values.yaml: {e}")
        return drains
    where = "deploy/helm-superset-values.yaml"
    toml_text = (vals.get("extraConfigs") or {}).get("chartcache.toml")
    if R.check(isinstance(toml_text, str), f"{where}: extraConfigs.chartcache.toml missing"):
        R.check("{{" not in toml_text, f"{where}: extraConfigs.chartcache.toml must not contain '{{{{' (Helm tpl)")
        try:
            tomllib.loads(toml_text)
            R.check(True, "")
        except tomllib.TOMLDecodeError as e:
            R.check(False, f"{where}: extraConfigs.chartcache.toml is not TOML: {e}")
            toml_text = None
    node = vals.get("supersetNode") or {}
    cs = [c for c in node.get("extraContainers") or [] if c.get("name") == "chartcache"]
    if R.check(len(cs) == 1, f"{where}: supersetNode.extraContainers has no chartcache container"):
        c = cs[0]
        sc = c.get("securityContext", {})
        R.check(sc.get("runAsNonRoot") is True and sc.get("readOnlyRootFilesystem") is True
                and "ALL" in sc.get("capabilities", {}).get("drop", []), f"{where}: chartcache securityContext")
        # Validate the container against the core schema by wrapping it in a Pod.
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "helm-values"},
               "spec": {"containers": [c], "volumes": [{"name": n, "emptyDir": {}} for n in
                                                       {m["name"] for m in c.get("volumeMounts", [])}]}}
        validate_schema(where, pod)
        env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e and e["name"].startswith("CHARTCACHE_")}
        if binary and toml_text is not None:
            run_check_config(binary, where, toml_text, env, c.get("args", []))
        # Superset's chart: supersetNode.replicaCount (1 by default) and supersetNode.autoscaling.
        auto = node.get("autoscaling") or {}
        most = max(node.get("replicaCount", 1), auto.get("maxReplicas", 1) if auto.get("enabled") else 1)
        R.check(most <= 1 or has_redis(toml_text, env, c),
                f"{where}: up to {most} Superset pods: {MEMORY_ONLY_REPLICAS}")
    return drains


# ---------------------------------------------------------------- scaling

def worker_threads_set(docs: list[dict], spec: dict, c: dict) -> bool:
    """server.worker_threads > 0 from literal env or the mounted config."""
    for e in c.get("env", []) or []:
        if e["name"] == "CHARTCACHE_SERVER__WORKER_THREADS" and "value" in e:
            return str(e["value"]).strip() not in ("", "0")
    toml_text, _, _ = config_for_container(docs, spec, c)
    try:
        n = tomllib.loads(toml_text or "").get("server", {}).get("worker_threads", 0)
    except tomllib.TOMLDecodeError:
        return False
    return isinstance(n, int) and n > 0


def check_scaling(rel: str, docs: list[dict]) -> None:
    """An HPA owns its target's replica count: a spec.replicas in the manifest
    resets it on every apply. A chartcache container with neither a CPU limit
    nor server.worker_threads runs one proxy thread (and Redis connection) per
    node CPU."""
    targets = set(scalers(docs))
    for o, spec, _ in pod_specs(docs):
        if (o["kind"], o["metadata"]["name"]) in targets:
            R.check("replicas" not in o["spec"],
                    f"{rel}: {ident(o)}: an HPA/ScaledObject owns it, so spec.replicas must not be set (each apply resets the count)")
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            # The schema allows repeated env names; the last silently wins.
            names = [e["name"] for e in c.get("env", []) or []]
            R.check(len(names) == len(set(names)),
                    f"{rel}: {ident(o)}/{c['name']}: env names repeat: {sorted({n for n in names if names.count(n) > 1})}")
        for c in chartcache_containers(spec):
            cpu = ((c.get("resources") or {}).get("limits") or {}).get("cpu")
            R.check(bool(cpu) or worker_threads_set(docs, spec, c),
                    f"{rel}: {ident(o)}/chartcache: neither a CPU limit nor server.worker_threads "
                    "(CHARTCACHE_SERVER__WORKER_THREADS): one proxy thread per node CPU")


# ---------------------------------------------------------------- Superset's chart

def check_helm_chart() -> None:
    """deploy/helm-superset-values.yaml merged over the chart's defaults renders a
    pod the API server accepts: one handler per probe, names consistent, schema
    valid; plus the merge and graceful-stop tests (deploy/test_helm_values.py)."""
    sys.path.insert(0, DEPLOY)
    import helm_chart
    import test_helm_values

    where = "deploy/helm-superset-values.yaml on Superset's chart"
    try:
        dep = helm_chart.render_deployment(helm_chart.merged_values())
    except (OSError, KeyError, ValueError, yaml.YAMLError) as e:
        R.check(False, f"{where}: cannot render: {e}")
        return
    pod = dep["spec"]["template"]["spec"]
    for p in helm_chart.probe_problems(pod) + helm_chart.unique_names(pod):
        R.check(False, f"{where}: {p}")
    R.check(True, "")
    validate_schema(where, dep)
    check_scaling(where, [dep])
    n, fails = test_helm_values.run()
    R.check(n >= 4, f"deploy/test_helm_values.py: only {n} tests ran")
    for f in fails:
        R.check(False, f"deploy/test_helm_values.py: {f}")


# ---------------------------------------------------------------- Dockerfile

def check_dockerfile() -> None:
    """Static checks only: no engine is needed (or used) here."""
    path = os.path.join(ROOT, "Dockerfile")
    if not R.check(os.path.isfile(path), "Dockerfile missing"):
        return
    lines = [l.strip() for l in open(path) if l.strip() and not l.lstrip().startswith("#")]
    froms = [l for l in lines if l.upper().startswith("FROM ")]
    R.check(len(froms) >= 2, "Dockerfile: expected a multi-stage build")
    users = [l.split(None, 1)[1] for l in lines if l.upper().startswith("USER ")]
    R.check(bool(users) and re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", users[-1]) is not None,
            "Dockerfile: final USER must be a numeric non-root uid")
    R.check('ENTRYPOINT ["chartcache"]' in lines, 'Dockerfile: ENTRYPOINT ["chartcache"]')
    exposed = {p for l in lines if l.upper().startswith("EXPOSE ") for p in l.split()[1:]}
    R.check({"8080", "9090"} <= exposed, "Dockerfile: EXPOSE 8080 9090")
    for l in lines:
        if l.upper().startswith("COPY ") and "--from" not in l:
            for src in l.split()[1:-1]:
                if src != ".":
                    R.check(os.path.exists(os.path.join(ROOT, src)), f"Dockerfile: COPY source {src} missing")


# ---------------------------------------------------------------- main

def main() -> int:
    subprocess.run(["kubectl", "version", "--client"], capture_output=True, check=True)
    rendered: dict[str, list[dict]] = {}
    for d in kustomize_dirs():
        docs = render(d)
        if docs is not None:
            rendered[os.path.relpath(d, ROOT)] = docs
    R.check(len(rendered) >= 5, f"expected base + 4 overlays, rendered {sorted(rendered)}")
    R.check(any(o.get("kind") == "ScaledObject" for docs in rendered.values() for o in docs),
            "no overlay renders the KEDA ScaledObject (deploy/components/keda)")
    for rel, docs in rendered.items():
        for o in docs:
            validate_schema(rel, o)
    drains = check_configs(rendered)
    for rel, docs in rendered.items():
        check_semantics(rel, docs, drains)
        check_scaling(rel, docs)
        check_one_scaler(rel, docs)
    selftest_scaling_checks()
    check_hpa_metrics(rendered, adapter_metrics())
    check_keda_queries(rendered)
    check_dashboard_configmap(rendered)
    check_helm_chart()
    rules = [o for o in rendered.get("deploy/base", []) if o["kind"] == "PrometheusRule"]
    R.check(len(rules) == 1, "deploy/base: expected one PrometheusRule")
    check_metrics(rules)
    check_rules_with_promtool(rules)
    check_dockerfile()
    print(f"rendered: {', '.join(sorted(rendered))}; k8s schemas: {', '.join(K8S_VERSIONS)}")
    if R.failed:
        print(f"{len(R.failed)} check(s) failed:")
        for f in R.failed:
            print(f"  - {f}")
    print(f"validate: {R.passed} passed, {len(R.failed)} failed")
    return 1 if R.failed else 0


if __name__ == "__main__":
    sys.exit(main())
