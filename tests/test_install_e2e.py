"""install.sh end to end, as a new user meets it: `curl -fsSL http://127.0.0.1:PORT/install.sh | sh -s -- ...`
from a local HTTP server that also serves the project as a .tar.gz, with HOME in a temporary directory and
no inherited environment except the variables that point pip at this machine's local wheels.

With port 8080 taken the installer picks another, writes it into the configuration and prints it; on a
public bind it creates an admin key (0600) and a certificate, and the daemon answers HTTPS with them; the
printed URL and `appliance status` work without variables; the systemd unit rendered with the installed
paths verifies; a second run upgrades without losing configuration, key or data; `--uninstall` removes
the service and keeps the data; `--purge` removes it. Slow (a full install: minutes): one test."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import ROOT, wait_for

PIP_VARS = ("PIP_FIND_LINKS", "PIP_DEFAULT_TIMEOUT", "PIP_DISABLE_PIP_VERSION_CHECK", "PIP_CERT", "PIP_INDEX_URL",
            "PIP_EXTRA_INDEX_URL", "PIP_CACHE_DIR")


@contextlib.contextmanager
def http_server(directory: Path) -> Iterator[int]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def port_8080_taken() -> Iterator[None]:
    """Hold 127.0.0.1:8080 (as vast.ai's portal holds 8080). SO_REUSEADDR, as servers bind, so that a recent
    connection's TIME_WAIT does not make the bind fail; if it still fails, a real listener must hold it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        try:
            sock.bind(("127.0.0.1", 8080))
            sock.listen(1)
        except OSError:
            with socket.create_connection(("127.0.0.1", 8080), timeout=5):
                pass  # someone else listens there: taken all the same
        yield
    finally:
        sock.close()


def project_tarball(out: Path) -> Path:
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard"], capture_output=True,
                           text=True, check=True, timeout=60).stdout.split()
    tarball = out / "appliance.tar.gz"
    present = [f for f in files if (ROOT / f).exists()]
    subprocess.run(["tar", "-czf", str(tarball), "--transform", "s,^,appliance/,", *present], cwd=ROOT, check=True,
                   timeout=120)
    shutil.copy(ROOT / "install.sh", out / "install.sh")
    return tarball


