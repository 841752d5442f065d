#!/bin/sh
# AI Appliance installer. From a checkout: ./install.sh   Piped: curl -fsSL URL/install.sh | sh
# Installs system packages, a virtual environment with the appliance and its workers, a config,
# and starts the daemon (systemd where systemd runs, supervisord where it does not, e.g. vast.ai
# containers), then waits until http://127.0.0.1:$PORT/health answers.
#
# Environment: APPLIANCE_SOURCE (checkout path or git URL when piped), APPLIANCE_PREFIX (venv and
# config for piped installs, default ~/.local/share/appliance), APPLIANCE_STATE_DIR, APPLIANCE_PORT
# (default 8080), APPLIANCE_NO_START=1 (install only), PYTHON (interpreter to build the venv with),
# APPLIANCE_XTTS (1: build the XTTS v2 environment, 0: never, auto: when nvidia-smi exists).
set -eu

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

PORT="${APPLIANCE_PORT:-8080}"
SCRIPT_DIR=""
case "$0" in
  */install.sh|install.sh) SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd) ;;
esac

# ---- where the source is -------------------------------------------------------------------
if [ -n "${APPLIANCE_SOURCE:-}" ] && [ -d "${APPLIANCE_SOURCE}" ]; then
  SRC=$(cd "$APPLIANCE_SOURCE" && pwd)
elif [ -n "$SCRIPT_DIR" ] && [ -f "$SCRIPT_DIR/pyproject.toml" ] && grep -q '^name = "appliance"' "$SCRIPT_DIR/pyproject.toml"; then
  SRC="$SCRIPT_DIR"
elif [ -n "${APPLIANCE_SOURCE:-}" ]; then
  command -v git >/dev/null 2>&1 || die "git is needed to fetch $APPLIANCE_SOURCE"
  SRC="${APPLIANCE_PREFIX:-$HOME/.local/share/appliance}/src"
  if [ -d "$SRC/.git" ]; then git -C "$SRC" pull --ff-only -q; else git clone -q "$APPLIANCE_SOURCE" "$SRC"; fi
else
  die "run ./install.sh from a checkout, or set APPLIANCE_SOURCE to a checkout path or git URL"
fi

# ---- system packages -------------------------------------------------------------------------
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
if command -v apt-get >/dev/null 2>&1; then
  need=""
  for p in espeak-ng curl; do dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"; done
  if [ -n "$need" ]; then
    say "installing system packages:$need"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need >/dev/null
  fi
fi

# ---- python and the virtual environment -------------------------------------------------------
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PY="$cand"; break; fi
  done
fi
[ -n "$PY" ] || die "python3 (3.11 or newer) is required"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$PY is older than 3.11"

if [ "$SRC" = "$SCRIPT_DIR" ] && [ -z "${APPLIANCE_PREFIX:-}" ]; then
  VENV="$SRC/.venv"
  CONFIG_DIR="$HOME/.config/appliance"
else
  PREFIX="${APPLIANCE_PREFIX:-$HOME/.local/share/appliance}"
  VENV="$PREFIX/venv"
  CONFIG_DIR="$PREFIX"
fi
[ -x "$VENV/bin/python" ] || { say "creating $VENV"; "$PY" -m venv "$VENV"; }
say "installing the appliance and its workers into $VENV (log: $VENV/install.log)"
# Every version comes from the committed lock (docs/dependencies.md); torch is the one package chosen per
# box (the CPU build without a GPU, the CUDA build with one), by the index pip uses there.
LOCK="$SRC/requirements.lock"
"$VENV/bin/python" -m pip install -q -c "$LOCK" pip >"$VENV/install.log" 2>&1 \
  || { tail -30 "$VENV/install.log"; die "pip install failed"; }
"$VENV/bin/python" -m pip install -c "$LOCK" -e "$SRC[workers]" supervisor --config-settings editable_mode=compat \
  >>"$VENV/install.log" 2>&1 || { tail -30 "$VENV/install.log"; die "pip install failed"; }

