#!/bin/sh
# AI Appliance installer.   From a checkout: ./install.sh [FLAGS]
#                           Piped: curl -fsSL URL/install.sh | sh -s -- --source URL/appliance.tar.gz [FLAGS]
#
# Installs the daemon's environment from the committed lock, the engines' own environments (vLLM on
# NVIDIA boxes, ComfyUI, XTTS on NVIDIA boxes, Open WebUI when asked), writes the configuration once (the
# plan fitted to this box: `appliance plan --write`), registers the service (systemd where it is PID 1,
# else a program file in a running supervisord's conf.d, else a supervisord of its own), starts it and
# prints the URL and how to authenticate. Running it again upgrades in place and keeps the
# configuration, keys, models and data. Code, configuration and data live in separate directories:
#   code   PREFIX/lib      (root without --prefix: /opt/appliance; user: ~/.local/lib/appliance)
#   config PREFIX/etc      (root: /etc/appliance; user: ~/.config/appliance)
#   data   PREFIX/data     (root: /var/lib/appliance; user: ~/.local/share/appliance); /workspace/appliance
#                          when /workspace exists (the persistent volume on vast.ai and RunPod)
#
# Flags: --prefix DIR, --port N (default 8080, or a free one when 8080 is taken), --bind ADDR (default
# 127.0.0.1; anything else gets an admin key and HTTPS), --plain-http (a public bind without TLS: only
# behind a TLS-terminating proxy such as vast.ai's portal), --tls-cert FILE --tls-key FILE (your own
# certificate), --no-start, --no-engines, --engines LIST (default: vllm,comfyui,xtts on NVIDIA boxes;
# add openwebui), --source PATH|URL (checkout, .tar.gz URL or git URL), --uninstall [--purge], -y,
# --join URL --token T [--advertise-url U] (then joins the fleet of the router at URL: `appliance fleet
# join`, see docs/fleet.md; binds 0.0.0.0 unless --bind says otherwise, so the router can reach the box).
# Router mode (a small always-on server in front of the fleet, no GPU; docs/fleet.md "The router"):
# --router --store-url postgresql://... [--tls-pem FILE] [--router-port N] installs the same package from
# the same lock, plus Debian's haproxy, writes a router configuration ([server] state_dir, [store] url,
# [router]), makes the join token file (mode 0600), runs `appliance router` as the service instead of
# `appliance serve` and prints how boxes join. No engines; not with --join nor the box's --port, --bind,
# --plain-http, --tls-cert.
# Environment: APPLIANCE_PREFIX, APPLIANCE_DATA_DIR, APPLIANCE_CONFIG_DIR, APPLIANCE_PORT,
# APPLIANCE_BIND, APPLIANCE_SOURCE, APPLIANCE_GPU (1/0: override NVML detection), APPLIANCE_JOIN_TOKEN
# (the join token, instead of --token), APPLIANCE_STORE_URL (instead of --store-url: keeps the database
# password off the process list), APPLIANCE_ROUTER_TLS_PEM, APPLIANCE_ROUTER_PORT, PYTHON,
# APPLIANCE_SUPERVISOR_CONF and APPLIANCE_SUPERVISOR_CONFD (a running supervisord's configuration and
# the conf.d it includes; default /etc/supervisor/supervisord.conf and /etc/supervisor/conf.d).
#
# The whole script is the function main, called on the last line: a truncated download runs nothing.
set -eu

say() { printf '==> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
need_cmd() { command -v "$1" >/dev/null 2>&1 || die "'$1' is required and was not found (install it first)"; }
has() { command -v "$1" >/dev/null 2>&1; }

usage() {
  sed -n '2,/^set -eu$/{/^#/p}' "$0" 2>/dev/null | sed 's/^# \{0,1\}//' || true
  printf 'usage: install.sh [--prefix DIR] [--port N] [--bind ADDR] [--plain-http] [--tls-cert F --tls-key F]\n'
  printf '                  [--no-start] [--no-engines] [--engines LIST] [--source SRC] [--uninstall [--purge]] [-y]\n'
  printf '                  [--join URL --token T [--advertise-url U]]\n'
  printf '                  [--router --store-url URL [--tls-pem F] [--router-port N]]\n'
}

# ---- downloading: curl, else wget ----------------------------------------------------------------
fetch() {  # fetch URL OUTFILE
  if has curl; then curl -fsSL --retry 3 -o "$2" "$1" || die "download failed: $1"
  elif has wget; then wget -q -O "$2" "$1" || die "download failed: $1"
  else die "curl or wget is required (apt-get install curl)"; fi
}

http_ok() {  # http_ok URL: the daemon answers (a generated certificate is checked by the CLI, not here)
  if has curl; then curl -fsSk -o /dev/null --max-time 3 "$1" 2>/dev/null
  else wget -q --no-check-certificate -O /dev/null --timeout=3 "$1" 2>/dev/null; fi
}

# ---- what this box is ----------------------------------------------------------------------------
detect_os() {
  OS_ID=unknown OS_VERSION=""
  if [ -r /etc/os-release ]; then
    OS_ID=$(. /etc/os-release && printf '%s' "${ID:-unknown}")
    OS_VERSION=$(. /etc/os-release && printf '%s' "${VERSION_ID:-}")
  fi
  ARCH=$(uname -m)
  case "$ARCH" in x86_64|amd64|aarch64|arm64) ;; *) die "unsupported CPU architecture: $ARCH" ;; esac
  [ "$(uname -s)" = Linux ] || die "the appliance runs on Linux (this is $(uname -s))"
}

