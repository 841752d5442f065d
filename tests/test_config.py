"""Configuration: the shipped default is valid; bad files give one clear line each, exit non-zero,
and start nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance", *args], capture_output=True, text=True,
                          timeout=60, env=env, cwd=ROOT)


def test_shipped_default_config_is_valid() -> None:
    cfg = load_config(ROOT / "config.toml")
    assert cfg.profile == "ultra-minimal"
    assert cfg.server.port == 8080 and cfg.server.host == "127.0.0.1"
    assert all(m.engine in cfg.engines for m in cfg.models.values())


def test_empty_config_gets_every_default() -> None:
    cfg = parse_config({})
    assert cfg.server.port == 8080 and cfg.scheduler.max_wait_s is None and cfg.engines == {}


def test_idle_timeout_defaults_per_engine_kind_and_can_be_set() -> None:
    """Issue 13 item 4: the upstream idle timeout is configured per engine, its default per kind."""
    engines = {name: {"kind": "worker", "worker": name, "model_path": "x", "port": 9000 + i}
               for i, name in enumerate(("text", "embed", "speech", "diffusers"))}
    engines["llm"] = {"kind": "vllm", "model": "m", "port": 8001}
    engines["fast"] = {"kind": "worker", "worker": "diffusers", "model_path": "x", "port": 9100, "idle_timeout_s": 30}
    cfg = parse_config({"engines": engines})
    got = {name: e.idle_timeout_s for name, e in cfg.engines.items() if hasattr(e, "idle_timeout_s")}
    assert got == {"text": 900.0, "embed": 120.0, "speech": 300.0, "diffusers": 1200.0, "llm": 300.0, "fast": 30.0}
    with pytest.raises(ConfigError, match=r"engines\.llm\.idle_timeout_s"):
        parse_config({"engines": {"llm": {**engines["llm"], "idle_timeout_s": 0}}})


BAD = {
    "unknown key": ('[server]\nprot = 8080\n', "server.prot: unknown key"),
    "wrong type": ('[server]\nport = "eighty"\n', "server.port: must be an integer, got 'eighty'"),
    "out-of-range port": ('[engines.vllm]\nkind = "vllm"\nmodel = "m"\nport = 70000\n',
                          "engines.vllm.port: must be 1-65535, got 70000"),
    "missing model": ('[engines.vllm]\nkind = "vllm"\nport = 8001\n', "engines.vllm.model: required key missing"),
    "unknown engine kind": ('[engines.x]\nkind = "ollama"\nport = 9\n',
                            "engines.x: kind must be one of vllm, comfyui, worker, openwebui, got 'ollama'"),
    "model on unknown engine": ('[models.a]\nengine = "nope"\nmodality = "text"\n',
                                "models.a.engine: unknown engine 'nope' (defined: none)"),
    "bad modality": ('[engines.e]\nkind = "worker"\nworker = "embed"\nmodel_path = "x"\n'
                     '[models.a]\nengine = "e"\nmodality = "video"\n',
                     "models.a.modality: must be one of 'text', 'image', 'speech', 'embedding' or 'transcription', "
                     "got 'video'"),
    "port clash": ('[engines.a]\nkind = "worker"\nworker = "embed"\nmodel_path = "x"\nport = 9000\n'
                   '[engines.b]\nkind = "worker"\nworker = "text"\nmodel_path = "y"\nport = 9000\n',
                   "engines.b.port: 9000 is already used by engines.a"),
    "invalid toml": ('[server\nport = 1\n', "invalid TOML"),
    # documented but never applied, now removed: the file is told why instead of "unknown key"
    "footprint_headroom does nothing": ("[scheduler]\nfootprint_headroom = 1.05\n",
                                        "scheduler.footprint_headroom: removed: it was never applied"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_names_file_and_key(tmp_path: Path, case: str) -> None:
    text, expected = BAD[case]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert any(line.startswith(f"{path}: ") and expected in line for line in err.value.lines), err.value.lines


@pytest.mark.parametrize("case", ["unknown key", "out-of-range port", "missing model"])
def test_check_config_and_serve_exit_non_zero_with_one_line(tmp_path: Path, case: str) -> None:
    text, expected = BAD[case]
    path = tmp_path / "bad.toml"
    path.write_text(text + '\n[gpu]\nprobe = "declared"\n')
    env = {**os.environ, "APPLIANCE_STATE_DIR": str(tmp_path / "state")}
    for args in (["check-config", str(path)], ["serve", "--config", str(path), "--port", "18999"]):
        proc = run_cli(*args, env=env)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and str(path) in lines[0]
    # nothing was started: serve never created the state directory it was pointed at
    assert not (tmp_path / "state").exists()


def test_check_config_accepts_the_default(tmp_path: Path) -> None:
    proc = run_cli("check-config", str(ROOT / "config.toml"))
    assert proc.returncode == 0 and "ok" in proc.stdout


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[server]\nport = 0\n")
    proc = run_cli("check-config", env={**os.environ, "APPLIANCE_CONFIG": str(path)})
    assert proc.returncode == 2 and "server.port: must be 1-65535, got 0" in proc.stderr


def test_fleet_settings_are_cross_checked_naming_key_and_file() -> None:
    pg = {"url": "postgresql://appliance@db.example/appliance"}
    with pytest.raises(ConfigError) as err:
        parse_config({"fleet": {"enabled": True}}, source="box.toml")
    assert err.value.lines == ["box.toml: fleet.enabled: needs store.url = \"postgresql://...\" (the registry, keys "
                               "and jobs the boxes share, as `appliance fleet join` writes it)"]
    with pytest.raises(ConfigError, match=r"box.toml: fleet.advertise_url: required when server.host is a wildcard"):
        parse_config({"fleet": {"enabled": True}, "store": pg, "server": {"host": "0.0.0.0", "plain_http": True}},
                     source="box.toml")
    with pytest.raises(ConfigError, match=r"box.toml: fleet.expire_s: 5 s must be longer than fleet.heartbeat_s"):
        parse_config({"fleet": {"heartbeat_s": 5, "expire_s": 5}}, source="box.toml")
    with pytest.raises(ConfigError, match=r"fleet.forget_after_h: 0.001 h must be longer than fleet.expire_s"):
        parse_config({"fleet": {"forget_after_h": 0.001}}, source="box.toml")
    with pytest.raises(ConfigError, match=r"box.toml: fleet.router_url: .*must be an http:// or https:// URL"):
        parse_config({"fleet": {"router_url": "router:8443"}}, source="box.toml")
    cfg = parse_config({"fleet": {"enabled": True, "advertise_url": "http://203.0.113.7:41234/"}, "store": pg,
                        "server": {"host": "0.0.0.0", "plain_http": True}})
    assert cfg.fleet.advertise_url == "http://203.0.113.7:41234"