def clean_env(home: Path) -> dict[str, str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    env.update({k: os.environ[k] for k in PIP_VARS if k in os.environ})
    return env


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-fsS", "--max-time", "10", *args], capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def _uninstalled_at_the_end(prefix: Path, env: dict[str, str]) -> Iterator[None]:
    """A failed assertion must not leave the installed supervisord and daemon running (they hold ports)."""
    try:
        yield
    finally:
        conf = prefix / "data" / "run" / "supervisord.conf"
        ctl = prefix / "lib" / "venv" / "bin" / "supervisorctl"
        if conf.exists() and ctl.exists():
            subprocess.run([str(ctl), "-c", str(conf), "shutdown"], capture_output=True, env=env, timeout=120)


@pytest.mark.timeout(2400)
def test_curl_pipe_sh_install_upgrade_uninstall(tmp_path: Path) -> None:
    served, home, prefix = tmp_path / "www", tmp_path / "home", tmp_path / "inst"
    served.mkdir()
    home.mkdir()
    project_tarball(served)
    env = clean_env(home)
    with http_server(served) as http_port, port_8080_taken(), _uninstalled_at_the_end(prefix, env):
        base = f"http://127.0.0.1:{http_port}"
        install = (f"curl -fsSL {base}/install.sh | sh -s -- --prefix {prefix} --source {base}/appliance.tar.gz "
                   "--bind 0.0.0.0 --no-engines -y")
        started = time.monotonic()
        first = subprocess.run(["sh", "-c", install], capture_output=True, text=True, env=env, timeout=2000)
        took = time.monotonic() - started
        print(f"\nfirst install: {took:.0f} s")
        assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
        out = first.stdout

        # port 8080 was taken: another port, said why, written into the configuration
        config = prefix / "etc" / "config.toml"
        port = tomllib.loads(config.read_text())["server"]["port"]
        assert port != 8080 and f"port 8080 is taken: using port {port}" in out
        key_file, cert = prefix / "etc" / "admin.key", prefix / "etc" / "tls" / "cert.pem"
        assert oct(key_file.stat().st_mode & 0o777) == "0o600"
        key = key_file.read_text().strip()
        fingerprint = re.search(r"certificate SHA-256 fingerprint: ([0-9A-F:]+)", out)
        served_fp = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(cert)],
                                   capture_output=True, text=True, timeout=30).stdout.split("=", 1)[1].strip()
        assert fingerprint and fingerprint.group(1) == served_fp

        # /health and /api/status over HTTPS with the generated certificate and key; the printed URL works
        auth = ["--cacert", str(cert), "-H", f"Authorization: Bearer {key}"]
        assert curl(*auth, f"https://127.0.0.1:{port}/health").returncode == 0
        status = curl(*auth, f"https://127.0.0.1:{port}/api/status")
        assert status.returncode == 0 and f'"config":"{config}"' in status.stdout.replace(" ", "")
        assert curl("--cacert", str(cert), f"https://127.0.0.1:{port}/api/status").returncode != 0  # key required
        printed = re.search(r"the appliance is up: (https://\S+)", out)
        assert printed and printed.group(1).endswith(f":{port}")
        assert curl(*auth, printed.group(1) + "/v1/models").returncode == 0, printed.group(1)

        # the CLI finds the daemon from the installed configuration and key, with no variables
        appliance = str(prefix / "bin" / "appliance")
        st = subprocess.run([appliance, "status"], capture_output=True, text=True, env={**env, "COLUMNS": "300"},
                            timeout=60)
        assert st.returncode == 0 and f"config {config}" in st.stdout.replace("\n", " "), st
        # supervisord reports STARTING until the program has run `startsecs`, whatever /health says: poll
        svc: list[subprocess.CompletedProcess[str]] = []

        def running() -> bool:
            svc[:] = [subprocess.run([appliance, "service", "status"], capture_output=True, text=True, env=env,
                                     timeout=60)]
            return svc[0].returncode == 0 and "RUNNING" in svc[0].stdout

        wait_for(running, 60, "supervisord to report the daemon RUNNING", interval=0.5)

        # the systemd unit, rendered with the installed paths, verifies
        unit = tmp_path / "appliance.service"
        unit.write_text((prefix / "lib" / "src" / "systemd" / "appliance.service").read_text()
                        .replace("@VENV@", str(prefix / "lib" / "venv")).replace("@CONFIG@", str(config))
                        .replace("@STATE@", str(prefix / "data")))
        verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
        assert verify.returncode == 0, verify.stderr

        # a second run upgrades in place: configuration, key and data kept, same port, same key works
        (prefix / "data" / "mine.txt").write_text("user data")
        before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (config, key_file, cert)}
        second = subprocess.run(["sh", "-c", install], capture_output=True, text=True, env=env, timeout=1200)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        assert "upgrading in place" in second.stdout and "keeping the configuration" in second.stdout
        assert before == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in before}
        assert (prefix / "data" / "mine.txt").read_text() == "user data"
        wait_for(lambda: curl(*auth, f"https://127.0.0.1:{port}/api/status").returncode == 0, 60, "after upgrade",
                 interval=0.5)

        # --uninstall removes the service and the environments, keeps configuration, keys and data
        uninstall = f"curl -fsSL {base}/install.sh | sh -s -- --prefix {prefix} --uninstall"
        gone = subprocess.run(["sh", "-c", uninstall], capture_output=True, text=True, env=env, timeout=300)
        assert gone.returncode == 0, gone.stderr
        wait_for(lambda: curl("-k", f"https://127.0.0.1:{port}/health").returncode != 0, 60, "the daemon to stop",
                 interval=0.5)
        assert not (prefix / "lib").exists() and not (prefix / "bin" / "appliance").exists()
        assert config.exists() and key_file.exists() and (prefix / "data" / "mine.txt").exists()

        purge = subprocess.run(["sh", "-c", uninstall + " --purge -y"], capture_output=True, text=True, env=env,
                               timeout=300)
        assert purge.returncode == 0, purge.stderr
        assert not prefix.exists()