detect_init() {
  if [ -d /run/systemd/system ]; then INIT=systemd; else INIT=none; fi
}

detect_vast() {
  # custom variables reach SSH and Jupyter sessions only through /etc/environment (vast.ai documents this)
  if [ -r /etc/environment ]; then set -a; . /etc/environment 2>/dev/null || true; set +a; fi
  if [ -n "${VAST_CONTAINERLABEL:-}" ] || [ -f /etc/portal.yaml ] || [ -d /etc/vast_boot.d ]; then VAST=1; else VAST=0; fi
}

detect_gpu() {  # NVML through ctypes: never nvidia-smi's banner (its wording changes between drivers)
  if [ -n "${APPLIANCE_GPU:-}" ]; then GPUS=$APPLIANCE_GPU; return; fi
  GPUS=$("$PY" - <<'EOF' 2>/dev/null || echo 0
import ctypes
try:
    nvml = ctypes.CDLL("libnvidia-ml.so.1")
except OSError:
    print(0)
else:
    count = ctypes.c_uint(0)
    ok = nvml.nvmlInit_v2() == 0 and nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0
    print(count.value if ok else 0)
EOF
)
}

find_python() {
  PY="${PYTHON:-}"
  if [ -z "$PY" ]; then
    for cand in python3.11 python3.12 python3.13 python3; do
      if has "$cand"; then PY="$cand"; break; fi
    done
  fi
  [ -n "$PY" ] || die "python3 (3.11 or newer) is required: apt-get install python3 python3-venv"
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$PY is older than 3.11"
  if ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    if has apt-get && [ "$(id -u)" = 0 ]; then
      say "installing python3-venv (ensurepip is missing)"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    else
      die "$PY cannot create virtual environments: apt-get install python3-venv"
    fi
  fi
}

system_packages() {
  NEW_HAPROXY=0
  has apt-get || return 0
  missing=""
  wanted=espeak-ng; [ "$ROUTER" = 1 ] && wanted="haproxy"  # the router speaks no text: HAProxy instead
  for p in $wanted; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  [ -n "$missing" ] || return 0
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif has sudo; then SUDO=sudo; else
    warn "not root and no sudo: skipping system packages:$missing"; return 0; fi
  say "installing system packages:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
  case " $missing " in *" haproxy "*) NEW_HAPROXY=1 ;; esac
}

