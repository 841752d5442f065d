"""Installs are reproducible: every Python package the project installs is pinned in requirements.lock, and
the two installers (install.sh for a box, test.sh for the suite) install through it. A dependency added to
pyproject.toml without re-locking, or an installer that resolves against the registry unconstrained, lets the
next upstream release break a fresh clone (as openai 3's move to httpx2 once did)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PER_BOX = {"torch"}  # chosen per box: the CPU build here, a CUDA build on a GPU box


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _locked(lock: str = "requirements.lock") -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / lock).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version and not re.search(r"[<>~!;\[ ]", line), f"{lock}: not an exact pin: {line}"
        pins[_norm(name)] = version
    return pins


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return {_norm(re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0]) for r in reqs}


def test_every_declared_dependency_is_pinned_in_the_lock() -> None:
    missing = sorted(_declared() - PER_BOX - set(_locked()))
    assert not missing, f"declared in pyproject.toml but not in requirements.lock (run scripts/lock.sh): {missing}"


def test_the_lock_leaves_torch_to_each_box() -> None:
    locked = _locked()
    cuda = [n for n in locked if n.startswith("nvidia-") and n != "nvidia-ml-py"]  # NVML's binding is the daemon's
    assert not (PER_BOX & set(locked)) and not cuda, cuda


def test_the_xtts_environment_is_locked_too() -> None:
    wanted = [ln.strip() for ln in (ROOT / "packaging" / "xtts-requirements.txt").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]
    locked = _locked("requirements-xtts.lock")
    for req in wanted:
        name = _norm(re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0])
        assert "==" in req or name in locked, f"xtts: {req} is neither pinned nor in requirements-xtts.lock"
    assert "coqui-tts" in {_norm(r.split("==")[0]) for r in wanted}


def test_installers_install_from_the_lock() -> None:
    for script in ("install.sh", "test.sh"):
        installs = [ln for ln in (ROOT / script).read_text().splitlines()
                    if re.search(r"(-m pip|bin/pip|^\s*pip) install ", ln) and not ln.lstrip().startswith("#")]
        assert installs, script
        for line in installs:
            assert re.search(r'-c "?(\$LOCK|\$SRC/requirements(-xtts)?\.lock)', line), \
                f"{script}: installs without the lock: {line.strip()}"


def test_engine_environments_install_through_their_locks() -> None:
    """`appliance engine install` (appliance/engine_install.py) runs pip only with a constraints file, and every
    pinned engine names a lock that exists and pins its packages."""
    source = (ROOT / "appliance" / "engine_install.py").read_text()
    installs = [ln for ln in source.splitlines() if '"pip", "install"' in ln]
    assert installs and all('"-c"' in ln for ln in installs), installs
    pins = tomllib.loads((ROOT / "packaging" / "engines" / "pins.toml").read_text())
    for name, table in pins.items():
        lock = ROOT / table["lock"] if table["lock"].startswith("requirements") else \
            ROOT / "packaging" / "engines" / table["lock"]
        locked = lock.read_text()
        for package in table.get("packages", []):
            assert package in locked.splitlines(), f"{name}: {package} is not in {lock.name}"
