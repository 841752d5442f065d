"""Command line of the ComfyUI stand-in: the flags of ComfyUI's ``comfy/cli_args.py`` (contracts §3.1).

Owns: the argparse parser (an unknown flag exits 2 like the real one), the directory layout that
follows from ``--base-directory`` and the explicit directory flags, and the frozen ``ComfyConfig``.
Must not: touch the file system beyond computing absolute paths, or read the environment.
It accepts exactly the flags contracts.md §3.1 names; those that only tune a real GPU (precision,
VRAM modes other than ``--cpu``, the VRAM reserve and dynamic VRAM switches) change nothing here, and
any other flag is rejected.
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


# The flags contracts.md §3.1 documents (ComfyUI `comfy/cli_args.py`@03294572, a 2026 build with
# dynamic VRAM), and no others: an adapter that passes a flag the contract does not name fails here
# as it could on the real server. Of the precision flags the contract names four and elides the rest.
PATH_FLAGS = ("--base-directory", "--output-directory", "--input-directory", "--temp-directory",
              "--user-directory", "--models-directory", "--database-url", "--cuda-device")
VRAM_MODES = ("--gpu-only", "--highvram", "--lowvram", "--novram", "--cpu")
SWITCHES = (
    # memory and device
    "--disable-smart-memory", "--disable-dynamic-vram", "--enable-dynamic-vram", "--async-offload",
    "--disable-async-offload", "--disable-pinned-memory",
    # caching
    "--cache-classic", "--cache-none",
    # other
    "--dont-print-server", "--log-stdout", "--disable-metadata", "--disable-all-custom-nodes", "--offline",
    "--disable-assets", "--enable-manager",
    # precision (the four the contract names)
    "--fp16-vae", "--bf16-unet", "--fp8_e4m3fn-unet", "--fp8_e4m3fn-text-enc",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="main.py")
    p.add_argument("--listen", nargs="?", const="0.0.0.0,::", default="127.0.0.1", metavar="IP")
    p.add_argument("--port", type=int, default=8188)
    p.add_argument("--enable-cors-header", nargs="?", const="*", default=None, metavar="ORIGIN")
    p.add_argument("--max-upload-size", type=float, default=100)
    for name in PATH_FLAGS:
        p.add_argument(name, default=None)
    # Real ComfyUI takes one or more YAML files (action append, nargs +); the stand-in only checks they exist.
    p.add_argument("--extra-model-paths-config", nargs="+", action="append", default=None)
    p.add_argument("--default-device", type=int, default=None)
    mem = p.add_mutually_exclusive_group()
    for name in VRAM_MODES:
        mem.add_argument(name, action="store_true")
    p.add_argument("--reserve-vram", type=float, default=None, metavar="GB")
    p.add_argument("--vram-headroom", type=float, default=None, metavar="GB")
    for name in SWITCHES:
        p.add_argument(name, action="store_true")
    p.add_argument("--preview-method", choices=PREVIEW_METHODS, default="none")
    p.add_argument("--preview-size", type=int, default=512)
    p.add_argument("--cache-lru", type=int, default=0)
    p.add_argument("--cache-ram", nargs="*", type=float, default=None, metavar="GB")
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