# ---- router mode (--router) ----------------------------------------------------------------------
router_haproxy() {  # the router starts HAProxy itself: 2.6 or later, and not Debian's own unit beside it
  has haproxy || [ -x /usr/sbin/haproxy ] || die "--router needs HAProxy 2.6 or later: apt-get install haproxy"
  bin=haproxy; has haproxy || bin=/usr/sbin/haproxy
  version=$("$bin" -v 2>/dev/null | sed -n 's/^HAProxy version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p' | head -1)
  set -- $version
  { [ $# = 2 ] && { [ "$1" -gt 2 ] || { [ "$1" = 2 ] && [ "$2" -ge 6 ]; }; }; } \
    || die "--router needs HAProxy 2.6 or later; $bin -v says: $("$bin" -v 2>/dev/null | head -1)"
  HAPROXY_BIN=$(command -v "$bin")
  if [ "$NEW_HAPROXY" = 1 ] && [ "$INIT" = systemd ] && [ "$(id -u)" = 0 ]; then
    say "disabling Debian's haproxy.service (the router runs its own HAProxy)"
    systemctl disable --now -q haproxy.service 2>/dev/null || true
  fi
}

router_ports() {  # PORT: HAProxy's public port; API_PORT: the router's own API on loopback
  if [ -f "$CONFIG" ]; then
    PORT=$(configured_in router port) API_PORT=$(configured_in router api_port)
    [ -n "$PORT" ] || PORT=8443; [ -n "$API_PORT" ] || API_PORT=8090
    [ -z "$WANT_ROUTER_PORT" ] || [ "$WANT_ROUTER_PORT" = "$PORT" ] \
      || warn "keeping port $PORT from $CONFIG (edit router.port there to change it)"
    return 0
  fi
  PORT="${WANT_ROUTER_PORT:-8443}"
  port_free 0.0.0.0 "$PORT" || die "port $PORT is taken (choose another with --router-port)"
  API_PORT=8090
  while [ "$API_PORT" -lt 8200 ] && { [ "$API_PORT" = "$PORT" ] || ! port_free 127.0.0.1 "$API_PORT"; }; do
    API_PORT=$((API_PORT + 1))
  done
  [ "$API_PORT" -lt 8200 ] || die "no free port for the router's API between 8090 and 8199"
}

write_router_config() {
  mkdir -p "$CONFIG_DIR" "$DATA"
  if [ -f "$CONFIG" ]; then
    say "keeping the configuration $CONFIG"
    [ -z "$STORE_URL" ] || [ "$STORE_URL" = "$(configured_in store url)" ] \
      || warn "keeping store.url from $CONFIG (edit it there to change it)"
  else
    # the values go through the environment (the store URL holds the database password) and come out
    # as TOML strings written by Python (quotes and backslashes escaped), mode 0600
    (umask 077; R_CONFIG="$CONFIG" R_STATE="$DATA" R_STORE="$STORE_URL" R_PEM="$TLS_PEM" R_PORT="$PORT" \
      R_API_PORT="$API_PORT" R_HAPROXY="$HAPROXY_BIN" "$VENV/bin/python" -c '
import json, os
e = os.environ
q = json.dumps  # a JSON string of printable text is a valid TOML basic string
text = f"""# Written by install.sh --router: `appliance router` (docs/fleet.md, "The router"). Kept on upgrades.
[server]
state_dir = {q(e["R_STATE"])}
[store]
url = {q(e["R_STORE"])}   # the fleet shared store: registry, keys, usage (what joining boxes are told)
# [jobs]                  # what joining boxes are told to use: backend = "kafka", brokers = ["host:9092"]
[router]
host = "0.0.0.0"
port = {e["R_PORT"]}
api_port = {e["R_API_PORT"]}
haproxy_bin = {q(e["R_HAPROXY"])}
tls_pem = {q(e["R_PEM"])}
"""
tmp = e["R_CONFIG"] + ".tmp"
with open(tmp, "w") as f:
    f.write(text)
os.replace(tmp, e["R_CONFIG"])
') || die "could not write $CONFIG"
    say "wrote the router configuration $CONFIG"
  fi
  "$VENV/bin/appliance" check-config "$CONFIG" >/dev/null || die "invalid configuration: $CONFIG"
  PORT=$(configured_in router port) API_PORT=$(configured_in router api_port) TLS_PEM=$(configured_in router tls_pem)
  [ -n "$API_PORT" ] || API_PORT=8090
  TOKENS=$("$VENV/bin/appliance" router tokens --config "$CONFIG") || die "could not create the router's tokens"
  JOIN_TOKEN_FILE=$(printf '%s\n' "$TOKENS" | sed -n 's/^join token: //p')
  say "the join token is in $JOIN_TOKEN_FILE (mode 0600)"
  if [ -z "$TLS_PEM" ]; then
    warn "no --tls-pem: the router speaks plain HTTP on port $PORT; keys and the join token cross the network in clear text unless a TLS proxy fronts it"
  fi
}

router_note() {
  scheme=http; [ -n "$TLS_PEM" ] && scheme=https
  addr="${PUBLIC_IPADDR:-}"
  [ -n "$addr" ] || addr=$(hostname -I 2>/dev/null | awk '{print $1}')
  [ -n "$addr" ] || addr=$(hostname)
  url="$scheme://$addr:$PORT"
  say "the router is up: $url (fleet page: $url/fleet, sign in with a fleet admin key)"
  [ -z "$KEY_NOTE" ] || say "a fleet admin key is in $KEY_FILE:  Authorization: Bearer \$(cat $KEY_FILE)"
  say "boxes join with (the token is the content of $JOIN_TOKEN_FILE):"
  say "  ./install.sh --join $url --token TOKEN      (or APPLIANCE_JOIN_TOKEN=TOKEN ./install.sh --join $url)"
  say "  an installed box: appliance fleet join $url --token TOKEN"
  say "manage it with: $BIN_DIR/appliance service status|start|stop|restart|logs;  drain a box: APPLIANCE_API_KEY=KEY appliance router upgrade-drain BOX"
}

# ---- where things go -----------------------------------------------------------------------------
layout() {
  if [ -n "$PREFIX" ]; then
    CODE="$PREFIX/lib"; CONFIG_DIR="${APPLIANCE_CONFIG_DIR:-$PREFIX/etc}"; DATA_DEFAULT="$PREFIX/data"
    BIN_DIR="$PREFIX/bin"
  elif [ "$(id -u)" = 0 ]; then
    CODE=/opt/appliance; CONFIG_DIR="${APPLIANCE_CONFIG_DIR:-/etc/appliance}"; DATA_DEFAULT=/var/lib/appliance
    BIN_DIR=/usr/local/bin
  else
    CODE="$HOME/.local/lib/appliance"; CONFIG_DIR="${APPLIANCE_CONFIG_DIR:-$HOME/.config/appliance}"
    DATA_DEFAULT="$HOME/.local/share/appliance"; BIN_DIR="$HOME/.local/bin"
  fi
  if [ -n "${APPLIANCE_DATA_DIR:-}" ]; then DATA="$APPLIANCE_DATA_DIR"
  elif [ -d /workspace ] && [ -w /workspace ]; then DATA=/workspace/appliance
  else DATA="$DATA_DEFAULT"; fi
  VENV="$CODE/venv"
  CONFIG="$CONFIG_DIR/config.toml"
  KEY_FILE="$CONFIG_DIR/admin.key"
  RECEIPT="$VENV/appliance-install.toml"
}

locate_source() {
  if [ -z "$SOURCE" ] && [ -n "$SCRIPT_DIR" ] && [ -f "$SCRIPT_DIR/pyproject.toml" ] \
     && grep -q '^name = "appliance"' "$SCRIPT_DIR/pyproject.toml"; then
    SOURCE="$SCRIPT_DIR"
  fi
  [ -n "$SOURCE" ] || die "run ./install.sh from a checkout, or pass --source (a checkout, a .tar.gz URL or a git URL)"
  case "$SOURCE" in
    *.tar.gz|*.tgz)
      say "fetching $SOURCE"
      mkdir -p "$CODE"
      TMP=$(mktemp -d "${TMPDIR:-/tmp}/appliance.XXXXXX")
      case "$SOURCE" in
        http://*|https://*) fetch "$SOURCE" "$TMP/src.tar.gz" ;;
        *) cp "$SOURCE" "$TMP/src.tar.gz" ;;
      esac
      mkdir "$TMP/src"
      tar -xzf "$TMP/src.tar.gz" -C "$TMP/src" || die "$SOURCE is not a readable .tar.gz"
      top=$(find "$TMP/src" -maxdepth 2 -name pyproject.toml | head -1)
      [ -n "$top" ] || die "$SOURCE holds no pyproject.toml"
      rm -rf "$CODE/src.old"
      [ -d "$CODE/src" ] && mv "$CODE/src" "$CODE/src.old"
      mv "$(dirname "$top")" "$CODE/src"
      rm -rf "$CODE/src.old" "$TMP"
      SRC="$CODE/src" ;;
    http://*|https://*|git@*|*.git)
      need_cmd git
      SRC="$CODE/src"
      if [ -d "$SRC/.git" ]; then git -C "$SRC" pull --ff-only -q; else git clone -q "$SOURCE" "$SRC"; fi ;;
    *)
      [ -d "$SOURCE" ] || die "--source $SOURCE: no such directory"
      SRC=$(cd "$SOURCE" && pwd) ;;
  esac
}

