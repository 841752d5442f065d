"""The `models`, `pull` and `plan` commands: typer functions the CLI registers.

`appliance/cli.py` registers them with `app.command("models")(models_command)` and so on. This module
is the edge: it reads the environment (APPLIANCE_STATE_DIR, HF_ENDPOINT, HF_TOKEN, APPLIANCE_API_KEY,
APPLIANCE_HOURLY_PRICE), asks the running daemon for residency (GET /api/status, when reachable, at the
address every command uses: APPLIANCE_URL, else the configured host and port),
probes the box for `plan`, draws the progress bar, and maps errors to exit codes (1: the operation
failed, 2: bad input). The catalog is `--catalog`, else the configuration's `server.catalog_file`
(the configuration found as for every command), else the bundled one. The work itself lives in
catalog.py, pull.py and plan.py.
"""

from __future__ import annotations

import json
import os
import shutil
import tomllib
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from appliance.catalog import Catalog, CatalogError, UnknownModel, load_catalog
from appliance.cli_config import SEARCH, ConfigOpt, daemon_target, find_config_path, installed, load_or_exit
from appliance.config import ConfigError, parse_config
from appliance.daemon_client import DaemonError, DaemonTarget, DaemonUnreachable, request_json
from appliance.engine_install import installed_engines
from appliance.plan import DEFAULT_RESERVE_BYTES, Plan, format_table, load_snapshot, make_plan, render_plan
from appliance.plan_write import Installation, render_config, speech_fallback, write_config
from appliance.pull import PullError, PullEvent, default_models_dir, is_on_disk, pull_model

GIB = 1 << 30
TIER_LABELS = {"vram": "in VRAM", "host": "in host RAM", "disk": "on disk"}

CatalogOption = Annotated[
    Path | None,
    typer.Option("--catalog", help="catalog TOML (default: server.catalog_file, else the bundled catalog)"),
]
ModelsDirOption = Annotated[
    Path | None,
    typer.Option(
        "--models-dir", help="model store (default: $APPLIANCE_STATE_DIR/models or ~/.local/share/appliance/models)"
    ),
]


def _catalog(path: Path | None, config: Path | None) -> Catalog:
    """`--catalog`, else the configuration's `server.catalog_file`, else the bundled catalog. A
    configuration is optional here (`pull` works before there is one), but one that is found must
    be valid."""
    if path is None:
        found = find_config_path(config)
        configured = load_or_exit(found).server.catalog_file if found is not None else ""
        path = Path(configured) if configured else None
    try:
        return load_catalog(path)
    except CatalogError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _models_dir(path: Path | None) -> Path:
    return path.expanduser() if path is not None else default_models_dir(os.environ)


def daemon_tiers(target: DaemonTarget, timeout_s: float = 1.0) -> dict[str, str] | None:
    """Model id -> tier from the running daemon's /api/status, or None when it does not answer."""
    try:
        status = request_json(target, "/api/status", timeout_s=timeout_s)
    except (DaemonError, DaemonUnreachable):
        return None
    tiers: dict[str, str] = {}
    for entry in status.get("models", []) if isinstance(status, dict) else []:
        if isinstance(entry, dict) and isinstance(entry.get("tier"), str):
            for key in ("catalog", "id"):  # config ids and catalog ids may differ; accept both
                if isinstance(entry.get(key), str):
                    tiers.setdefault(entry[key], entry["tier"])
    return tiers


