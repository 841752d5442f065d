"""Fake GPU reporting, so the daemon's scheduler can be tested end to end on a CPU.

Owns the file `$APPLIANCE_FAKE_GPU_DIR/<pid>.json` = {"pid", "used_bytes", "name"}: written atomically
(temp file + os.replace) with the declared bytes while the model is loaded and 0 otherwise, removed at
exit. This is the format `appliance.gpu.FakeGpuProbe` reads. Must not be used on real CUDA boxes,
where the daemon reads NVML instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

FAKE_GPU_DIR_ENV = "APPLIANCE_FAKE_GPU_DIR"
FAKE_GPU_BYTES_ENV = "APPLIANCE_FAKE_GPU_BYTES"


@dataclass(frozen=True)
class FakeGpuReporter:
    directory: Path
    resident_bytes: int
    name: str
    pid: int

    @classmethod
    def from_env(cls, env: Mapping[str, str], name: str, pid: int) -> FakeGpuReporter | None:
        directory = env.get(FAKE_GPU_DIR_ENV, "")
        raw_bytes = env.get(FAKE_GPU_BYTES_ENV, "")
        if not directory or not raw_bytes:
            return None
        try:
            resident = int(raw_bytes)
        except ValueError:
            raise ValueError(f"{FAKE_GPU_BYTES_ENV} must be an integer, got {raw_bytes!r}") from None
        if resident < 0:
            raise ValueError(f"{FAKE_GPU_BYTES_ENV} must be >= 0, got {resident}")
        return cls(Path(directory), resident, name, pid)

    @property
    def path(self) -> Path:
        return self.directory / f"{self.pid}.json"

    def report(self, resident: bool) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        payload = {"pid": self.pid, "used_bytes": self.resident_bytes if resident else 0, "name": self.name}
        tmp = self.directory / f".{self.pid}.json.tmp"
        tmp.write_text(json.dumps(payload), encoding="utf-8")
        os.replace(tmp, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