# ---- the daemon's environment --------------------------------------------------------------------
daemon_env() {
  mkdir -p "$CODE"
  [ -x "$VENV/bin/python" ] || { say "creating $VENV"; "$PY" -m venv "$VENV"; }
  LOG="$CODE/install.log"
  say "installing the appliance and its workers into $VENV (log: $LOG)"
  # Every version comes from the committed lock (docs/dependencies.md); torch is the one package chosen
  # per box (the CPU build without a GPU, the CUDA build with one), by the index pip uses there.
  LOCK="$SRC/requirements.lock"
  "$VENV/bin/python" -m pip install -q -c "$LOCK" pip >"$LOG" 2>&1 || { tail -30 "$LOG"; die "pip install failed"; }
  "$VENV/bin/python" -m pip install -c "$LOCK" -e "$SRC[workers,vectors]" supervisor --config-settings editable_mode=compat \
    >>"$LOG" 2>&1 || { tail -30 "$LOG"; die "pip install failed"; }
  mkdir -p "$BIN_DIR"
  ln -sf "$VENV/bin/appliance" "$BIN_DIR/appliance"
}

engines() {
  [ "$NO_ENGINES" = 1 ] && { say "skipping the engines (--no-engines); add one later: appliance engine install NAME"; return 0; }
  list="$ENGINES"
  # XTTS (CPML licence) and Open WebUI only when asked: --engines vllm,comfyui,xtts,openwebui
  [ -n "$list" ] || { [ "$GPUS" -gt 0 ] && list="vllm,comfyui"; } || return 0
  for name in $(printf '%s' "$list" | tr ',' ' '); do
    say "installing the $name engine at its pinned release (log: $CODE/engines/$name.log)"
    APPLIANCE_GPU="$GPUS" "$VENV/bin/appliance" engine install "$name" --root "$CODE/engines" --source "$SRC" \
      || die "the $name engine did not install (see $CODE/engines/$name.log)"
  done
}

# ---- network: port, certificate, key -------------------------------------------------------------
port_free() {  # port_free HOST PORT
  "$VENV/bin/python" -c '
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the daemon binds: a TIME_WAIT is no listener
try:
    s.bind((host, port))
except OSError:
    sys.exit(1)
' "$1" "$2"
}

configured() {  # configured KEY: a [server] value of the existing configuration
  configured_in server "$1"
}

configured_in() {  # configured_in TABLE KEY: a value of the existing configuration
  "$VENV/bin/python" -c '
import sys, tomllib
print(tomllib.load(open(sys.argv[1], "rb")).get(sys.argv[2], {}).get(sys.argv[3], ""))' "$CONFIG" "$1" "$2"
}

pick_port() {
  if [ -f "$CONFIG" ]; then
    PORT=$(configured port); BIND=$(configured host)
    [ -n "$PORT" ] || PORT=8080; [ -n "$BIND" ] || BIND=127.0.0.1
    if [ -n "$WANT_PORT" ] && [ "$WANT_PORT" != "$PORT" ]; then
      warn "keeping port $PORT from $CONFIG (edit server.port there to change it)"
    fi
    return 0
  fi
  BIND="${WANT_BIND:-127.0.0.1}"
  if [ -n "$WANT_PORT" ]; then
    port_free "$BIND" "$WANT_PORT" || die "port $WANT_PORT is taken on $BIND (choose another with --port)"
    PORT=$WANT_PORT; return 0
  fi
  PORT=8080
  if ! port_free "$BIND" 8080; then
    why="port 8080 is taken"
    [ "$VAST" = 1 ] && why="$why (on vast.ai the instance portal, Caddy, or Jupyter listens there)"
    p=8081
    while [ "$p" -lt 8200 ] && ! port_free "$BIND" "$p"; do p=$((p + 1)); done
    [ "$p" -lt 8200 ] || die "$why, and so is every port up to 8199: choose one with --port"
    PORT=$p
    say "$why: using port $PORT"
  fi
}

