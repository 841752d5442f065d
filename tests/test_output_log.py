"""Engine output: the last lines in memory, and a size-rotated file with a bounded number of backups."""

from __future__ import annotations

from pathlib import Path

from appliance.supervisor.logs import OutputLog


def test_ring_keeps_the_last_lines_and_the_file_rotates(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "vllm.log"
    log = OutputLog(path, ring_lines=5, max_bytes=200, backups=2)
    for i in range(100):
        log.write_line(f"line {i:03d} ".encode() + b"x" * 20 + b"\n")
    log.close()
    assert log.tail(3) == [f"line {i:03d} " + "x" * 20 for i in (97, 98, 99)]
    assert len(log.tail(50)) == 5 and log.tail(0) == []
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["vllm.log", "vllm.log.1", "vllm.log.2"]  # bounded: older backups are dropped
    assert all(p.stat().st_size <= 200 + 40 for p in path.parent.iterdir())
    assert path.read_text().splitlines()[-1].startswith("line 099")
    assert "line 000" not in "".join(p.read_text() for p in path.parent.iterdir())


def test_undecodable_output_is_kept_readable(tmp_path: Path) -> None:
    log = OutputLog(tmp_path / "w.log")
    log.write_line(b"\xff\xfe progress 50%\r\n")
    log.close()
    assert log.tail(1) == ["\ufffd\ufffd progress 50%"]
