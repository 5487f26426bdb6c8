"""Superset's official chart, reduced to what deploy/helm-superset-values.yaml needs.

Merges the values file over the chart's defaults (deploy/testdata/
superset-chart-defaults.yaml, whose header names the chart source) with Helm's
rules, and builds the supersetNode pod spec the way the chart's
templates/deployment.yaml does, so deploy/validate.py can check what the API
server would receive: one handler per probe, and the Kubernetes schema.
"""

from __future__ import annotations

import copy
import os
import re

import yaml

DEPLOY = os.path.dirname(os.path.abspath(__file__))
DEFAULTS = os.path.join(DEPLOY, "testdata", "superset-chart-defaults.yaml")
VALUES = os.path.join(DEPLOY, "helm-superset-values.yaml")
RELEASE = "superset"
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
HANDLERS = ("exec", "httpGet", "tcpSocket", "grpc")


def helm_merge(base, over):
    """Helm's values coalescing: maps merge recursively, a null deletes the key
    it overrides, anything else (lists and scalars) replaces."""
    if not isinstance(base, dict) or not isinstance(over, dict):
        return copy.deepcopy(over)
    out = copy.deepcopy(base)
    for k, v in over.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = helm_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def tpl(text: str, values: dict) -> str:
    """The few template expressions the chart's defaults and this file use."""
    subs = {
        r"\{\{\s*\.Values\.configMountPath\s*\}\}": values["configMountPath"],
        r"\{\{\s*template \"superset\.fullname\" \.\s*\}\}": RELEASE,
        r"\{\{\s*tpl \.Values\.envFromSecret \.\s*\}\}": f"{RELEASE}-env",
        r"\{\{\s*\.Values\.initImage\.repository\s*\}\}": "apache/superset",
        r"\{\{\s*\.Values\.initImage\.tag\s*\}\}": "dockerize",
        r"\{\{\s*\.Values\.initImage\.pullPolicy\s*\}\}": "IfNotPresent",
    }
    for pat, rep in subs.items():
        text = re.sub(pat, lambda _m, r=rep: r, text)
    if "{{" in text:
        raise ValueError(f"template expression this renderer does not know: {text!r}")
    return text


def tpl_tree(x, values):
    if isinstance(x, str):
        return tpl(x, values)
    if isinstance(x, list):
        return [tpl_tree(i, values) for i in x]
    if isinstance(x, dict):
        return {k: tpl_tree(v, values) for k, v in x.items()}
    return x


def merged_values(values_path: str | None = None, defaults_path: str | None = None) -> dict:
    with open(defaults_path or DEFAULTS) as d, open(values_path or VALUES) as v:
        return helm_merge(yaml.safe_load(d), yaml.safe_load(v))


def render_deployment(v: dict) -> dict:
    """The Deployment of templates/deployment.yaml for merged values `v`."""
    node = v["supersetNode"]
    image = v["image"]
    main = {
        "name": v["chartName"],
        "image": f"{image['repository']}:{image.get('tag') or 'latest'}",
        "imagePullPolicy": image["pullPolicy"],
        "command": tpl_tree(node["command"], v),
        "env": [{"name": "SUPERSET_PORT", "value": str(v["service"]["port"])}]
        + [{"name": k, "value": str(x)} for k, x in sorted((v.get("extraEnv") or {}).items())]
        + [{"name": k, "value": str(x)} for k, x in sorted((node.get("env") or {}).items())]
        + list(v.get("extraEnvRaw") or []),
        "envFrom": [{"secretRef": {"name": tpl(v["envFromSecret"], v)}}]
        + [{"secretRef": {"name": tpl(s, v)}} for s in v.get("envFromSecrets") or []],
        "volumeMounts": [{"name": "superset-config", "mountPath": v["configMountPath"], "readOnly": True}],
        "ports": [{"name": "http", "containerPort": v["service"]["port"], "protocol": "TCP"}],
        "resources": node.get("resources") or v.get("resources") or {},
    }
    if node.get("containerSecurityContext"):
        main["securityContext"] = node["containerSecurityContext"]
    if v.get("extraConfigs"):
        main["volumeMounts"].append(
            {"name": "superset-extra-config", "mountPath": v["extraConfigMountPath"], "readOnly": True})
    main["volumeMounts"] += tpl_tree(v.get("extraVolumeMounts") or [], v)
    for p in PROBES:  # the template emits a probe only when it is non-empty
        if node.get(p):
            main[p] = node[p]
    spec = {
        "securityContext": {"runAsUser": v["runAsUser"], **(node.get("podSecurityContext") or {})},
        "containers": [main] + list(node.get("extraContainers") or []),
        "volumes": [{"name": "superset-config", "secret": {"secretName": tpl(v["configFromSecret"], v)}}],
    }
    if node.get("initContainers"):
        spec["initContainers"] = tpl_tree(node["initContainers"], v)
    if v.get("extraConfigs"):
        spec["volumes"].append(
            {"name": "superset-extra-config", "configMap": {"name": f"{RELEASE}-extra-config"}})
    spec["volumes"] += tpl_tree(v.get("extraVolumes") or [], v)
    labels = {"app": v["chartName"], "release": RELEASE, **(node.get("podLabels") or {})}
    dep = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": RELEASE, "labels": {"app": v["chartName"], "release": RELEASE}},
        "spec": {
            "selector": {"matchLabels": {"app": v["chartName"], "release": RELEASE}},
            "template": {
                "metadata": {"labels": labels, "annotations": dict(node.get("podAnnotations") or {})},
                "spec": spec,
            },
        },
    }
    if not (node.get("autoscaling") or {}).get("enabled"):
        dep["spec"]["replicas"] = node["replicaCount"]
    return dep


def probe_problems(pod_spec: dict) -> list[str]:
    """Every probe must carry exactly one handler (the API server rejects more)."""
    out = []
    for c in pod_spec.get("containers", []) + pod_spec.get("initContainers", []):
        for p in PROBES:
            if p in c:
                hs = [h for h in HANDLERS if h in c[p]]
                if len(hs) != 1:
                    out.append(f"container {c['name']}: {p} has {len(hs)} handlers {hs}")
    return out


def unique_names(pod_spec: dict) -> list[str]:
    out = []
    for what, items in (("container", pod_spec.get("containers", []) + pod_spec.get("initContainers", [])),
                        ("volume", pod_spec.get("volumes", []))):
        names = [i["name"] for i in items]
        if len(names) != len(set(names)):
            out.append(f"{what} names repeat: {names}")
    vols = {v["name"] for v in pod_spec.get("volumes", [])}
    for c in pod_spec.get("containers", []):
        for m in c.get("volumeMounts", []):
            if m["name"] not in vols:
                out.append(f"container {c['name']}: mounts volume {m['name']} the pod lacks")
    return out
