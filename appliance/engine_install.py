"""Installing the engines into their own environments: `appliance engine install NAME`.

Each engine pins its own torch, so each gets its own virtual environment under ROOT/NAME (ROOT is
<code>/engines; install.sh passes it):
- vllm: `pip install -c vllm.lock vllm==X lmcache==Y` into ROOT/vllm/venv (NVIDIA boxes only);
- comfyui: `git clone --branch TAG` into ROOT/comfyui/ComfyUI, then its requirements.txt into
  ROOT/comfyui/venv through comfyui.lock;
- xtts: packaging/xtts-requirements.txt through requirements-xtts.lock into ROOT/xtts/venv;
- openwebui: `open-webui==X` into ROOT/openwebui/venv, after a CPU build of torch (`cpu_torch`, from
  PyTorch's CPU index, or APPLIANCE_TORCH_CPU_INDEX): the appliance serves its speech and embeddings,
  so it never touches the GPU, and PyPI's CUDA build would cost several GB for nothing.
Pins and locks live in packaging/engines/pins.toml. A finished install leaves ROOT/NAME/installed.toml
(the pinned version it installed and its interpreter); `installed_engines` reads those back for the
configuration (`plan --write --engines-root`) and doctor compares them with the pins.

Package sources are pip's own settings (PIP_INDEX_URL, PIP_FIND_LINKS, pip.conf); ComfyUI's repository
can be replaced with APPLIANCE_COMFYUI_REPO (a mirror, or a local repository in tests). This module owns
those steps; it must not edit the appliance's configuration (plan --write does) nor start engines.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENGINES = ("vllm", "comfyui", "xtts", "openwebui")


class EngineInstallError(Exception):
    pass


@dataclass(frozen=True)
class Pin:
    name: str
    version: str  # the package version or git tag installed
    packages: tuple[str, ...]
    lock: Path
    repo: str = ""
    requirements: Path | None = None
    needs_gpu: bool = False
    cpu_torch: str = ""  # a torch version installed first from the CPU index (engines that never use the GPU)


TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def source_root() -> Path:
    """The project checkout this appliance runs from (install.sh installs it in editable mode)."""
    return Path(__file__).resolve().parent.parent


def load_pins(source: Path) -> dict[str, Pin]:
    path = source / "packaging" / "engines" / "pins.toml"
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise EngineInstallError(f"{path}: {exc}") from None
    pins: dict[str, Pin] = {}
    for name in ENGINES:
        table = data.get(name)
        if not isinstance(table, dict):
            raise EngineInstallError(f"{path}: [{name}] missing")
        lock = str(table["lock"])
        # the XTTS lock is the one scripts/lock.sh keeps at the top of the checkout; the others sit beside pins
        lock_path = source / lock if lock.startswith("requirements") else path.parent / lock
        packages = tuple(table.get("packages", ()))
        requirements = source / table["requirements"] if table.get("requirements") else None
        version = table.get("tag") or (packages[0].split("==", 1)[1] if packages else "")
        if requirements is not None and not version:
            version = _pinned(requirements, "coqui-tts")
        pins[name] = Pin(name, version, packages, lock_path, table.get("repo", ""), requirements,
                         bool(table.get("needs_gpu", False)), str(table.get("cpu_torch", "")))
    return pins


def _pinned(requirements: Path, package: str) -> str:
    for line in requirements.read_text(encoding="utf-8").splitlines():
        name, sep, version = line.strip().partition("==")
        if sep and name == package:
            return version
    return ""


def engine_dir(root: Path, name: str) -> Path:
    return root / name


def _run(argv: list[str], log: Path, env: Mapping[str, str], cwd: Path | None = None) -> None:
    with log.open("a", encoding="utf-8") as out:
        out.write("$ " + " ".join(argv) + "\n")
        out.flush()
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd, check=False)
    if done.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise EngineInstallError(f"{argv[0]} exited {done.returncode}:\n" + "\n".join(tail))


def _venv(where: Path, log: Path, env: Mapping[str, str], python: str) -> Path:
    """A fresh environment with the interpreter's own pip (no upgrade: installs work offline from a mirror)."""
    py = where / "bin" / "python"
    if not py.exists():
        _run([python, "-m", "venv", str(where)], log, env)
    return py


def install_engine(name: str, root: Path, source: Path, env: Mapping[str, str], python: str = sys.executable,
                   gpus: int | None = None) -> dict[str, str]:
    """Install one engine at its pinned release; return what installed.toml records."""
    pins = load_pins(source)
    if name not in pins:
        raise EngineInstallError(f"unknown engine {name!r} (one of {', '.join(ENGINES)})")
    pin = pins[name]
    if pin.needs_gpu and gpus == 0:
        raise EngineInstallError(f"{name} needs an NVIDIA GPU and NVML finds none on this box")
    home = engine_dir(root, name)
    home.mkdir(parents=True, exist_ok=True)
    log = root / f"{name}.log"
    log.write_text("", encoding="utf-8")
    py = _venv(home / "venv", log, env, python)
    record = {"engine": name, "version": pin.version, "python": str(py)}
    if name == "comfyui":
        checkout = home / "ComfyUI"
        repo = env.get("APPLIANCE_COMFYUI_REPO") or pin.repo
        if (checkout / ".git").is_dir():
            _run(["git", "-C", str(checkout), "fetch", "-q", "--depth", "1", "origin", "tag", pin.version], log, env)
            _run(["git", "-C", str(checkout), "checkout", "-q", pin.version], log, env)
        else:
            _run(["git", "clone", "-q", "--depth", "1", "--branch", pin.version, repo, str(checkout)], log, env)
        _run([str(py), "-m", "pip", "install", "-c", str(pin.lock), "-r", str(checkout / "requirements.txt")],
             log, env)
        record["path"] = str(checkout)
    elif pin.requirements is not None:
        _run([str(py), "-m", "pip", "install", "-c", str(pin.lock), "-r", str(pin.requirements)], log, env)
    else:
        if pin.cpu_torch:  # first, so the engine's own dependency on torch is already met by this build
            index = env.get("APPLIANCE_TORCH_CPU_INDEX") or TORCH_CPU_INDEX
            torch = f"torch=={pin.cpu_torch}"
            _run([str(py), "-m", "pip", "install", "-c", str(pin.lock), "--index-url", index, torch], log, env)
        _run([str(py), "-m", "pip", "install", "-c", str(pin.lock), *pin.packages], log, env)
        exe = {"vllm": "vllm", "openwebui": "open-webui"}[name]
        record["executable"] = str(home / "venv" / "bin" / exe)
    marker = home / "installed.toml"
    marker.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in record.items()), encoding="utf-8")
    return record


def installed_engines(root: Path) -> dict[str, dict[str, str]]:
    """Each engine's installed.toml under ROOT (engines whose install finished)."""
    found: dict[str, dict[str, str]] = {}
    for name in ENGINES:
        marker = engine_dir(root, name) / "installed.toml"
        try:
            data = tomllib.loads(marker.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError):
            continue
        found[name] = {k: str(v) for k, v in data.items()}
    return found


def gpu_count() -> int:
    """NVIDIA GPUs NVML sees (0 without a driver); install.sh does the same through ctypes."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # NVMLError and its LibraryNotFound subclass: no usable driver
        return 0
