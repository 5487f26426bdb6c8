#!/usr/bin/env bash
# Validate deploy/: render every Kustomize directory, check the output against
# the Kubernetes schemas and chartcache's own rules, and check that the Grafana
# dashboard and the alerts only use metrics the binary exports.
# Details: deploy/validate.py. Exit status non-zero on any failure.
#
#   bash deploy/validate.sh
#
# Needs kubectl (for `kubectl kustomize`) and Python 3.11+; installs
# kubernetes-validate and PyYAML from PyPI if missing. Nothing else is fetched.
# With a built binary (target/debug/chartcache, or CHARTCACHE_BIN), it also runs
# `chartcache check-config` on each rendered configuration. With promtool
# (Debian package prometheus) it checks the alerting rules and runs their unit
# tests; without it those are skipped with a message, or fail when CI is set.
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)

if ! command -v kubectl >/dev/null 2>&1; then
  echo "deploy/validate.sh: kubectl not found (needed for kubectl kustomize)" >&2
  exit 1
fi
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "deploy/validate.sh: Python 3.11+ required (tomllib)" >&2
  exit 1
fi
if ! "$PYTHON" -c 'import kubernetes_validate, yaml' >/dev/null 2>&1; then
  echo "deploy/validate.sh: installing kubernetes-validate from PyPI"
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    'kubernetes-validate>=1.35,<2' 'PyYAML>=6'
fi

if ! command -v promtool >/dev/null 2>&1; then
  if [ -n "${CI:-}" ]; then
    echo "deploy/validate.sh: promtool not found and CI is set: the alert rule checks will fail (apt-get install prometheus)" >&2
  else
    echo "deploy/validate.sh: promtool not found: alert rule checks and unit tests SKIPPED (apt-get install prometheus; CI=1 makes this a failure)" >&2
  fi
fi
rc=0
"$PYTHON" deploy/validate.py || rc=$?
echo "deploy/validate.sh: $(( $(date +%s) - start ))s, exit $rc"
exit $rc
