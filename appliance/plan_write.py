"""`appliance plan --write`: the configuration that fits a box, rendered from its plan.

A pure function of (plan, catalog, where things are installed) to TOML text, so install.sh's first
configuration and `appliance plan --write` are the same thing. What it writes, per service the plan
serves:
- text on vLLM (GPU boxes): engine `vllm` with the plan's gpu_memory_utilization; on the CPU: a text
  worker reading the model's pulled directory;
- image on ComfyUI (checkpoint in its model folder) or a diffusers worker (small default size on a CPU);
- speech and embeddings on workers (XTTS only where its own environment exists, else the next speech
  model the box runs: the plan is re-made without it, see `speech_fallback`);
- speech-to-text on the stt worker: the Whisper the plan picks (found by name once pulled; until then
  the worker answers with pocketsphinx's packaged English model, its `--fallback`);
- the server's host, port, data directory and TLS settings, and each engine's interpreter;
- Open WebUI when its environment is installed (`install.sh --engines ...,openwebui`).

It must not probe the box or read the environment (catalog_cli gathers the inputs); `write_config`, the
one I/O helper, never replaces an existing file unless told to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from appliance.catalog import GIB, Catalog, CatalogModel
from appliance.plan import Plan, ServiceAllocation

ENGINE_NAMES = {"text": "text", "image": "image", "speech": "tts", "embedding": "embed", "transcription": "stt"}
WORKER_PORTS = {"text": 8012, "image": 8013, "speech": 8010, "embedding": 8011, "transcription": 8014}
CPU_IMAGE_SIZE = "512x512"


@dataclass(frozen=True)
class Installation:
    """Where the installer put things (all optional: defaults are the bare commands)."""

    host: str = "127.0.0.1"
    port: int = 8080
    state_dir: str = "~/.local/share/appliance"
    tls_cert: str = ""
    tls_key: str = ""
    plain_http: bool = False
    vllm: str = ""  # the vllm executable of its own environment
    comfyui_dir: str = ""  # the ComfyUI checkout
    comfyui_python: str = ""  # its environment's interpreter
    xtts_python: str = ""  # the XTTS environment's interpreter ("" = not installed)
    openwebui: str = ""  # the open-webui executable ("" = not installed: no web UI engine)
    accepted: tuple[str, ...] = field(default_factory=tuple)  # licences accepted at install (e.g. CPML)


def _q(value: str) -> str:
    return json.dumps(value)  # a TOML basic string is a JSON string for the characters used here


def speech_fallback(catalog: Catalog, where: Installation) -> Catalog:
    """The catalog the plan should choose from: without XTTS when its environment is not installed."""
    if where.xtts_python:
        return catalog
    return Catalog(tuple(m for m in catalog if not m.serve_name.startswith("xtts:")), catalog.source)


def _models_dir(where: Installation) -> str:
    return f"{where.state_dir.rstrip('/')}/models"


def _engine(service: ServiceAllocation, model: CatalogModel, where: Installation) -> list[str]:
    name = ENGINE_NAMES[service.service]
    if model.engine == "vllm":
        lines = ["[engines.vllm]", 'kind = "vllm"', f"model = {_q(model.serve_name)}", "port = 8001"]
        if where.vllm:
            lines.append(f"command = [{_q(where.vllm)}]")
        if "awq" in model.id:
            lines.append('quantization = "awq_marlin"')
        if service.gpu_memory_utilization is not None:
            lines.append(f"gpu_memory_utilization = {service.gpu_memory_utilization:.2f}")
        lines.append("max_model_len = 8192")
        return lines
    if model.engine == "comfyui":
        lines = ["[engines.comfyui]", 'kind = "comfyui"', f"path = {_q(where.comfyui_dir or '~/ComfyUI')}",
                 "port = 8188"]
        if where.comfyui_python and where.comfyui_dir:
            lines.append(f"command = [{_q(where.comfyui_python)}, {_q(where.comfyui_dir.rstrip('/') + '/main.py')}]")
        return lines
    worker = model.engine.removeprefix("worker:")
    # text and diffusers workers load the pulled directory; the others resolve voices and packaged models
    model_path = f"{_models_dir(where)}/{model.id}" if worker in ("text", "diffusers") else model.serve_name
    lines = [f"[engines.{name}]", 'kind = "worker"', f"worker = {_q(worker)}", f"model_path = {_q(model_path)}",
             f'device = "{"cuda" if service.placement == "gpu" else "cpu"}"',
             f"port = {WORKER_PORTS[service.service]}"]
    args = list(model.worker_args)
    if worker == "diffusers" and service.placement == "cpu" and "--default-size" not in args:
        args += ["--default-size", CPU_IMAGE_SIZE]
    if args:
        lines.append("extra_args = [" + ", ".join(_q(a) for a in args) + "]")
    if model.serve_name.startswith("xtts:") and where.xtts_python:
        lines.append(f"python = {_q(where.xtts_python)}")
    return lines


def _model(service: ServiceAllocation, model: CatalogModel) -> list[str]:
    engine = "vllm" if model.engine == "vllm" else "comfyui" if model.engine == "comfyui" else \
        ENGINE_NAMES[service.service]
    # vLLM's share of the GPU is its gpu_memory_utilization; its model's estimate stays the catalog's minimum
    vram = service.vram_bytes if service.placement == "gpu" and model.engine != "vllm" else model.vram_bytes
    lines = [f"[models.{_q(model.id)}]", f"engine = {_q(engine)}", f"modality = {_q(model.modality)}",
             f"catalog = {_q(model.id)}", f"vram_gb = {max(vram / GIB, 0.1):.1f}"]
    if model.engine == "comfyui":
        lines += ['workflow = "sd35_turbo"', f"checkpoint = {_q(model.serve_name)}"]
    return lines


def render_config(plan: Plan, catalog: Catalog, where: Installation) -> str:
    """The configuration TOML for this plan and installation."""
    out = [
        f"# Written by `appliance plan --write` for this box: {plan.gpu_name or 'no GPU'}, profile {plan.profile}.",
        "# Every key is documented in docs/configuration.md; edit freely: the installer never overwrites it.",
        "# Pull the weights with `appliance pull MODEL` (the [models] tables name their catalog ids).",
        'profile = "ultra-minimal"', "",
        "[server]", f"host = {_q(where.host)}", f"port = {where.port}", f"state_dir = {_q(where.state_dir)}",
    ]
    if where.tls_cert:
        out += [f"tls_cert = {_q(where.tls_cert)}", f"tls_key = {_q(where.tls_key)}"]
    if where.plain_http:
        out.append("plain_http = true  # behind a TLS-terminating proxy")
    # slept weights may take half the box's RAM (the default, 32 GiB, is more than many boxes have)
    ram_budget = min(32, int(plan.host.ram_bytes / GIB / 2))
    out += ["", "[gpu]", 'probe = "auto"', f"reserve_gb = {plan.reserve_bytes / GIB:.1f}",
            f"host_ram_budget_gb = {ram_budget}", ""]
    if where.accepted:
        out += ["[licences]", "accepted = [" + ", ".join(_q(a) for a in where.accepted) + "]", ""]
    for service in plan.services:
        out += [*_engine(service, catalog.get(service.model_id), where), ""]
    for service in plan.services:
        out += [*_model(service, catalog.get(service.model_id)), ""]
    if where.openwebui:
        out += ["[engines.openwebui]", 'kind = "openwebui"', "port = 3000", f"command = [{_q(where.openwebui)}]", ""]
    for missing, why in plan.missing:
        out.append(f"# {missing}: not served on this box ({why})")
    return "\n".join(out).rstrip() + "\n"


def write_config(path: Path, text: str, overwrite: bool) -> None:
    """Write atomically; refuse to replace an existing file unless told to."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (pass --force to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
