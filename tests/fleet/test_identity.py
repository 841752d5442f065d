"""The box's one identity: configured, else generated once and kept in <state_dir>/box_id."""

from __future__ import annotations

from pathlib import Path

from appliance.config import parse_config
from appliance.fleet.identity import box_identity, new_box_id


def test_a_generated_id_is_kept_and_a_configured_one_wins(tmp_path: Path) -> None:
    cfg = parse_config({"server": {"state_dir": str(tmp_path / "state")}})
    made, fresh = box_identity(cfg, cfg.state_path())
    assert fresh and (cfg.state_path() / "box_id").read_text().strip() == made
    assert box_identity(cfg, cfg.state_path()) == (made, False)  # the next start, the CLI: the same id
    configured = parse_config({"server": {"state_dir": str(tmp_path / "state")}, "jobs": {"box_id": "gpu-7"}})
    assert box_identity(configured, configured.state_path()) == ("gpu-7", False)


def test_an_id_written_meanwhile_by_another_process_is_the_one_kept(tmp_path: Path) -> None:
    cfg = parse_config({"server": {"state_dir": str(tmp_path)}})
    (tmp_path / "box_id").write_text("theirs-0001\n")
    assert box_identity(cfg, tmp_path) == ("theirs-0001", False)
    assert list(tmp_path.iterdir()) == [tmp_path / "box_id"]  # no temporary file left
    (tmp_path / "box_id").write_text("")  # left empty: made again
    made, fresh = box_identity(cfg, tmp_path)
    assert fresh and made and (tmp_path / "box_id").read_text().strip() == made


def test_generated_ids_are_safe_in_a_url_path() -> None:
    assert new_box_id("C.12345 (vast)/x", "ab12cd34") == "C.12345-vast-x-ab12cd34"
    assert new_box_id("", "ab12cd34") == "box-ab12cd34"
