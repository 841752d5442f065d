"""install.sh's pieces, run from the script itself without a full install: its last line (`main "$@"`) is left
off so the functions can be called one by one with the variables main would set. The whole install runs in
test_install_e2e.py; this covers what that run cannot meet here: vast.ai's portal on 8080 and its public
address, and the flags install.sh refuses."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from daemon_harness import ROOT

from appliance.gateway.keys import KeyStore
from appliance.store import open_store


def functions(tmp: Path) -> Path:
    lines = (ROOT / "install.sh").read_text().splitlines()
    assert lines[-1] == 'main "$@"'
    out = tmp / "functions.sh"
    out.write_text("\n".join(lines[:-1]) + "\n")
    venv = tmp / "venv" / "bin"
    if not venv.exists():
        venv.mkdir(parents=True)
        (venv / "python").symlink_to(sys.executable)
        (venv / "appliance").write_text(f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{sys.executable}" -m appliance "$@"\n')
        (venv / "appliance").chmod(0o755)
    return out


def sh(tmp: Path, script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    prelude = f'. "{functions(tmp)}"; VENV="{tmp / "venv"}"; CONFIG="{tmp / "none.toml"}"; '
    return subprocess.run(["sh", "-c", prelude + script], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", **(env or {})})


def test_vast_portal_on_8080_moves_the_appliance_and_says_why(tmp_path: Path) -> None:
    holder = socket.socket()
    try:
        try:
            holder.bind(("127.0.0.1", 8080))
            holder.listen(1)
        except OSError:
            pass  # something else holds it: taken either way
        out = sh(tmp_path, 'VAST=1 WANT_PORT="" WANT_BIND=""; pick_port; echo "PORT=$PORT"')
    finally:
        holder.close()
    assert out.returncode == 0, out.stderr
    port = int(out.stdout.strip().splitlines()[-1].removeprefix("PORT="))
    assert port != 8080
    assert f"port 8080 is taken (on vast.ai the instance portal, Caddy, or Jupyter listens there): using port {port}" \
        in out.stdout


def test_the_printed_url_is_vasts_public_address_and_mapped_port(tmp_path: Path) -> None:
    out = sh(tmp_path, 'VAST=1 BIND=0.0.0.0 PORT=8081 TLS_CERT="" KEY_NOTE=k KEY_FILE=/e/admin.key FINGERPRINT="" '
                       'BIN_DIR=/x/bin; closing_note',
             env={"PUBLIC_IPADDR": "203.0.113.5", "VAST_TCP_PORT_8081": "41234"})
    assert out.returncode == 0, out.stderr
    assert "the appliance is up: http://203.0.113.5:41234" in out.stdout
    assert "Authorization: Bearer $(cat /e/admin.key)" in out.stdout
    assert "localhost:<external>:8081:/:Appliance" in out.stdout  # how to route it through the portal


def test_a_generated_certificate_names_loopback_and_prints_its_fingerprint(tmp_path: Path) -> None:
    out = sh(tmp_path, f'CONFIG_DIR="{tmp_path / "etc"}" BIND=0.0.0.0 PLAIN_HTTP=0 USER_CERT="" USER_KEY=""; '
                       'tls_setup; echo "FP=$FINGERPRINT"')
    assert out.returncode == 0, out.stderr
    cert = tmp_path / "etc" / "tls" / "cert.pem"
    text = subprocess.run(["openssl", "x509", "-noout", "-text", "-in", str(cert)], capture_output=True, text=True,
                          timeout=30).stdout
    assert "IP Address:127.0.0.1" in text and "DNS:localhost" in text
    assert oct((tmp_path / "etc" / "tls" / "key.pem").stat().st_mode & 0o777) == "0o600"
    fp = out.stdout.strip().splitlines()[-1].removeprefix("FP=")
    assert len(fp.split(":")) == 32
    again = sh(tmp_path, f'CONFIG_DIR="{tmp_path / "etc"}" BIND=0.0.0.0 PLAIN_HTTP=0 USER_CERT="" USER_KEY=""; '
                         'tls_setup; echo "FP=$FINGERPRINT"')
    assert again.stdout.strip().splitlines()[-1] == f"FP={fp}"  # kept while it is far from expiry


def test_refused_flags(tmp_path: Path) -> None:
    script = tmp_path / "install.sh"
    script.write_text((ROOT / "install.sh").read_text())
    for args, message in ((["--purge"], "--purge goes with --uninstall"),
                          (["--port", "80x"], "--port must be a number"), (["--bogus"], "unknown option: --bogus"),
                          (["--tls-cert", "/c.pem"], "--tls-cert and --tls-key go together")):
        out = subprocess.run(["sh", str(script), *args], capture_output=True, text=True, timeout=60,
                             env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
        assert out.returncode != 0 and message in out.stderr, (args, out.stderr)


def test_on_vast_the_portal_token_is_accepted_beside_the_admin_key(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\nhost = "0.0.0.0"\nstate_dir = "{tmp_path / "state"}"\n')
    token = "f00d" * 12
    out = sh(tmp_path, f'VAST=1 BIND=0.0.0.0 CONFIG="{config}" KEY_FILE="{tmp_path / "admin.key"}"; admin_key',
             env={"OPEN_BUTTON_TOKEN": token})
    assert out.returncode == 0, out.stderr
    assert oct((tmp_path / "admin.key").stat().st_mode & 0o777) == "0o600"
    opened = open_store("", tmp_path / "state")
    store = KeyStore(opened)
    admin, portal = store.verify((tmp_path / "admin.key").read_text().strip()), store.verify(token)
    opened.close()
    assert admin is not None and admin.admin and portal is not None and portal.name == "vast-OPEN_BUTTON_TOKEN"


def test_join_flags_are_checked_before_anything_is_installed(tmp_path: Path) -> None:
    script = tmp_path / "install.sh"
    script.write_text((ROOT / "install.sh").read_text())
    for args, message in ((["--join", "https://router.example:8443"], "--join needs --token"),
                          (["--join", "router.example", "--token", "t"], "--join needs the router's http(s):// URL"),
                          (["--token", "t"], "--token and --advertise-url go with --join URL"),
                          (["--advertise-url", "http://203.0.113.9:41234"], "go with --join URL")):
        out = subprocess.run(["sh", str(script), *args], capture_output=True, text=True, timeout=60,
                             env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
        assert out.returncode != 0 and message in out.stderr, (args, out.stderr)


def test_join_runs_appliance_fleet_join_before_the_service_starts(tmp_path: Path) -> None:
    stub = tmp_path / "stub" / "bin"
    stub.mkdir(parents=True)
    record = tmp_path / "called"
    (stub / "appliance").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" "token=$APPLIANCE_JOIN_TOKEN" >"{record}"\n'
                                    'exit "${STUB_EXIT:-0}"\n')
    (stub / "appliance").chmod(0o755)
    join = (f'VENV="{tmp_path / "stub"}" BIN_DIR=/usr/local/bin CONFIG=/etc/appliance/config.toml '
            'JOIN_URL=https://router.example:8443 JOIN_TOKEN=s3cret ADVERTISE_URL=http://203.0.113.9:41234; join_fleet')
    out = sh(tmp_path, join)
    assert out.returncode == 0, out.stderr
    assert record.read_text().splitlines() == [
        "fleet", "join", "https://router.example:8443", "--config", "/etc/appliance/config.toml", "--no-restart",
        "--advertise-url", "http://203.0.113.9:41234", "token=s3cret"]  # the token only in the environment
    failed = sh(tmp_path, join, env={"STUB_EXIT": "1"})
    assert failed.returncode != 0 and "joining the fleet failed" in failed.stderr
    assert "s3cret" not in failed.stderr + failed.stdout
    assert sh(tmp_path, 'JOIN_URL=""; join_fleet').returncode == 0  # no --join: nothing to do


def test_router_flags_are_checked_before_anything_is_installed(tmp_path: Path) -> None:
    script = tmp_path / "install.sh"
    script.write_text((ROOT / "install.sh").read_text())
    pem = tmp_path / "cert-only.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    pg = "postgresql://appliance:pw@db.example:5432/appliance"
    for args, message in (
            (["--router", "--store-url", pg, "--join", "https://r.example", "--token", "t"],
             "--router does not go with --join"),
            (["--router"], "--router needs --store-url postgresql://"),
            (["--router", "--store-url", "sqlite:///x.db"], "--store-url must be a postgresql:// URL"),
            (["--router", "--store-url", pg, "--router-port", "44x"], "--router-port must be a number"),
            (["--router", "--store-url", pg, "--tls-pem", str(tmp_path / "none.pem")], "not a readable file"),
            (["--router", "--store-url", pg, "--tls-pem", str(pem)], "the certificate chain and the private key"),
            (["--router", "--store-url", pg, "--engines", "vllm"], "--engines does not go with --router"),
            (["--router", "--store-url", pg, "--port", "9000"], "--port and --bind are the box's"),
            (["--router", "--store-url", pg, "--plain-http"], "--plain-http is the box's"),
            (["--store-url", pg], "--store-url goes with --router"),
            (["--router-port", "8443"], "--router-port goes with --router")):
        out = subprocess.run(["sh", str(script), *args], capture_output=True, text=True, timeout=60,
                             env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
        assert out.returncode != 0 and message in out.stderr, (args, out.stderr)
        assert "pw@" not in out.stderr  # the database password is not echoed back
        assert not (tmp_path / ".local").exists()  # refused before anything was installed


def _stubs(tmp: Path, **scripts: str) -> str:
    """A PATH whose first directory holds these stub commands (name -> sh body)."""
    stub = tmp / "stubs"
    stub.mkdir(exist_ok=True)
    for name, body in scripts.items():
        (stub / name).write_text("#!/bin/sh\n" + body + "\n")
        (stub / name).chmod(0o755)
    return f"{stub}:/usr/bin:/bin"


def test_router_mode_installs_debians_haproxy_and_needs_26_or_later(tmp_path: Path) -> None:
    calls = tmp_path / "apt.log"
    path = _stubs(tmp_path, **{"apt-get": f'echo "apt-get $*" >>"{calls}"', "dpkg": "exit 1",
                               "id": 'echo 0', "haproxy": 'echo "HAProxy version 2.6.12-1+deb12u4 2026/10/17"'})
    out = sh(tmp_path, "ROUTER=1 INIT=none; system_packages; router_haproxy; echo \"BIN=$HAPROXY_BIN\"",
             env={"PATH": path})
    assert out.returncode == 0, out.stderr
    assert calls.read_text().splitlines() == ["apt-get update -qq", "apt-get install -y -qq haproxy"]
    assert out.stdout.strip().splitlines()[-1] == f"BIN={tmp_path / 'stubs' / 'haproxy'}"
    calls.unlink()
    box = sh(tmp_path, "ROUTER=0; system_packages", env={"PATH": path})  # a box installs espeak-ng, not HAProxy
    assert box.returncode == 0 and calls.read_text().splitlines()[-1] == "apt-get install -y -qq espeak-ng"
    old = _stubs(tmp_path, haproxy='echo "HA-Proxy version 2.2.9-2 2021/01/01"')
    out = sh(tmp_path, "ROUTER=1 INIT=none NEW_HAPROXY=0; router_haproxy", env={"PATH": old})
    assert out.returncode != 0 and "--router needs HAProxy 2.6 or later" in out.stderr


def test_router_config_tokens_and_the_join_note(tmp_path: Path) -> None:
    from appliance.config import load_config

    etc, data = tmp_path / "etc", tmp_path / "data"
    store_url = 'postgresql://appliance:p"w\\d@db.example:5432/appliance'
    setup = (f'CONFIG_DIR="{etc}" CONFIG="{etc / "config.toml"}" DATA="{data}" WANT_ROUTER_PORT=0 '
             f'TLS_PEM="" HAPROXY_BIN=/usr/sbin/haproxy; ')
    out = sh(tmp_path, setup + 'API_PORT=8090; PORT=18443; write_router_config; '
                               'echo "JOIN=$JOIN_TOKEN_FILE PORT=$PORT API=$API_PORT"',
             env={"STORE_URL": store_url, "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    cfg = load_config(etc / "config.toml")
    assert (cfg.store.url, cfg.router.port, cfg.router.api_port, cfg.router.haproxy_bin, cfg.router.tls_pem) == (
        store_url, 18443, 8090, "/usr/sbin/haproxy", "")
    assert cfg.state_path() == data
    assert oct((etc / "config.toml").stat().st_mode & 0o777) == "0o600"  # it holds the database password
    join = data / "join.token"
    assert out.stdout.strip().splitlines()[-1] == f"JOIN={join} PORT=18443 API=8090"
    assert oct(join.stat().st_mode & 0o777) == "0o600" and len(join.read_text().strip()) >= 32
    assert oct((data / "fleet.token").stat().st_mode & 0o777) == "0o600"
    assert "plain HTTP on port 18443" in out.stderr  # no --tls-pem: said, not silent
    token = join.read_text().strip()
    # again (an upgrade): the configuration and the token are kept, a different --store-url is not applied
    again = sh(tmp_path, setup + "write_router_config",
               env={"STORE_URL": "postgresql://other/db", "HOME": str(tmp_path)})
    assert again.returncode == 0, again.stderr
    assert "keeping store.url from" in again.stderr and load_config(etc / "config.toml").store.url == store_url
    assert join.read_text().strip() == token
    note = sh(tmp_path, f'TLS_PEM=/etc/r.pem PORT=18443 KEY_NOTE=k KEY_FILE=/e/admin.key BIN_DIR=/x/bin '
                        f'JOIN_TOKEN_FILE="{join}"; router_note', env={"PUBLIC_IPADDR": "203.0.113.7"})
    assert note.returncode == 0, note.stderr
    assert "./install.sh --join https://203.0.113.7:18443 --token TOKEN" in note.stdout
    assert f"the token is the content of {join}" in note.stdout and "/fleet" in note.stdout
    assert token not in note.stdout + out.stdout + out.stderr  # the token is never printed


def test_router_ports_refuse_a_taken_public_port_and_move_a_taken_api_port(tmp_path: Path) -> None:
    taken, api_holder = socket.socket(), socket.socket()
    try:
        taken.bind(("0.0.0.0", 0))
        taken.listen(1)
        try:
            api_holder.bind(("127.0.0.1", 8090))
            api_holder.listen(1)
            held = True
        except OSError:
            held = False  # something else holds it now (another test's router): it may let go meanwhile
        busy = sh(tmp_path, f"WANT_ROUTER_PORT={taken.getsockname()[1]}; router_ports")
        with socket.socket() as probe:
            probe.bind(("0.0.0.0", 0))
            free = probe.getsockname()[1]
        out = sh(tmp_path, f'WANT_ROUTER_PORT={free}; router_ports; echo "PORT=$PORT API=$API_PORT"')
    finally:
        taken.close()
        api_holder.close()
    assert busy.returncode != 0 and "is taken (choose another with --router-port)" in busy.stderr
    assert out.returncode == 0, out.stderr
    port, api = (int(p.split("=")[1]) for p in out.stdout.strip().splitlines()[-1].split())
    assert port == free and 8090 <= api < 8200 and api != port
    assert api != 8090 or not held