tls_setup() {
  TLS_CERT="" TLS_KEY="" FINGERPRINT=""
  case "$BIND" in 127.*|::1|localhost) return 0 ;; esac
  if [ -f "$CONFIG" ]; then  # an upgrade keeps what the configuration says; a generated certificate is renewed
    TLS_CERT=$(configured tls_cert) TLS_KEY=$(configured tls_key)
    [ "$(configured plain_http)" = True ] && PLAIN_HTTP=1
    [ -n "$TLS_CERT" ] || return 0
    [ "$TLS_CERT" = "$CONFIG_DIR/tls/cert.pem" ] || { USER_CERT="$TLS_CERT" USER_KEY="$TLS_KEY"; }
  fi
  if [ "$PLAIN_HTTP" = 1 ]; then
    warn "plain HTTP on $BIND (--plain-http): keys cross the network in clear text unless a TLS proxy fronts it"
    return 0
  fi
  if [ -n "$USER_CERT" ]; then
    [ -r "$USER_CERT" ] && [ -r "$USER_KEY" ] || die "--tls-cert and --tls-key must both name readable files"
    TLS_CERT="$USER_CERT" TLS_KEY="$USER_KEY"
  else
    need_cmd openssl
    TLS_CERT="$CONFIG_DIR/tls/cert.pem" TLS_KEY="$CONFIG_DIR/tls/key.pem"
    # renewed 30 days before it expires (a re-run of the installer, or `appliance doctor`, says when)
    if [ ! -f "$TLS_CERT" ] || ! openssl x509 -checkend 2592000 -noout -in "$TLS_CERT" >/dev/null 2>&1; then
      mkdir -p "$CONFIG_DIR/tls"
      # every name the printed URL may use: this box's addresses, its public one on vast.ai, the bind address
      san="DNS:localhost,IP:127.0.0.1,DNS:$(hostname)"
      for a in $(hostname -I 2>/dev/null) ${PUBLIC_IPADDR:-}; do
        case "$a" in *:*) ;; *) san="$san,IP:$a" ;; esac
      done
      case "$BIND" in 0.0.0.0|::|*:*) ;; *) san="$san,IP:$BIND" ;; esac
      (umask 077; openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 397 \
        -subj "/CN=appliance" -addext "subjectAltName=$san" -keyout "$TLS_KEY" -out "$TLS_CERT" >/dev/null 2>&1) \
        || die "openssl could not generate a certificate"
      say "generated a self-signed certificate: $TLS_CERT"
    fi
  fi
  FINGERPRINT=$(openssl x509 -noout -fingerprint -sha256 -in "$TLS_CERT" 2>/dev/null | sed 's/.*=//') || FINGERPRINT=""
}

write_config() {
  mkdir -p "$CONFIG_DIR" "$DATA"
  if [ -f "$CONFIG" ]; then
    say "keeping the configuration $CONFIG"
  else
    set -- --write "$CONFIG" --host "$BIND" --port "$PORT" --state-dir "$DATA" --engines-root "$CODE/engines"
    [ -n "$TLS_CERT" ] && set -- "$@" --tls-cert "$TLS_CERT" --tls-key "$TLS_KEY"
    [ "$PLAIN_HTTP" = 1 ] && set -- "$@" --plain-http
    "$VENV/bin/appliance" plan "$@" || die "could not write $CONFIG"
  fi
  "$VENV/bin/appliance" check-config "$CONFIG" >/dev/null || die "invalid configuration: $CONFIG"
}

admin_key() {
  KEY_NOTE=""
  case "$BIND" in 127.*|::1|localhost) return 0 ;; esac
  if [ ! -s "$KEY_FILE" ]; then
    (umask 077; "$VENV/bin/appliance" keys create --name admin --admin --config "$CONFIG" >"$KEY_FILE") \
      || die "could not create the admin key"
    chmod 600 "$KEY_FILE"
    say "created the admin key: $KEY_FILE (mode 0600)"
    # vast.ai's portal checks its own token and forwards the header unchanged: accept that token too
    if [ "$VAST" = 1 ]; then
      for var in OPEN_BUTTON_TOKEN WEB_PASSWORD; do
        eval "tok=\${$var:-}"
        [ -z "$tok" ] || "$VENV/bin/appliance" keys import --name "vast-$var" --from-env "$var" --config "$CONFIG" \
          || warn "could not accept \$$var as a key (appliance keys import --from-env $var)"
      done
    fi
  fi
  KEY_NOTE="$KEY_FILE"
}

receipt() {
  {
    printf '# Written by install.sh: where this installation lives (read by the appliance CLI).\n'
    printf 'prefix = "%s"\nconfig = "%s"\nstate_dir = "%s"\n' "$CODE" "$CONFIG" "$DATA"
    [ -n "$KEY_NOTE" ] && printf 'key_file = "%s"\n' "$KEY_FILE"
    [ -n "$TLS_CERT" ] && printf 'tls_cert = "%s"\n' "$TLS_CERT"
    printf 'manager = "%s"\nunit = "appliance"\nprogram = "appliance"\n' "$MANAGER"
    [ -n "$SUP_CONF" ] && printf 'supervisord_conf = "%s"\n' "$SUP_CONF"
    if [ "$MANAGER" = supervisord-confd ]; then printf 'program_file = "%s"\n' "$CONFD/appliance.conf"; fi
  } >"$RECEIPT.tmp"
  mv "$RECEIPT.tmp" "$RECEIPT"
}

# ---- the service ---------------------------------------------------------------------------------
render() {  # render TEMPLATE OUT (COMMAND: serve, or router with --router)
  sed -e "s#@VENV@#$VENV#g" -e "s#@CONFIG@#$CONFIG#g" -e "s#@STATE@#$DATA#g" -e "s#@PORT@#$PORT#g" \
      -e "s#@COMMAND@#$COMMAND#g" "$1" >"$2"
}

