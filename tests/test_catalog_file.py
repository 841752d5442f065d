"""`server.catalog_file` holds wherever a catalog is read: the daemon, the worker adapter's command
line and the `models`/`pull`/`plan` commands.

Regression: the worker adapter loaded the bundled catalog whatever the configuration said, so a
model's `worker_args` from a site catalog never reached its worker; the catalog commands ignored the
setting too.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from appliance.catalog_cli import models_command
from appliance.config import parse_config
from appliance.engines.base import EngineContext
from appliance.engines.engine import build_adapter

SITE_CATALOG = """
[models.site-voice]
name = "A site's own voice"
modality = "speech"
engine = "worker:speech"
devices = ["cpu"]
disk_gb = 0.1
vram_gib = 0.5
ram_gib = 0.5
licence = "MIT"
serve_name = "piper:site"
worker_args = ["--speaker", "7"]

[[models.site-voice.files]]
repo = "site/voice"
path = "voice.onnx"
"""


def site_config(tmp_path: Path) -> dict[str, object]:
    (tmp_path / "catalog.toml").write_text(SITE_CATALOG)
    return {"server": {"state_dir": str(tmp_path / "state"), "catalog_file": str(tmp_path / "catalog.toml")},
            "engines": {"tts": {"kind": "worker", "worker": "speech", "model_path": "piper:site", "port": 8010}},
            "models": {"voice": {"engine": "tts", "modality": "speech", "catalog": "site-voice"}}}


def test_worker_flags_come_from_the_configured_catalog(tmp_path: Path) -> None:
    cfg = parse_config(site_config(tmp_path), "test")
    argv = build_adapter("tts", EngineContext(cfg, tmp_path / "state", "http://127.0.0.1:8080")).launch_spec().argv
    assert argv[argv.index("--speaker") + 1] == "7"


async def test_the_daemons_catalog_is_the_one_its_adapters_use(tmp_path: Path) -> None:
    from appliance.app import Appliance

    cfg = parse_config({**site_config(tmp_path), "gpu": {"probe": "declared", "declared_total_gb": 24}}, "test")
    app = Appliance(cfg, host="127.0.0.1", port=18080)
    try:
        assert app.ctx.catalog is not None and [m.id for m in app.ctx.catalog] == ["site-voice"]
        argv = app.engines["tts"].adapter.launch_spec().argv
        assert argv[argv.index("--speaker") + 1] == "7"
    finally:
        await app.shutdown()


def test_catalog_commands_read_the_configured_catalog(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        f'[server]\nstate_dir = "{tmp_path / "state"}"\ncatalog_file = "{tmp_path / "catalog.toml"}"\n')
    (tmp_path / "catalog.toml").write_text(SITE_CATALOG)
    app = typer.Typer()
    app.command("models")(models_command)
    app.command("other")(lambda: None)  # two commands: typer keeps the subcommand name
    args = ["models", "--json", "--daemon-url", "http://127.0.0.1:9", "--models-dir", str(tmp_path / "models")]
    runner = CliRunner()
    by_env = runner.invoke(app, args, env={"APPLIANCE_CONFIG": str(tmp_path / "config.toml")})
    assert by_env.exit_code == 0, by_env.output
    assert [m["id"] for m in json.loads(by_env.output)["models"]] == ["site-voice"]
    by_flag = runner.invoke(app, [*args, "--config", str(tmp_path / "config.toml")])
    assert [m["id"] for m in json.loads(by_flag.output)["models"]] == ["site-voice"]
    explicit = runner.invoke(app, [*args, "--catalog", str(Path("appliance/data/catalog.toml").resolve())],
                             env={"APPLIANCE_CONFIG": str(tmp_path / "config.toml")})
    assert "site-voice" not in explicit.output and explicit.exit_code == 0  # --catalog wins
    broken = runner.invoke(app, args, env={"APPLIANCE_CONFIG": str(tmp_path / "missing.toml")})
    assert broken.exit_code == 2 and "missing.toml: file not found" in broken.output
