#!/usr/bin/env bash
# Install the test dependencies (system packages, a virtual environment with every extra the
# tests need) and run the whole suite: ruff, mypy --strict, pytest.
set -euo pipefail
cd "$(dirname "$0")"

# prometheus: promtool checks packaging/prometheus and the dashboard; chromium: the web UI's browser tests
# drive Debian's chromium through the `playwright` package of the dev extra (never `playwright install`)
APT_PACKAGES="espeak-ng prometheus chromium openssl haproxy"  # openssl: the HTTPS and certificate-renewal tests; haproxy: the fleet router
if command -v apt-get >/dev/null 2>&1; then
  missing=""
  for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
fi

# torch==2.13.0 (CPU) is the build the tests use; it exists for CPython 3.11 on these machines.
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 python3; do command -v "$cand" >/dev/null 2>&1 && { PY="$cand"; break; }; done
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# Every version comes from the committed lock (docs/dependencies.md): a new upstream release cannot break
# a fresh clone. pip itself first, then the project with every extra the tests need.
LOCK=requirements.lock
echo "== installing test dependencies from $LOCK (log: .venv/pip.log)"
.venv/bin/python -m pip install -q -c "$LOCK" pip >.venv/pip.log 2>&1 || { tail -40 .venv/pip.log; exit 1; }
.venv/bin/python -m pip install -c "$LOCK" -e '.[dev,workers,vectors,full]' --config-settings editable_mode=compat \
  >>.venv/pip.log 2>&1 || { tail -40 .venv/pip.log; exit 1; }

echo "== ruff"
.venv/bin/ruff check appliance services tests bench
echo "== mypy --strict"
.venv/bin/mypy --strict appliance services
# The store and jobs suites run against a real PostgreSQL on 127.0.0.1:5432 (tests/backing_services.py
# makes a throwaway database and drops it): start the local cluster when it is installed and down.
if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  for cluster in /etc/postgresql/*; do
    [ -d "$cluster" ] && pg_ctlcluster --skip-systemctl-redirect "$(basename "$cluster")" main start || true
  done
fi

echo "== pytest"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
