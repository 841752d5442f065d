"""The service files install.sh installs: the systemd unit verifies with real paths, and the appliance
really runs under supervisord, both ways install.sh uses it: a supervisord of its own (hosts without
systemd or a supervisord) and a program file dropped into a running supervisord's conf.d (vast.ai), where a
killed daemon is started again."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import ROOT, free_port, wait_for

REAL_BIN = Path(sys.executable).parent


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    """A stand-in for install.sh's environment: bin/appliance runs this checkout (the shared test venv does
    not install the project), bin/supervisord and bin/supervisorctl are the real ones."""
    root = tmp_path / "venv"
    (root / "bin").mkdir(parents=True)
    exe = root / "bin" / "appliance"
    exe.write_text(f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{sys.executable}" -m appliance "$@"\n')
    exe.chmod(0o755)
    for tool in ("supervisord", "supervisorctl"):
        (root / "bin" / tool).symlink_to(REAL_BIN / tool)
    return root


def render(template: Path, out: Path, *, venv: Path, config: Path, state: Path, port: int,
           command: str = "serve") -> Path:
    text = template.read_text()
    for key, value in (("@VENV@", str(venv)), ("@CONFIG@", str(config)), ("@STATE@", str(state)),
                       ("@PORT@", str(port)), ("@COMMAND@", command)):
        text = text.replace(key, value)
    out.write_text(text)
    return out


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def write_config(tmp_path: Path, port: int) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\nport = {port}\nstate_dir = "{tmp_path / "state"}"\n[gpu]\nprobe = "declared"\n')
    return config


@contextlib.contextmanager
def supervisord(conf: Path, venv: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if k != "APPLIANCE_STATE_DIR"}
    sup = subprocess.Popen([str(venv / "bin" / "supervisord"), "-n", "-c", str(conf)], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield sup
    finally:
        if sup.poll() is None:
            subprocess.run([str(venv / "bin" / "supervisorctl"), "-c", str(conf), "shutdown"], capture_output=True,
                           timeout=60)
            try:
                sup.wait(60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(sup.pid, signal.SIGKILL)
                sup.wait(10)


def test_install_script_parses() -> None:
    assert subprocess.run(["sh", "-n", str(ROOT / "install.sh")]).returncode == 0


def test_install_script_runs_nothing_when_truncated() -> None:
    """Everything is inside main(), called on the last line: a partial download defines functions only."""
    lines = (ROOT / "install.sh").read_text().splitlines()
    assert lines[-1] == 'main "$@"'
    half = "\n".join(lines[: len(lines) // 2])
    out = subprocess.run(["sh", "-c", half + "\n"], capture_output=True, text=True, timeout=30)
    assert out.stdout == "" and out.returncode in (0, 2), out


def test_systemd_unit_verifies(tmp_path: Path, venv: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is installed on the test machines"
    unit = render(ROOT / "systemd" / "appliance.service", tmp_path / "appliance.service", venv=venv,
                  config=ROOT / "config.toml", state=tmp_path / "state", port=8080)
    text = unit.read_text()
    for line in ("Type=notify", f"ExecStart={venv}/bin/appliance serve", "KillMode=mixed", "WatchdogSec=",
                 "Restart=on-failure", "StartLimitBurst=", "StateDirectory=", "LogsDirectory="):
        assert line in text, line
    settings = [ln for ln in text.splitlines() if not ln.startswith("#")]
    for hides_gpus in ("PrivateDevices=", "DeviceAllow=", "DevicePolicy=", "MemoryDenyWriteExecute="):
        assert not any(ln.startswith(hides_gpus) for ln in settings), hides_gpus
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    (tmp_path / "router").mkdir()
    router = render(ROOT / "systemd" / "appliance.service", tmp_path / "router" / "appliance.service", venv=venv,
                    config=ROOT / "config.toml", state=tmp_path / "state", port=8443, command="router")
    assert f"ExecStart={venv}/bin/appliance router --config" in router.read_text()
    assert "@" not in "".join(ln for ln in router.read_text().splitlines() if not ln.startswith("#"))


def test_runs_under_its_own_supervisord(tmp_path: Path, venv: Path) -> None:
    port = free_port()
    state = tmp_path / "state"
    (state / "run").mkdir(parents=True)
    (state / "logs").mkdir()
    config = write_config(tmp_path, port)
    conf = render(ROOT / "packaging" / "supervisord.conf", state / "run" / "supervisord.conf", venv=venv,
                  config=config, state=state, port=port)
    with supervisord(conf, venv) as sup:
        wait_for(lambda: healthy(port), 60, "the appliance under supervisord", interval=0.2)
        ctl = [str(venv / "bin" / "supervisorctl"), "-c", str(conf)]
        wait_for(lambda: "RUNNING" in subprocess.run([*ctl, "status", "appliance"], capture_output=True,
                                                     text=True, timeout=30).stdout,
                 30, "supervisord to report RUNNING (after startsecs)", interval=0.5)
        assert (state / "data").is_dir()  # the daemon used the state directory supervisord gave it
        subprocess.run([*ctl, "shutdown"], capture_output=True, timeout=60)
        assert sup.wait(60) == 0
        assert not healthy(port)
        log = (state / "logs" / "daemon.log").read_text()
        assert "Application shutdown complete" in log and f"configuration: {config}" in log


def test_program_file_in_a_running_supervisords_confd_restarts_a_killed_daemon(tmp_path: Path, venv: Path) -> None:
    port = free_port()
    confd = tmp_path / "conf.d"
    confd.mkdir()
    main = tmp_path / "supervisord.conf"
    main.write_text(f"[unix_http_server]\nfile={tmp_path}/sup.sock\n[supervisord]\nlogfile={tmp_path}/sup.log\n"
                    f"pidfile={tmp_path}/sup.pid\n[rpcinterface:supervisor]\n"
                    "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
                    f"[supervisorctl]\nserverurl=unix://{tmp_path}/sup.sock\n[include]\nfiles={confd}/*.conf\n")
    config = write_config(tmp_path, port)
    ctl = [str(venv / "bin" / "supervisorctl"), "-c", str(main)]
    with supervisord(main, venv):
        wait_for(lambda: subprocess.run([*ctl, "pid"], capture_output=True, timeout=30).returncode == 0, 30,
                 "supervisord's socket", interval=0.2)
        render(ROOT / "packaging" / "supervisor-program.conf", confd / "appliance.conf", venv=venv, config=config,
               state=tmp_path / "state", port=port)
        program = (confd / "appliance.conf").read_text()
        assert "stopasgroup=true" in program and "stdout_logfile=/dev/stdout" in program
        assert subprocess.run([*ctl, "reread"], capture_output=True, timeout=30).returncode == 0
        assert subprocess.run([*ctl, "update"], capture_output=True, timeout=30).returncode == 0
        wait_for(lambda: healthy(port), 60, "the appliance as a conf.d program", interval=0.2)

        def daemon_pid() -> int:
            out = subprocess.run([*ctl, "pid", "appliance"], capture_output=True, text=True, timeout=30).stdout
            return int(out.strip()) if out.strip().isdigit() else 0

        first = daemon_pid()
        assert first > 0
        os.kill(first, signal.SIGKILL)  # an unexpected death: autorestart=unexpected starts it again
        wait_for(lambda: daemon_pid() not in (0, first) and healthy(port), 60, "supervisord to restart the daemon",
                 interval=0.2)


def test_the_router_runs_under_its_own_supervisord(tmp_path: Path, venv: Path) -> None:
    """install.sh --router renders the same file with `router`: the router (and its HAProxy) come up, its
    /health answers on the API port (what install.sh waits for), and a shutdown stops HAProxy too."""
    port, api_port = free_port(), free_port()
    state = tmp_path / "state"
    (state / "run").mkdir(parents=True)
    (state / "logs").mkdir()
    config = tmp_path / "router.toml"
    config.write_text(f'[server]\nstate_dir = "{state}"\n[store]\nurl = "postgresql://a@127.0.0.1:1/none"\n'
                      f'[router]\nhost = "127.0.0.1"\nport = {port}\napi_port = {api_port}\n')
    conf = render(ROOT / "packaging" / "supervisord.conf", state / "run" / "supervisord.conf", venv=venv,
                  config=config, state=state, port=port, command="router")
    assert f"{venv}/bin/appliance router --config {config}" in conf.read_text()
    with supervisord(conf, venv) as sup:
        wait_for(lambda: healthy(api_port), 60, "the router under supervisord", interval=0.2)
        pid_file = state / "router" / "haproxy.pid"
        master = int(pid_file.read_text().split()[0])
        assert b"haproxy" in Path(f"/proc/{master}/cmdline").read_bytes()
        assert oct((state / "join.token").stat().st_mode & 0o777) == "0o600"
        subprocess.run([str(venv / "bin" / "supervisorctl"), "-c", str(conf), "shutdown"], capture_output=True,
                       timeout=60)
        assert sup.wait(60) == 0
        assert not healthy(api_port) and not Path(f"/proc/{master}").exists()