choose_manager() {
  SUP_CONF=""
  MAIN_CONF="${APPLIANCE_SUPERVISOR_CONF:-/etc/supervisor/supervisord.conf}"
  CONFD="${APPLIANCE_SUPERVISOR_CONFD:-/etc/supervisor/conf.d}"
  if [ "$NO_START" = 1 ]; then MANAGER=""
  elif [ "$INIT" = systemd ] && [ "$(id -u)" = 0 ] && [ -z "$PREFIX" ]; then MANAGER=systemd
  elif [ -f "$MAIN_CONF" ] && [ -d "$CONFD" ] && [ -w "$CONFD" ] \
       && "$VENV/bin/supervisorctl" -c "$MAIN_CONF" pid >/dev/null 2>&1; then
    MANAGER=supervisord-confd; SUP_CONF="$MAIN_CONF"
  else
    MANAGER=supervisord; SUP_CONF="$DATA/run/supervisord.conf"
  fi
}

# ---- joining a fleet (--join) -------------------------------------------------------------------
join_fleet() {  # before the service starts: it then starts once, as a fleet box
  [ -n "$JOIN_URL" ] || return 0
  say "joining the fleet of $JOIN_URL"
  set -- fleet join "$JOIN_URL" --config "$CONFIG" --no-restart
  [ -z "$ADVERTISE_URL" ] || set -- "$@" --advertise-url "$ADVERTISE_URL"
  # the token goes through the environment: not on a command line other users can read
  if ! APPLIANCE_JOIN_TOKEN="$JOIN_TOKEN" "$VENV/bin/appliance" "$@"; then
    die "joining the fleet failed (above); the appliance is installed but not started: fix it, then run $BIN_DIR/appliance fleet join $JOIN_URL --token TOKEN and appliance service start"
  fi
}

start_service() {
  mkdir -p "$DATA/logs" "$DATA/run"
  case "$MANAGER" in
    "") say "installed, not started (--no-start): appliance service start"; return 0 ;;
    systemd)
      say "registering the systemd unit appliance.service"
      render "$SRC/systemd/appliance.service" /etc/systemd/system/appliance.service
      systemctl daemon-reload
      systemctl enable -q appliance.service
      systemctl restart appliance.service ;;
    supervisord-confd)
      say "registering the program appliance with the running supervisord ($CONFD/appliance.conf)"
      render "$SRC/packaging/supervisor-program.conf" "$CONFD/appliance.conf"
      "$VENV/bin/supervisorctl" -c "$SUP_CONF" reread >/dev/null
      "$VENV/bin/supervisorctl" -c "$SUP_CONF" update >/dev/null
      "$VENV/bin/supervisorctl" -c "$SUP_CONF" restart appliance >/dev/null ;;
    supervisord)
      render "$SRC/packaging/supervisord.conf" "$SUP_CONF"
      if "$VENV/bin/supervisorctl" -c "$SUP_CONF" pid >/dev/null 2>&1; then
        say "restarting the appliance under its supervisord ($SUP_CONF)"
        "$VENV/bin/supervisorctl" -c "$SUP_CONF" reread >/dev/null
        "$VENV/bin/supervisorctl" -c "$SUP_CONF" update >/dev/null
        "$VENV/bin/supervisorctl" -c "$SUP_CONF" restart appliance >/dev/null
      else
        say "no systemd and no supervisord running: starting one for the appliance ($SUP_CONF)"
        "$VENV/bin/supervisord" -c "$SUP_CONF"
      fi ;;
  esac
  scheme=http; [ -n "$TLS_CERT" ] && scheme=https
  case "$BIND" in 0.0.0.0) host=127.0.0.1 ;; ::) host="[::1]" ;; *) host="$BIND" ;; esac
  health="$scheme://$host:$PORT/health"
  [ "$ROUTER" = 1 ] && health="http://127.0.0.1:$API_PORT/health"  # the router's API: 200 once HAProxy runs
  say "waiting for $health"
  i=0
  until http_ok "$health"; do
    i=$((i + 1))
    if [ "$i" -gt 240 ]; then
      "$VENV/bin/appliance" service logs 2>/dev/null | tail -20 || true
      die "the $COMMAND service did not answer at $health within 120 s (appliance service logs)"
    fi
    sleep 0.5
  done
}

closing_note() {
  scheme=http; [ -n "$TLS_CERT" ] && scheme=https
  case "$BIND" in
    127.*|::1|localhost) url="$scheme://127.0.0.1:$PORT" ;;
    *)
      addr="${PUBLIC_IPADDR:-}"
      [ -n "$addr" ] || addr=$(hostname -I 2>/dev/null | awk '{print $1}')
      [ -n "$addr" ] || addr=$(hostname)
      ext=$(eval "printf '%s' \"\${VAST_TCP_PORT_$PORT:-}\"")
      url="$scheme://$addr:${ext:-$PORT}" ;;
  esac
  say "the appliance is up: $url"
  if [ -n "$KEY_NOTE" ]; then
    say "authenticate with the admin key in $KEY_FILE:  Authorization: Bearer \$(cat $KEY_FILE)"
  else
    say "it listens on loopback only; create keys with: appliance keys create --name NAME"
  fi
  if [ -n "$FINGERPRINT" ]; then
    say "certificate SHA-256 fingerprint: $FINGERPRINT"
    say "  curl --cacert $TLS_CERT -H \"Authorization: Bearer \$(cat $KEY_FILE)\" $url/v1/models"
  fi
  if [ "$VAST" = 1 ]; then
    say "vast.ai: for a link through the instance portal, add  localhost:<external>:$PORT:/:Appliance  to"
    say "  PORTAL_CONFIG (or /etc/portal.yaml); the portal tunnel serves TLS, so --bind 0.0.0.0 --plain-http is safe there"
  fi
  say "manage it with: $BIN_DIR/appliance service status|start|stop|restart|logs   (doctor: appliance doctor)"
}

