"""`appliance engine install` runs its real steps against local stand-ins of the engines' sources: a local
package directory holding a tiny `vllm` 0.33.0 (its `vllm` command runs the vLLM stand-in) and `lmcache`
0.5.6, and a local git repository standing in for ComfyUI at the pinned tag (its main.py runs the ComfyUI
stand-in). `plan --write --engines-root` then points the configuration at those environments, and the
daemon starts both engines from it."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from daemon_harness import ROOT, STANDINS, Daemon, free_port

from appliance.engine_install import installed_engines, load_pins

PINS = load_pins(ROOT)


def build_wheel(out: Path, name: str, version: str, files: dict[str, str], console: dict[str, str] | None = None,
                requires: tuple[str, ...] = ()) -> Path:
    """A minimal pure-Python wheel (PEP 427), written by hand: no build backend or network."""
    dist = f"{name.replace('-', '_')}-{version}"
    meta = {f"{dist}.dist-info/METADATA": "Metadata-Version: 2.1\nName: " + name + "\nVersion: " + version + "\n"
            + "".join(f"Requires-Dist: {r}\n" for r in requires),
            f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                       "Tag: py3-none-any\n"}
    if console:
        meta[f"{dist}.dist-info/entry_points.txt"] = "[console_scripts]\n" + "".join(
            f"{k} = {v}\n" for k, v in console.items())
    everything = {**files, **meta}
    record = []
    for path, text in everything.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}.dist-info/RECORD,,")
    wheel = out / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in everything.items():
            zf.writestr(path, text)
        zf.writestr(f"{dist}.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


def sources(tmp: Path) -> tuple[Path, Path]:
    """The wheel directory and the ComfyUI repository stand-ins."""
    wheels = tmp / "wheels"
    wheels.mkdir()
    shim = (f"import os, sys\n\ndef main():\n    os.execv({sys.executable!r}, "
            f"[{sys.executable!r}, {str(STANDINS / 'vllm_standin.py')!r}, *sys.argv[1:]])\n")
    vllm_version = PINS["vllm"].version
    lmcache_version = PINS["vllm"].packages[1].split("==")[1]
    build_wheel(wheels, "vllm", vllm_version, {"vllm/__init__.py": "", "vllm/cli_shim.py": shim},
                console={"vllm": "vllm.cli_shim:main"}, requires=(f"lmcache=={lmcache_version}",))
    build_wheel(wheels, "lmcache", lmcache_version, {"lmcache/__init__.py": ""})
    build_wheel(wheels, "comfy-standin-dep", "1.0", {"comfy_standin_dep/__init__.py": ""})
    repo = tmp / "ComfyUI-mirror"
    repo.mkdir()
    (repo / "main.py").write_text(f"import os, sys\nos.execv({sys.executable!r}, [{sys.executable!r}, "
                                  f"{str(STANDINS / 'comfyui_standin.py')!r}, *sys.argv[1:]])\n")
    (repo / "requirements.txt").write_text("comfy-standin-dep\n")
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True, timeout=60)
    subprocess.run([*git, "add", "."], check=True, timeout=60)
    subprocess.run([*git, "commit", "-qm", "standin"], check=True, timeout=60)
    subprocess.run([*git, "tag", PINS["comfyui"].version], check=True, timeout=60)
    (repo / "main.py").write_text("raise SystemExit('a commit after the pinned tag must not be installed')\n")
    subprocess.run([*git, "commit", "-qam", "after the tag"], check=True, timeout=60)
    return wheels, repo


def appliance(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance", *args], capture_output=True, text=True, timeout=300,
                          env=env, check=False)


def test_engines_install_from_their_sources_and_the_written_configuration_starts_them(tmp_path: Path) -> None:
    wheels, repo = sources(tmp_path)
    root = tmp_path / "engines"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "APPLIANCE_"))}
    env.update({"PYTHONPATH": str(ROOT), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels),
                "PIP_DISABLE_PIP_VERSION_CHECK": "1", "APPLIANCE_COMFYUI_REPO": str(repo), "APPLIANCE_GPU": "1"})
    for name in ("vllm", "comfyui"):
        out = appliance("engine", "install", name, "--root", str(root), env=env)
        assert out.returncode == 0, out.stderr + (root / f"{name}.log").read_text()[-3000:]
    found = installed_engines(root)
    assert found["vllm"]["version"] == PINS["vllm"].version and Path(found["vllm"]["executable"]).is_file()
    assert found["comfyui"]["version"] == PINS["comfyui"].version
    checkout = Path(found["comfyui"]["path"])
    assert "comfyui_standin" in (checkout / "main.py").read_text()  # the tag, not the later commit
    log = (root / "vllm.log").read_text()
    assert f"-c {ROOT / 'packaging' / 'engines' / 'vllm.lock'}" in log  # installed through the engine's lock

    # without a GPU, vLLM is refused (it needs NVML's GPU)
    refused = appliance("engine", "install", "vllm", "--root", str(tmp_path / "other"),
                        env={**env, "APPLIANCE_GPU": "0"})
    assert refused.returncode == 1 and "needs an NVIDIA GPU" in refused.stderr

    config = tmp_path / "written.toml"
    wrote = appliance("plan", "--snapshot", str(ROOT / "tests" / "data" / "rtx3090_box.json"), "--write", str(config),
                      "--engines-root", str(root), env=env)
    assert wrote.returncode == 0, wrote.stderr
    doc = tomllib.loads(config.read_text())
    assert doc["engines"]["vllm"]["command"] == [found["vllm"]["executable"]]
    assert doc["engines"]["comfyui"]["command"] == [found["comfyui"]["python"], str(checkout / "main.py")]

    # the daemon starts both from the written configuration (fresh ports and a fake GPU for this test)
    vllm_port, comfy_port = free_port(), free_port()
    text = config.read_text().replace("port = 8001", f"port = {vllm_port}").replace("port = 8188",
                                                                                     f"port = {comfy_port}")
    doc = tomllib.loads(text)
    doc.pop("gpu", None)
    for section in ("vllm", "comfyui"):
        doc["engines"][section]["ready_timeout_s"] = 60.0
    d = Daemon(tmp_path, {k: v for k, v in doc.items() if k != "server"}, env={"PYTHONPATH": str(ROOT)})
    d.start()
    try:
        for name in ("vllm", "comfyui"):
            status, body = d.post(f"/api/engines/{name}/start")
            assert status == 200, body
        for name in ("vllm", "comfyui"):
            d.wait_engine(name, lambda e: e["state"] == "ready", 90, "ready")
    finally:
        d.stop()


def test_open_webui_installs_after_a_cpu_build_of_torch_that_its_own_install_keeps(tmp_path: Path) -> None:
    """Open WebUI never uses the GPU (the appliance serves its speech and embeddings): torch comes first from
    the CPU index, and the engine's lock keeps pip from replacing it with PyPI's CUDA build."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    pin = PINS["openwebui"]
    assert pin.cpu_torch
    build_wheel(wheels, "torch", pin.cpu_torch, {"torch/__init__.py": "BUILD = 'cpu'\n"})
    build_wheel(wheels, "torch", "99.0", {"torch/__init__.py": "BUILD = 'cuda'\n"})  # what PyPI would hand out
    build_wheel(wheels, "open-webui", pin.version, {"open_webui/__init__.py": "", "open_webui/cli.py": "def main():\n"
                "    import torch\n    print(torch.BUILD)\n"}, console={"open-webui": "open_webui.cli:main"},
                requires=("torch",))
    root = tmp_path / "engines"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "APPLIANCE_"))}
    env.update({"PYTHONPATH": str(ROOT), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels),
                "PIP_DISABLE_PIP_VERSION_CHECK": "1", "APPLIANCE_TORCH_CPU_INDEX": "http://127.0.0.1:9/cpu"})
    out = appliance("engine", "install", "openwebui", "--root", str(root), env=env)
    assert out.returncode == 0, out.stderr + (root / "openwebui.log").read_text()[-3000:]
    log = (root / "openwebui.log").read_text()
    torch_step = log.index(f"-c {pin.lock} --index-url http://127.0.0.1:9/cpu torch=={pin.cpu_torch}")
    assert torch_step < log.index(f"-c {pin.lock} open-webui=={pin.version}")  # torch first, then the engine
    exe = installed_engines(root)["openwebui"]["executable"]
    ran = subprocess.run([exe], capture_output=True, text=True, timeout=60, check=True)
    assert ran.stdout.strip() == "cpu"