def models_command(
    catalog: CatalogOption = None,
    config: ConfigOpt = None,
    models_dir: ModelsDirOption = None,
    daemon_url: Annotated[str | None, typer.Option(
        "--daemon-url", help="the running daemon (default: $APPLIANCE_URL, else the configured host and port)")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="APPLIANCE_API_KEY", help="daemon API key")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """List the catalog's models and where each one is: not downloaded, on disk, in host RAM, in VRAM."""
    cat = _catalog(catalog, config)
    store = _models_dir(models_dir)
    found = daemon_target()
    target = DaemonTarget(daemon_url.rstrip("/") if daemon_url else found.base, api_key or found.key, found.cafile)
    tiers = daemon_tiers(target)
    rows: list[dict[str, Any]] = []
    for model in cat:
        local = "on disk" if is_on_disk(store, model.id) else "not downloaded"
        tier = (tiers or {}).get(model.id)
        state = TIER_LABELS.get(tier, local) if tier else local
        rows.append({
            "id": model.id, "modality": model.modality, "engine": model.engine, "state": state,
            "disk_gb": round(model.disk_bytes / 1e9, 2), "vram_gib": round(model.vram_bytes / GIB, 1),
            "licence": model.licence, "licence_acceptance": model.licence_acceptance,
        })  # fmt: skip
    if as_json:
        typer.echo(json.dumps({"models": rows, "daemon": tiers is not None}, indent=1))
        return
    table = [
        [r["id"], r["modality"], r["engine"], f"{r['disk_gb']:.2f} GB", f"{r['vram_gib']:.1f} GiB",
         r["licence"] + (" (accept)" if r["licence_acceptance"] else ""), r["state"]]
        for r in rows
    ]  # fmt: skip
    for line in format_table(["model", "modality", "engine", "size", "VRAM", "licence", "state"], table):
        typer.echo(line)
    if tiers is None:
        typer.echo(f"(daemon not reachable at {target.base}: showing what is on disk in {store})")


def pull_command(
    model: Annotated[str, typer.Argument(help="catalog id, e.g. qwen2.5-32b-instruct-awq")],
    catalog: CatalogOption = None,
    config: ConfigOpt = None,
    models_dir: ModelsDirOption = None,
    accept_licence: Annotated[
        bool, typer.Option("--accept-licence", help="accept the model's licence (required for some models)")
    ] = False,
    events: Annotated[bool, typer.Option("--events", help="print progress as JSON lines, not a bar")] = False,
) -> None:
    """Download a catalog model (resumable, verified), after checking licence and free disk."""
    cat = _catalog(catalog, config)
    try:
        entry = cat.get(model)
    except UnknownModel as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    store = _models_dir(models_dir)
    endpoint = os.environ.get("HF_ENDPOINT") or None
    token = os.environ.get("HF_TOKEN") or None
    if events:

        def show(event: PullEvent) -> None:
            typer.echo(json.dumps(event.as_dict()))

        try:
            result = pull_model(entry, store, accepted=accept_licence, endpoint=endpoint, token=token, on_progress=show)
        except PullError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    else:
        result = _pull_with_bar(entry.id, lambda on: pull_model(
            entry, store, accepted=accept_licence, endpoint=endpoint, token=token, on_progress=on))  # fmt: skip
    typer.echo(
        f"{result.model_id}: {len(result.files)} files verified in {result.directory} "
        f"({result.fetched_bytes / 1e9:.2f} GB fetched, {result.reused_bytes / 1e9:.2f} GB already there)"
    )


def _pull_with_bar(model_id: str, run: Any) -> Any:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn()) as bar:  # fmt: skip
        task = bar.add_task(model_id, total=None)

        def on_progress(event: PullEvent) -> None:
            if event.kind in ("planned", "progress", "done"):
                bar.update(task, completed=event.done_bytes, total=event.total_bytes or None)
            if event.kind in ("file", "skipped"):
                bar.update(task, description=f"{model_id}: {event.file}")
            if event.kind == "verified":
                bar.console.print(f"verified {event.file}")

        try:
            return run(on_progress)
        except PullError as exc:
            bar.stop()
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None


def _configured_price() -> float | None:
    """`server.hourly_price_usd` of the configuration `serve` would use, when there is one and it is set."""
    from appliance.cli_config import resolve_config_path
    from appliance.config import load_config

    try:
        price = load_config(resolve_config_path(None)).server.hourly_price_usd
    except ConfigError:
        return None
    return price or None


