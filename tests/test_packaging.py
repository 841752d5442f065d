"""The service files install.sh installs: the systemd unit verifies, and the appliance really runs
under supervisord (the path for hosts without systemd, such as vast.ai containers)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from daemon_harness import ROOT, free_port, wait_for

VENV = Path(sys.executable).parent.parent


def render(template: Path, out: Path, *, config: Path, state: Path, port: int) -> Path:
    text = template.read_text()
    for key, value in (("@VENV@", str(VENV)), ("@CONFIG@", str(config)), ("@STATE@", str(state)),
                       ("@PORT@", str(port))):
        text = text.replace(key, value)
    out.write_text(text)
    return out


def test_install_script_parses() -> None:
    assert subprocess.run(["sh", "-n", str(ROOT / "install.sh")]).returncode == 0


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is installed on the test machines"
    unit = render(ROOT / "systemd" / "appliance.service", tmp_path / "appliance.service",
                  config=ROOT / "config.toml", state=tmp_path / "state", port=8080)
    text = unit.read_text()
    assert "Type=notify" in text and f"ExecStart={VENV}/bin/appliance serve" in text
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_runs_under_supervisord(tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "state"
    (state / "run").mkdir(parents=True)
    (state / "logs").mkdir()
    config = tmp_path / "config.toml"
    config.write_text('[gpu]\nprobe = "declared"\n')
    conf = render(ROOT / "packaging" / "supervisord.conf", state / "run" / "supervisord.conf",
                  config=config, state=state, port=port)
    env = {k: v for k, v in os.environ.items() if k != "APPLIANCE_STATE_DIR"}
    sup = subprocess.Popen([str(VENV / "bin" / "supervisord"), "-n", "-c", str(conf)], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        import urllib.request

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(healthy, 30, "the appliance under supervisord")
        ctl = [str(VENV / "bin" / "supervisorctl"), "-c", str(conf)]
        wait_for(lambda: "RUNNING" in subprocess.run([*ctl, "status", "appliance"], capture_output=True,
                                                     text=True, timeout=30).stdout,
                 30, "supervisord to report RUNNING (after startsecs)", interval=0.5)
        assert (state / "data").is_dir()  # the daemon used the state directory supervisord gave it
        subprocess.run([*ctl, "shutdown"], capture_output=True, timeout=60)
        assert sup.wait(60) == 0
        assert not healthy()
        assert "Application shutdown complete" in (state / "logs" / "daemon.log").read_text()
    finally:
        if sup.poll() is None:  # a failed check: take supervisord and everything it started down
            with contextlib.suppress(ProcessLookupError):
                os.killpg(sup.pid, signal.SIGKILL)
            sup.wait(10)
