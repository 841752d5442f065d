"""Command line of the ComfyUI stand-in: the flags of ComfyUI's ``comfy/cli_args.py`` (contracts §3.1).

Owns: the argparse parser (an unknown flag exits 2 like the real one), the directory layout that
follows from ``--base-directory`` and the explicit directory flags, and the frozen ``ComfyConfig``.
Must not: touch the file system beyond computing absolute paths, or read the environment.
Flags that only tune a real GPU (precision, attention, VRAM modes other than ``--cpu``) are
accepted and change nothing; flags the stand-in does not know are rejected.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import dataclass

PREVIEW_METHODS = ("none", "auto", "latent2rgb", "taesd")


@dataclass(frozen=True)
class ComfyConfig:
    listen: tuple[str, ...]
    port: int
    output_dir: str
    input_dir: str
    temp_dir: str
    user_dir: str
    models_dir: str | None  # None: no models directory given, use the built-in model list
    cors_origin: str | None
    max_upload_bytes: int
    cpu: bool
    disable_smart_memory: bool
    cache_none: bool
    dont_print_server: bool
    log_stdout: bool
    disable_metadata: bool


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="main.py")
    p.add_argument("--listen", nargs="?", const="0.0.0.0,::", default="127.0.0.1", metavar="IP")
    p.add_argument("--port", type=int, default=8188)
    p.add_argument("--enable-cors-header", nargs="?", const="*", default=None, metavar="ORIGIN")
    p.add_argument("--max-upload-size", type=float, default=100)
    for name in (
        "--base-directory",
        "--output-directory",
        "--temp-directory",
        "--input-directory",
        "--user-directory",
        "--models-directory",
        "--front-end-root",
        "--front-end-version",
        "--comfy-api-base",
        "--database-url",
        "--oneapi-device-selector",
        "--cuda-device",
    ):
        p.add_argument(name, default=None)
    # Real ComfyUI takes one or more YAML files (action append, nargs +); the stand-in only checks they exist.
    p.add_argument("--extra-model-paths-config", nargs="+", action="append", default=None)
    p.add_argument("--default-device", type=int, default=None)
    p.add_argument("--auto-launch", action="store_true")
    p.add_argument("--disable-auto-launch", action="store_true")
    mem = p.add_mutually_exclusive_group()
    for name in ("--gpu-only", "--highvram", "--lowvram", "--novram", "--cpu"):
        mem.add_argument(name, action="store_true")
    p.add_argument("--reserve-vram", type=float, default=None)
    p.add_argument("--vram-headroom", type=float, default=None)
    switches = (
        "--disable-smart-memory",
        "--disable-dynamic-vram",
        "--enable-dynamic-vram",
        "--async-offload",
        "--disable-async-offload",
        "--cache-classic",
        "--cache-none",
        "--dont-print-server",
        "--log-stdout",
        "--disable-metadata",
        "--disable-all-custom-nodes",
        "--disable-api-nodes",
        "--offline",
        "--disable-assets",
        "--enable-manager",
        "--multi-user",
        "--quick-test-for-ci",
        "--windows-standalone-build",
        "--deterministic",
        "--cuda-malloc",
        "--disable-cuda-malloc",
        "--force-fp32",
        "--force-fp16",
        "--fp32-unet",
        "--fp64-unet",
        "--bf16-unet",
        "--fp16-unet",
        "--fp8_e4m3fn-unet",
        "--fp8_e5m2-unet",
        "--fp8_e8m0fnu-unet",
        "--fp16-vae",
        "--fp32-vae",
        "--bf16-vae",
        "--cpu-vae",
        "--fp8_e4m3fn-text-enc",
        "--fp8_e5m2-text-enc",
        "--fp16-text-enc",
        "--fp32-text-enc",
        "--bf16-text-enc",
        "--force-channels-last",
        "--disable-ipex-optimize",
        "--supports-fp8-compute",
        "--use-split-cross-attention",
        "--use-quad-cross-attention",
        "--use-pytorch-cross-attention",
        "--use-sage-attention",
        "--use-flash-attention",
        "--disable-xformers",
        "--force-upcast-attention",
        "--dont-upcast-attention",
        "--mmap-torch-files",
        "--disable-mmap",
        "--enable-compress-response-body",
    )
    for name in switches:
        p.add_argument(name, action="store_true")
    p.add_argument("--preview-method", choices=PREVIEW_METHODS, default="none")
    p.add_argument("--preview-size", type=int, default=512)
    p.add_argument("--cache-lru", type=int, default=0)
    p.add_argument("--cache-ram", nargs="*", type=float, default=None)
    p.add_argument("--fast", nargs="*", default=None)
    p.add_argument("--whitelist-custom-nodes", nargs="*", default=[])
    p.add_argument("--verbose", nargs="*", action="append", default=None, metavar="LEVEL [FILE]")
    return p


def parse(argv: list[str]) -> ComfyConfig:
    a = build_parser().parse_args(argv)
    base = os.path.abspath(a.base_directory) if a.base_directory else None
    scratch = base or os.path.join(tempfile.gettempdir(), f"comfyui-standin-{os.getpid()}")

    def directory(explicit: str | None, name: str) -> str:
        return os.path.abspath(explicit) if explicit else os.path.join(scratch, name)

    models = a.models_directory or (os.path.join(base, "models") if base else None)
    return ComfyConfig(
        listen=tuple(h.strip() for h in a.listen.split(",") if h.strip()),
        port=a.port,
        output_dir=directory(a.output_directory, "output"),
        input_dir=directory(a.input_directory, "input"),
        temp_dir=directory(a.temp_directory, "temp"),
        user_dir=directory(a.user_directory, "user"),
        models_dir=os.path.abspath(models) if models else None,
        cors_origin=a.enable_cors_header,
        max_upload_bytes=int(a.max_upload_size * 1024 * 1024),
        cpu=a.cpu,
        disable_smart_memory=a.disable_smart_memory,
        cache_none=a.cache_none,
        dont_print_server=a.dont_print_server,
        log_stdout=a.log_stdout,
        disable_metadata=a.disable_metadata,
    )