def plan_command(
    snapshot: Annotated[
        Path | None, typer.Option("--snapshot", help="a recorded box (JSON) instead of probing this one")
    ] = None,
    catalog: CatalogOption = None,
    config: ConfigOpt = None,
    models_dir: ModelsDirOption = None,
    hourly_price: Annotated[
        float | None, typer.Option("--hourly-price", envvar="APPLIANCE_HOURLY_PRICE", help="USD per hour of the box")
    ] = None,
    reserve_gb: Annotated[float, typer.Option("--reserve-gb", help="GPU memory kept free")] = DEFAULT_RESERVE_BYTES
    / GIB,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    write: Annotated[bool, typer.Option("--write", help="write the configuration that fits this box to PATH")] = False,
    path: Annotated[Path | None, typer.Argument(help="with --write: where (default: the configuration the CLI "
                                                "would read, else ~/.config/appliance/config.toml)")] = None,
    force: Annotated[bool, typer.Option("--force", help="with --write: replace an existing file")] = False,
    bind: Annotated[str, typer.Option("--host", help="with --write: server.host")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="with --write: server.port")] = 8080,
    state_dir: Annotated[str, typer.Option(help="with --write: server.state_dir")] = "~/.local/share/appliance",
    tls_cert: Annotated[str, typer.Option(help="with --write: server.tls_cert")] = "",
    tls_key: Annotated[str, typer.Option(help="with --write: server.tls_key")] = "",
    plain_http: Annotated[bool, typer.Option(help="with --write: server.plain_http")] = False,
    vllm: Annotated[str, typer.Option(help="with --write: the vllm executable of its environment")] = "",
    comfyui_dir: Annotated[str, typer.Option(help="with --write: the ComfyUI checkout")] = "",
    comfyui_python: Annotated[str, typer.Option(help="with --write: ComfyUI's interpreter")] = "",
    xtts_python: Annotated[str, typer.Option(help="with --write: the XTTS environment's interpreter")] = "",
    accept: Annotated[list[str] | None, typer.Option(help="with --write: a licence accepted (e.g. CPML)")] = None,
    engines_root: Annotated[Path | None, typer.Option(help="with --write: where `appliance engine install` put "
                                                      "the engines (fills --vllm, --comfyui-*, --xtts-python)")] = None,
) -> None:
    """Size this box: profile, models that fit, VRAM/RAM per service, co-residence, monthly cost.
    With --write, write the configuration that fits it (the installer's first configuration)."""
    cat = _catalog(catalog, config)
    if engines_root is not None:
        found = installed_engines(engines_root.expanduser())
        vllm = vllm or found.get("vllm", {}).get("executable", "")
        comfyui_dir = comfyui_dir or found.get("comfyui", {}).get("path", "")
        comfyui_python = comfyui_python or found.get("comfyui", {}).get("python", "")
        xtts_python = xtts_python or found.get("xtts", {}).get("python", "")
    openwebui = found.get("openwebui", {}).get("executable", "") if engines_root is not None else ""
    where = Installation(host=bind, port=port, state_dir=state_dir, tls_cert=tls_cert, tls_key=tls_key,
                         plain_http=plain_http, vllm=vllm, comfyui_dir=comfyui_dir, comfyui_python=comfyui_python,
                         xtts_python=xtts_python, openwebui=openwebui, accepted=tuple(accept or ()))
    if write:
        cat = speech_fallback(cat, where)
    if snapshot is not None:
        try:
            gpu, host = load_snapshot(snapshot)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            typer.echo(f"error: {snapshot}: not a recorded box: {exc}", err=True)
            raise typer.Exit(2) from None
        ram, cores, disk = host.ram_bytes, host.cores, host.disk_free_bytes
    else:
        import psutil

        from appliance.gpu import detect_probe

        probe = detect_probe(declared_total_bytes=0)
        try:
            gpu = probe.snapshot()
        finally:
            probe.close()
        store = _models_dir(models_dir)
        probe_dir = next((p for p in (store, *store.parents) if p.exists()), Path("/"))
        ram, cores, disk = psutil.virtual_memory().total, os.cpu_count() or 1, shutil.disk_usage(probe_dir).free
    if hourly_price is None:
        hourly_price = _configured_price()
    plan = make_plan(gpu, ram, cores, disk, cat, hourly_price, reserve_bytes=int(reserve_gb * GIB))
    if write:
        _write_plan(plan, cat, where, path, force)
        return
    if as_json:
        typer.echo(json.dumps(asdict(plan), indent=1))
    else:
        typer.echo(render_plan(plan))


def _write_plan(plan: Plan, cat: Catalog, where: Installation, path: Path | None, force: bool) -> None:
    receipt = installed()
    target = path or (receipt.config if receipt else SEARCH[0].expanduser())
    text = render_config(plan, cat, where)
    try:
        parse_config(tomllib.loads(text), source=str(target))  # never write what the daemon would refuse
        write_config(target, text, overwrite=force)
    except ConfigError as exc:
        typer.echo("error: the written configuration would be invalid:\n" + "\n".join(exc.lines), err=True)
        raise typer.Exit(1) from None
    except (FileExistsError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    served = ", ".join(f"{s.service} {s.model_id} ({s.placement})" for s in plan.services)
    typer.echo(f"wrote {target}: profile {plan.profile}; {served or 'nothing served'}")
    for service, why in plan.missing:
        typer.echo(f"{service}: not served on this box ({why})")