# ---- uninstall -----------------------------------------------------------------------------------
uninstall() {
  MANAGER="" SUP_CONF="" PROGRAM_FILE=""
  if [ -f "$RECEIPT" ]; then
    MANAGER=$(sed -n 's/^manager = "\(.*\)"$/\1/p' "$RECEIPT")
    SUP_CONF=$(sed -n 's/^supervisord_conf = "\(.*\)"$/\1/p' "$RECEIPT")
    PROGRAM_FILE=$(sed -n 's/^program_file = "\(.*\)"$/\1/p' "$RECEIPT")
  fi
  case "$MANAGER" in
    systemd)
      systemctl disable --now -q appliance.service 2>/dev/null || true
      rm -f /etc/systemd/system/appliance.service; systemctl daemon-reload 2>/dev/null || true ;;
    supervisord-confd)
      "$VENV/bin/supervisorctl" -c "$SUP_CONF" stop appliance >/dev/null 2>&1 || true
      rm -f "$PROGRAM_FILE"
      "$VENV/bin/supervisorctl" -c "$SUP_CONF" reread >/dev/null 2>&1 || true
      "$VENV/bin/supervisorctl" -c "$SUP_CONF" update >/dev/null 2>&1 || true ;;
    supervisord)
      "$VENV/bin/supervisorctl" -c "$SUP_CONF" shutdown >/dev/null 2>&1 || true
      i=0; while [ -S "$(dirname "$SUP_CONF")/supervisor.sock" ] && [ "$i" -lt 120 ]; do i=$((i + 1)); sleep 0.5; done ;;
  esac
  say "removed the service; removing $CODE"
  [ -L "$BIN_DIR/appliance" ] && rm -f "$BIN_DIR/appliance"
  [ -z "$PREFIX" ] || rmdir "$BIN_DIR" 2>/dev/null || true
  rm -rf "$CODE"
  if [ "$PURGE" = 1 ]; then
    if [ "$YES" != 1 ]; then
      (: </dev/tty) 2>/dev/null || die "--purge deletes $CONFIG_DIR and $DATA: confirm with -y"
      printf 'delete the configuration, keys, models and data in %s and %s? [y/N] ' "$CONFIG_DIR" "$DATA" >/dev/tty
      read -r answer </dev/tty
      case "$answer" in y|Y|yes) ;; *) say "kept $CONFIG_DIR and $DATA"; return 0 ;; esac
    fi
    rm -rf "$CONFIG_DIR" "$DATA"
    [ -z "$PREFIX" ] || rmdir "$PREFIX" 2>/dev/null || true
    say "purged $CONFIG_DIR and $DATA"
  else
    say "kept the configuration, keys, models and data: $CONFIG_DIR, $DATA (--uninstall --purge deletes them)"
  fi
}

