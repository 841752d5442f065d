"""The CLI finds its daemon the way install.sh configured it: the receipt in the environment it runs from
names the configuration (host, port, TLS) and the admin key file, so `status`, `models` and every other
command work on a non-default port, over HTTPS with a generated certificate, without any variable; a
checkout's ./config.toml no longer shadows the installed configuration; APPLIANCE_URL still wins."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
from pathlib import Path

from daemon_harness import ROOT, free_port, wait_for

SITE = site.getsitepackages()[0]


def make_venv(tmp: Path) -> Path:
    """An environment like install.sh's (its sys.prefix holds the receipt), running this checkout."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    return venv


def run(venv: Path, *args: str, env: dict[str, str] | None = None,
        cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    base.update({"PYTHONPATH": f"{ROOT}:{SITE}", "COLUMNS": "250", **(env or {})})
    return subprocess.run([str(venv / "bin" / "python"), "-m", "appliance", *args], capture_output=True, text=True,
                          timeout=120, env=base, cwd=cwd, check=False)


def write_receipt(venv: Path, config: Path, state: Path, **extra: str) -> None:
    lines = [f'prefix = "{venv.parent}"', f'config = "{config}"', f'state_dir = "{state}"', 'manager = ""']
    lines += [f'{k} = "{v}"' for k, v in extra.items()]
    (venv / "appliance-install.toml").write_text("\n".join(lines) + "\n")


def generate_cert(where: Path) -> tuple[Path, Path, str]:
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "397", "-subj", "/CN=appliance", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    fp = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(cert)], check=True,
                        capture_output=True, text=True, timeout=60).stdout.split("=", 1)[1].strip()
    return cert, key, fp


def start(venv: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env["PYTHONPATH"] = f"{ROOT}:{SITE}"
    with log.open("wb") as out:
        return subprocess.Popen([str(venv / "bin" / "python"), "-m", "appliance", "serve"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def test_status_and_models_reach_a_daemon_on_a_non_default_port_without_variables(tmp_path: Path) -> None:
    venv = make_venv(tmp_path)
    port, state = free_port(), tmp_path / "state"
    config = tmp_path / "etc" / "config.toml"
    config.parent.mkdir()
    config.write_text(f'[server]\nport = {port}\nstate_dir = "{state}"\n[gpu]\nprobe = "declared"\n')
    write_receipt(venv, config, state)
    proc = start(venv, tmp_path / "daemon.log")  # in the checkout, whose ./config.toml says port 8080
    try:
        wait_for(lambda: run(venv, "status", "--json").returncode == 0, 60, "the daemon", interval=0.5)
        out = run(venv, "status")
        assert out.returncode == 0 and f"config {config}" in out.stdout, out
        models = run(venv, "models", "--json")
        assert json.loads(models.stdout)["daemon"] is True, models
        # APPLIANCE_URL still wins (a daemon elsewhere): nothing listens there
        elsewhere = run(venv, "status", env={"APPLIANCE_URL": f"http://127.0.0.1:{free_port()}"})
        assert elsewhere.returncode == 1 and "cannot reach the daemon" in elsewhere.stderr
        assert "(daemon not reachable" in run(venv, "models", env={"APPLIANCE_URL": f"http://127.0.0.1:{free_port()}"}
                                              ).stdout
    finally:
        stop(proc)
    assert f"configuration: {config}" in (tmp_path / "daemon.log").read_text()
    assert run(venv, "check-config").stdout.startswith(f"{config}: ok")


def test_serve_in_a_checkout_reads_the_installed_configuration_not_the_checkouts(tmp_path: Path) -> None:
    venv = make_venv(tmp_path)
    (tmp_path / "config.toml").write_text("this is not toml = [")  # a checkout's own file, in the cwd
    installed = tmp_path / "installed.toml"
    installed.write_text('[gpu]\nprobe = "declared"\n')
    write_receipt(venv, installed, tmp_path / "state")
    out = run(venv, "check-config", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith(f"{installed}: ok"), out


def test_https_with_a_generated_certificate_and_the_installed_key(tmp_path: Path) -> None:
    venv = make_venv(tmp_path)
    port, state = free_port(), tmp_path / "state"
    cert, key, fingerprint = generate_cert(tmp_path)
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\nport = {port}\nstate_dir = "{state}"\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
                      '[gpu]\nprobe = "declared"\n')
    created = run(venv, "keys", "create", "--name", "admin", "--admin", "--config", str(config))
    assert created.returncode == 0, created
    key_file = tmp_path / "admin.key"
    key_file.write_text(created.stdout.strip() + "\n")
    key_file.chmod(0o600)
    write_receipt(venv, config, state, key_file=str(key_file), tls_cert=str(cert))
    proc = start(venv, tmp_path / "daemon.log")
    try:
        wait_for(lambda: run(venv, "status", "--json").returncode == 0, 60, "the HTTPS daemon", interval=0.5)
        url = f"https://127.0.0.1:{port}/api/status"
        bearer = f"Authorization: Bearer {created.stdout.strip()}"
        ok = subprocess.run(["curl", "-fsS", "--cacert", str(cert), "-H", bearer, url], capture_output=True, text=True,
                            timeout=30)
        assert ok.returncode == 0 and json.loads(ok.stdout)["config"] == str(config), ok
        assert subprocess.run(["curl", "-fsS", "--cacert", str(cert), url], capture_output=True,
                              timeout=30).returncode != 0  # the key is required
        assert subprocess.run(["curl", "-fsS", f"http://127.0.0.1:{port}/health"], capture_output=True,
                              timeout=30).returncode != 0  # no plain HTTP on the TLS port
        served = subprocess.run(f"openssl s_client -connect 127.0.0.1:{port} </dev/null 2>/dev/null | "
                                "openssl x509 -noout -fingerprint -sha256", shell=True, capture_output=True,
                                text=True, timeout=60).stdout
        assert served.split("=", 1)[1].strip() == fingerprint
    finally:
        stop(proc)


def test_a_public_bind_without_tls_is_refused_unless_plain_http_is_chosen(tmp_path: Path) -> None:
    venv = make_venv(tmp_path)
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\nport = {free_port()}\nstate_dir = "{tmp_path / "state"}"\n'
                      '[gpu]\nprobe = "declared"\n')
    assert run(venv, "keys", "create", "--name", "admin", "--config", str(config)).returncode == 0
    # 192.0.2.1 (TEST-NET-1) is not loopback; the daemon refuses before it would bind
    out = run(venv, "serve", "--config", str(config), "--host", "192.0.2.1")
    assert out.returncode == 2 and "refusing to serve plain HTTP on 192.0.2.1" in out.stderr, out
    config.write_text(config.read_text().replace("[gpu]", "plain_http = true\n[gpu]"))
    chosen = run(venv, "serve", "--config", str(config), "--host", "192.0.2.1")
    assert "refusing" not in chosen.stderr  # it went on to bind (and this box has no such address)
