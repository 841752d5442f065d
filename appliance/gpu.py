"""GPU probes: what the card holds, per process.

Owns the `GpuProbe` seam and its three implementations:
- `NvmlProbe` reads NVML through nvidia-ml-py (total/free memory, per-process usage, utilisation,
  temperature, power);
- `DeclaredProbe` is used when no NVIDIA GPU is present: it reports the declared budget as free, so
  the daemon runs (and says so) on a machine without a GPU;
- `FakeGpuProbe` reads what stand-in engines and workers report into a directory, so eviction and
  verified release can be tested end to end without a GPU.

It must not make decisions (the scheduler does) nor log on the hot path.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

FAKE_GPU_DIR_ENV = "APPLIANCE_FAKE_GPU_DIR"
GIB_BYTES = 1 << 30


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_bytes: int
    name: str = ""


@dataclass(frozen=True)
class GpuSnapshot:
    kind: str  # "nvml" | "declared" | "fake"
    name: str | None
    total_bytes: int
    free_bytes: int
    used_bytes: int
    processes: tuple[GpuProcess, ...] = ()
    utilization_pct: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None

    def used_by(self, pids: set[int]) -> int:
        """Bytes held by the given processes (an engine's whole process group)."""
        return sum(p.used_bytes for p in self.processes if p.pid in pids)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "total_bytes": self.total_bytes,
            "free_bytes": self.free_bytes,
            "used_bytes": self.used_bytes,
            "utilization_pct": self.utilization_pct,
            "temperature_c": self.temperature_c,
            "power_w": self.power_w,
            "processes": [{"pid": p.pid, "used_bytes": p.used_bytes, "name": p.name} for p in self.processes],
        }


class GpuProbe(Protocol):
    def snapshot(self) -> GpuSnapshot: ...

    def close(self) -> None: ...


@dataclass
class DeclaredProbe:
    """No NVIDIA GPU: a declared budget, nothing measured."""

    total_bytes: int
    reason: str = "no NVIDIA GPU found"

    def snapshot(self) -> GpuSnapshot:
        return GpuSnapshot(
            kind="declared",
            name=None,
            total_bytes=self.total_bytes,
            free_bytes=self.total_bytes,
            used_bytes=0,
        )

    def close(self) -> None:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it holds no GPU memory.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True


@dataclass
class FakeGpuProbe:
    """A GPU that exists only as files: `<dir>/<pid>.json` = {"pid", "used_bytes", "name"}.

    Stand-ins and workers write those files atomically; files of dead processes are ignored.
    """

    directory: Path
    total_bytes: int
    name: str = "Fake GPU"
    _seen: dict[str, Any] = field(default_factory=dict, repr=False)

    def snapshot(self) -> GpuSnapshot:
        procs: list[GpuProcess] = []
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            entries = []
        for entry in entries:
            if not entry.name.endswith(".json"):
                continue
            try:
                with open(entry.path, encoding="utf-8") as fh:
                    data = json.load(fh)
                pid = int(data["pid"])
                used = int(data["used_bytes"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a file being replaced or malformed: skip this sample
            if used > 0 and _pid_alive(pid):
                procs.append(GpuProcess(pid=pid, used_bytes=used, name=str(data.get("name", ""))))
        used_total = sum(p.used_bytes for p in procs)
        return GpuSnapshot(
            kind="fake",
            name=self.name,
            total_bytes=self.total_bytes,
            free_bytes=max(0, self.total_bytes - used_total),
            used_bytes=used_total,
            processes=tuple(sorted(procs, key=lambda p: p.pid)),
        )

    def close(self) -> None:
        return None


def report_fake_usage(directory: Path | str, pid: int, used_bytes: int, name: str) -> None:
    """Write one process's usage in the fake-GPU format (atomic replace)."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / f".{pid}.json.tmp"
    tmp.write_text(json.dumps({"pid": pid, "used_bytes": used_bytes, "name": name}), encoding="utf-8")
    os.replace(tmp, path / f"{pid}.json")


class NvmlProbe:
    """NVML through nvidia-ml-py; one device (index 0 unless told otherwise)."""

    def __init__(self, index: int = 0) -> None:
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(self._handle)
        self._name = name.decode() if isinstance(name, bytes) else str(name)

    def snapshot(self) -> GpuSnapshot:
        nv = self._nvml
        mem = nv.nvmlDeviceGetMemoryInfo(self._handle)
        procs: dict[int, int] = {}
        for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            try:
                for p in getattr(nv, getter)(self._handle):
                    used = p.usedGpuMemory if isinstance(p.usedGpuMemory, int) else 0
                    procs[int(p.pid)] = procs.get(int(p.pid), 0) + used
            except nv.NVMLError:
                continue
        util: float | None
        try:
            util = float(nv.nvmlDeviceGetUtilizationRates(self._handle).gpu)
        except nv.NVMLError:
            util = None
        temp: float | None
        try:
            temp = float(nv.nvmlDeviceGetTemperature(self._handle, nv.NVML_TEMPERATURE_GPU))
        except nv.NVMLError:
            temp = None
        power: float | None
        try:
            power = nv.nvmlDeviceGetPowerUsage(self._handle) / 1000.0
        except nv.NVMLError:
            power = None
        return GpuSnapshot(
            kind="nvml",
            name=self._name,
            total_bytes=int(mem.total),
            free_bytes=int(mem.free),
            used_bytes=int(mem.used),
            processes=tuple(GpuProcess(pid=pid, used_bytes=used) for pid, used in sorted(procs.items())),
            utilization_pct=util,
            temperature_c=temp,
            power_w=power,
        )

    def close(self) -> None:
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()


def detect_probe(declared_total_bytes: int = 0, index: int = 0) -> GpuProbe:
    """NVML when an NVIDIA GPU answers, otherwise the declared budget (possibly 0: CPU-only box)."""
    try:
        import pynvml
    except ImportError:
        return DeclaredProbe(declared_total_bytes, reason="nvidia-ml-py is not installed")
    try:
        return NvmlProbe(index)
    except pynvml.NVMLError as exc:
        return DeclaredProbe(declared_total_bytes, reason=f"no NVIDIA GPU found ({exc})")