main() {
  PREFIX="${APPLIANCE_PREFIX:-}" WANT_PORT="${APPLIANCE_PORT:-}" WANT_BIND="${APPLIANCE_BIND:-}"
  SOURCE="${APPLIANCE_SOURCE:-}" NO_START=0 NO_ENGINES=0 ENGINES="" UNINSTALL=0 PURGE=0 YES=0 PLAIN_HTTP=0
  USER_CERT="" USER_KEY="" JOIN_URL="" JOIN_TOKEN="${APPLIANCE_JOIN_TOKEN:-}" ADVERTISE_URL="" TOKEN_FLAG=0
  ROUTER=0 STORE_URL="${APPLIANCE_STORE_URL:-}" TLS_PEM="${APPLIANCE_ROUTER_TLS_PEM:-}"
  WANT_ROUTER_PORT="${APPLIANCE_ROUTER_PORT:-}" ROUTER_FLAG="" COMMAND=serve HAPROXY_BIN=haproxy
  while [ $# -gt 0 ]; do
    case "$1" in
      --prefix) PREFIX="${2:?--prefix needs a directory}"; shift ;;
      --port) WANT_PORT="${2:?--port needs a number}"; shift ;;
      --bind) WANT_BIND="${2:?--bind needs an address}"; shift ;;
      --source) SOURCE="${2:?--source needs a path or URL}"; shift ;;
      --engines) ENGINES="${2:?--engines needs a list}"; shift ;;
      --tls-cert) USER_CERT="${2:?--tls-cert needs a file}"; shift ;;
      --tls-key) USER_KEY="${2:?--tls-key needs a file}"; shift ;;
      --join) JOIN_URL="${2:?--join needs the router's URL}"; shift ;;
      --token) JOIN_TOKEN="${2:?--token needs the join token}"; TOKEN_FLAG=1; shift ;;
      --advertise-url) ADVERTISE_URL="${2:?--advertise-url needs a URL}"; shift ;;
      --router) ROUTER=1 ;;
      --store-url) STORE_URL="${2:?--store-url needs a postgresql:// URL}"; ROUTER_FLAG=--store-url; shift ;;
      --tls-pem) TLS_PEM="${2:?--tls-pem needs a file}"; ROUTER_FLAG=--tls-pem; shift ;;
      --router-port) WANT_ROUTER_PORT="${2:?--router-port needs a number}"; ROUTER_FLAG=--router-port; shift ;;
      --plain-http) PLAIN_HTTP=1 ;;
      --no-start) NO_START=1 ;;
      --no-engines) NO_ENGINES=1 ;;
      --uninstall) UNINSTALL=1 ;;
      --purge) PURGE=1 ;;
      -y|--yes) YES=1 ;;
      -h|--help) usage; return 0 ;;
      *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
  done
  case "$WANT_PORT" in ""|*[!0-9]*) [ -z "$WANT_PORT" ] || die "--port must be a number, got $WANT_PORT" ;; esac
  [ "$PURGE" = 0 ] || [ "$UNINSTALL" = 1 ] || die "--purge goes with --uninstall"
  [ -z "$USER_CERT$USER_KEY" ] || { [ -n "$USER_CERT" ] && [ -n "$USER_KEY" ]; } || die "--tls-cert and --tls-key go together"
  if [ -n "$JOIN_URL" ]; then
    case "$JOIN_URL" in http://*|https://*) ;; *) die "--join needs the router's http(s):// URL, got $JOIN_URL" ;; esac
    [ -n "$JOIN_TOKEN" ] || die "--join needs --token (or APPLIANCE_JOIN_TOKEN): the router's join token"
    [ "$UNINSTALL" = 0 ] || die "--join does not go with --uninstall"
    [ -n "$WANT_BIND" ] || WANT_BIND=0.0.0.0  # the router must reach the box
  elif [ -n "$ADVERTISE_URL" ] || [ "$TOKEN_FLAG" = 1 ]; then
    die "--token and --advertise-url go with --join URL"
  fi
  if [ "$ROUTER" = 1 ] && [ "$UNINSTALL" = 0 ]; then
    [ -z "$JOIN_URL" ] || die "--router does not go with --join: a router is the fleet's front door, not one of its boxes"
    [ -n "$STORE_URL" ] || die "--router needs --store-url postgresql://... (or APPLIANCE_STORE_URL): the fleet's shared store"
    case "$STORE_URL" in postgresql://*|postgres://*) ;;
      *) die "--store-url must be a postgresql:// URL (the store the boxes share), got ${STORE_URL%%://*}://..." ;; esac
    case "$WANT_ROUTER_PORT" in ""|*[!0-9]*) [ -z "$WANT_ROUTER_PORT" ] || die "--router-port must be a number, got $WANT_ROUTER_PORT" ;; esac
    if [ -n "$TLS_PEM" ]; then
      [ -f "$TLS_PEM" ] && [ -r "$TLS_PEM" ] || die "--tls-pem $TLS_PEM: not a readable file (certificate chain and key in one PEM)"
      grep -q "PRIVATE KEY" "$TLS_PEM" && grep -q "CERTIFICATE" "$TLS_PEM" \
        || die "--tls-pem $TLS_PEM: needs the certificate chain and the private key in one file (cat fullchain.pem privkey.pem)"
      TLS_PEM=$(cd "$(dirname "$TLS_PEM")" && pwd)/$(basename "$TLS_PEM")
    fi
    [ -z "$ENGINES" ] || die "--engines does not go with --router: the router runs no engines"
    [ -z "$USER_CERT" ] || die "--tls-cert and --tls-key are the box's: the router takes --tls-pem"
    [ -z "$WANT_PORT$WANT_BIND" ] || die "--port and --bind are the box's: the router takes --router-port (it binds 0.0.0.0)"
    [ "$PLAIN_HTTP" = 0 ] || die "--plain-http is the box's: the router speaks plain HTTP whenever --tls-pem is not given"
    COMMAND=router NO_ENGINES=1
  elif [ "$ROUTER" = 0 ] && [ -n "$ROUTER_FLAG" ]; then
    die "$ROUTER_FLAG goes with --router"
  fi
  for c in uname sed grep tar mkdir mktemp awk; do need_cmd "$c"; done
  has curl || has wget || die "curl or wget is required (apt-get install curl)"
  [ -z "$PREFIX" ] || { mkdir -p "$PREFIX" && PREFIX=$(cd "$PREFIX" && pwd); }
  SCRIPT_DIR=""
  case "$0" in */install.sh|install.sh) SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd) ;; esac
  layout
  if [ "$UNINSTALL" = 1 ]; then uninstall; return 0; fi

  detect_os; detect_init; detect_vast; find_python; detect_gpu
  [ "$ROUTER" = 0 ] || say "router mode: \`appliance router\` (HAProxy) as the service, no engines"
  say "box: $OS_ID $OS_VERSION $ARCH; NVIDIA GPUs (NVML): $GPUS; init: $INIT; vast.ai: $([ "$VAST" = 1 ] && echo yes || echo no)"
  say "code $CODE, configuration $CONFIG_DIR, data $DATA"
  [ -f "$CONFIG" ] && say "upgrading in place: the configuration, keys, models and data are kept"
  locate_source
  system_packages
  daemon_env
  if [ "$ROUTER" = 1 ]; then
    router_haproxy
    router_ports
    write_router_config
    BIND=0.0.0.0 TLS_CERT="" FINGERPRINT=""
    admin_key
  else
    engines
    pick_port
    tls_setup
    write_config
    admin_key
  fi
  choose_manager
  receipt
  join_fleet
  start_service
  if [ "$NO_START" = 1 ]; then return 0; fi
  if [ "$ROUTER" = 1 ]; then router_note; else closing_note; fi
}

main "$@"