# ---- XTTS v2 (GPU boxes): coqui-tts imports only on torch 2.9.1 + torchaudio 2.9, so its own venv ----
XTTS="${APPLIANCE_XTTS:-auto}"
if [ "$XTTS" = 1 ] || { [ "$XTTS" = auto ] && command -v nvidia-smi >/dev/null 2>&1; }; then
  XVENV="$(dirname "$VENV")/xtts-venv"
  [ -x "$XVENV/bin/python" ] || "$PY" -m venv "$XVENV"
  say "installing the XTTS v2 speech environment into $XVENV (about 7.6 GB; log: $XVENV/install.log)"
  "$XVENV/bin/python" -m pip install -c "$SRC/requirements-xtts.lock" -r "$SRC/packaging/xtts-requirements.txt" \
    >"$XVENV/install.log" 2>&1 || { tail -30 "$XVENV/install.log"; die "XTTS install failed"; }
  say "XTTS ready: set python = \"$XVENV/bin/python\" on the speech engine and accept the CPML in [licences]"
fi

# ---- configuration -------------------------------------------------------------------------------
mkdir -p "$CONFIG_DIR"
CONFIG="$CONFIG_DIR/config.toml"
if [ ! -f "$CONFIG" ]; then
  cp "$SRC/config.toml" "$CONFIG"
  say "wrote the default configuration to $CONFIG"
fi
"$VENV/bin/appliance" check-config "$CONFIG" >/dev/null || die "invalid configuration: $CONFIG"
STATE_DIR="${APPLIANCE_STATE_DIR:-$HOME/.local/share/appliance}"
mkdir -p "$STATE_DIR/logs" "$STATE_DIR/run"

[ "${APPLIANCE_NO_START:-0}" = 1 ] && { say "installed (not started)"; exit 0; }

# ---- start the daemon ------------------------------------------------------------------------------
ENVLINE="APPLIANCE_STATE_DIR=$STATE_DIR"
if [ -d /run/systemd/system ] && [ "$(id -u)" = 0 ]; then
  say "installing the systemd unit"
  sed -e "s#@VENV@#$VENV#g" -e "s#@CONFIG@#$CONFIG#g" -e "s#@STATE@#$STATE_DIR#g" -e "s#@PORT@#$PORT#g" \
    "$SRC/systemd/appliance.service" > /etc/systemd/system/appliance.service
  systemctl daemon-reload
  systemctl enable -q appliance.service
  systemctl restart appliance.service
else
  say "no systemd here: running under supervisord"
  SUP="$STATE_DIR/run/supervisord.conf"
  sed -e "s#@VENV@#$VENV#g" -e "s#@CONFIG@#$CONFIG#g" -e "s#@STATE@#$STATE_DIR#g" -e "s#@PORT@#$PORT#g" \
    "$SRC/packaging/supervisord.conf" > "$SUP"
  if [ -S "$STATE_DIR/run/supervisor.sock" ] && "$VENV/bin/supervisorctl" -c "$SUP" pid >/dev/null 2>&1; then
    "$VENV/bin/supervisorctl" -c "$SUP" update >/dev/null
    "$VENV/bin/supervisorctl" -c "$SUP" restart appliance >/dev/null
  else
    env $ENVLINE "$VENV/bin/supervisord" -c "$SUP"
  fi
fi

say "waiting for http://127.0.0.1:$PORT/health"
i=0
until curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; do
  i=$((i + 1))
  if [ "$i" -gt 120 ]; then
    tail -20 "$STATE_DIR/logs/daemon.log" 2>/dev/null || true
    die "the daemon did not answer on port $PORT within 60 s"
  fi
  sleep 0.5
done
say "the appliance is up: http://127.0.0.1:$PORT  (status: $VENV/bin/appliance status)"
