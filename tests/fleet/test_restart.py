"""After a join or a leave: the installed service is restarted when `appliance service` knows how, else the
user is told how to restart the daemon."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.fleet import cli
from appliance.install_receipt import Receipt


def _receipt(manager: str) -> Receipt:
    p = Path("/opt/appliance")
    return Receipt(path=p / "appliance-install.toml", prefix=p, config=p / "config.toml", state_dir=p / "data",
                   key_file=None, tls_cert=None, manager=manager, unit="appliance.service",
                   supervisord_conf=None, program="appliance")


def test_the_installed_service_is_restarted_unless_told_not_to(monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    restarted: list[bool] = []
    monkeypatch.setattr("appliance.service_cli.restart", lambda: restarted.append(True))
    monkeypatch.setattr(cli, "installed", lambda: _receipt("systemd"))
    cli._restart(False, "to serve as a fleet box")
    assert restarted == [True] and "restarting the service to serve as a fleet box (systemd)" in capsys.readouterr().out
    cli._restart(True, "to serve as a fleet box")
    assert restarted == [True] and "`appliance service restart`" in capsys.readouterr().out
    monkeypatch.setattr(cli, "installed", lambda: None)  # a checkout: `appliance serve` by hand
    cli._restart(False, "to serve on its own again")
    assert restarted == [True] and "stop `appliance serve` and start it again" in capsys.readouterr().out
