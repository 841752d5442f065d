"""The model catalog: what each known model is, where it comes from and what it costs in memory.

Owns the catalog data model (`CatalogModel`, `CatalogFile`), loading and validating the TOML data file
(`appliance/data/catalog.toml` by default; errors name the file and the key path) and lookups by id and
modality. Sizes: `disk_bytes` in bytes from decimal GB (as the hub shows them); `vram_bytes` and
`ram_bytes` from binary GiB. It must not touch the network, the GPU or the model store (pull and plan
do), and imports nothing heavy.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

MODALITIES = ("text", "image", "speech", "embedding", "video")
ENGINES = ("vllm", "comfyui", "worker:text", "worker:diffusers", "worker:speech", "worker:embed")
DEVICES = ("cuda", "cpu")
GB = 1_000_000_000
GIB = 1 << 30


class CatalogError(Exception):
    """The catalog file is missing or invalid; the message names the file and the key path."""


class UnknownModel(KeyError):
    def __init__(self, model_id: str, known: list[str]) -> None:
        close = difflib.get_close_matches(model_id, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known models: {', '.join(known)}"
        super().__init__(f"unknown model {model_id!r}{hint}")
        self.model_id = model_id

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class CatalogFile:
    """One file, or one set of files (glob patterns), of a model's download."""

    repo: str | None = None
    path: str | None = None
    include: tuple[str, ...] = ()
    url: str | None = None
    revision: str = "main"
    dest: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None

    @property
    def is_pattern(self) -> bool:
        return bool(self.include)


@dataclass(frozen=True)
class CatalogModel:
    id: str
    name: str
    modality: str
    engine: str
    devices: tuple[str, ...]
    disk_bytes: int
    vram_bytes: int
    ram_bytes: int
    licence: str
    licence_url: str
    licence_acceptance: bool
    preference: int
    serve_name: str
    worker_args: tuple[str, ...]
    notes: str
    files: tuple[CatalogFile, ...]

    @property
    def needs_gpu(self) -> bool:
        return "cpu" not in self.devices

    @property
    def runs_on_cpu(self) -> bool:
        return "cpu" in self.devices


@dataclass(frozen=True)
class Catalog:
    models: tuple[CatalogModel, ...]
    source: str = "<catalog>"

    def __iter__(self) -> Iterator[CatalogModel]:
        return iter(self.models)

    def __len__(self) -> int:
        return len(self.models)

    def ids(self) -> list[str]:
        return [m.id for m in self.models]

    def get(self, model_id: str) -> CatalogModel:
        for model in self.models:
            if model.id == model_id:
                return model
        raise UnknownModel(model_id, self.ids())

    def by_modality(self, modality: str) -> list[CatalogModel]:
        """Models of one modality, most preferred first."""
        return sorted((m for m in self.models if m.modality == modality), key=lambda m: -m.preference)


class _Reader:
    """Typed access to one TOML table that reports problems with the key path."""

    def __init__(self, table: Mapping[str, Any], where: str, source: str) -> None:
        self.table, self.where, self.source = table, where, source

    def fail(self, key: str, message: str) -> CatalogError:
        return CatalogError(f"{self.source}: {self.where}.{key}: {message}")

    def text(self, key: str, default: str | None = None) -> str:
        value = self.table.get(key, default)
        if not isinstance(value, str) or (default is None and not value):
            raise self.fail(key, "required text" if value is None else f"must be text, got {value!r}")
        return value

    def optional_text(self, key: str) -> str | None:
        value = self.table.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise self.fail(key, f"must be non-empty text, got {value!r}")
        return value

    def number(self, key: str, *, required: bool = True) -> float:
        value = self.table.get(key)
        if value is None and not required:
            return 0.0
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise self.fail(key, "required" if value is None else f"must be a number >= 0, got {value!r}")
        return float(value)

    def integer(self, key: str, default: int | None = None) -> int | None:
        value = self.table.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(key, f"must be an integer >= 0, got {value!r}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {value!r}")
        return value

    def strings(self, key: str, choices: tuple[str, ...] | None = None) -> tuple[str, ...]:
        value = self.table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(key, f"must be a list of text, got {value!r}")
        if choices is not None:
            for v in value:
                if v not in choices:
                    raise self.fail(key, f"{v!r} is not one of {', '.join(choices)}")
        return tuple(value)

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.text(key)
        if value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value


_FILE_KEYS = {"repo", "path", "include", "url", "revision", "dest", "size_bytes", "sha256"}
_MODEL_KEYS = {
    "name", "modality", "engine", "devices", "disk_gb", "vram_gib", "ram_gib", "licence", "licence_url",
    "licence_acceptance", "preference", "serve_name", "worker_args", "notes", "files",
}  # fmt: skip


def _parse_file(table: Any, where: str, source: str) -> CatalogFile:
    if not isinstance(table, dict):
        raise CatalogError(f"{source}: {where}: must be a table")
    unknown = set(table) - _FILE_KEYS
    if unknown:
        raise CatalogError(f"{source}: {where}.{sorted(unknown)[0]}: unknown key")
    r = _Reader(table, where, source)
    entry = CatalogFile(
        repo=r.optional_text("repo"),
        path=r.optional_text("path"),
        include=r.strings("include"),
        url=r.optional_text("url"),
        revision=r.text("revision", "main"),
        dest=r.optional_text("dest"),
        size_bytes=r.integer("size_bytes"),
        sha256=r.optional_text("sha256"),
    )
    if entry.url is not None:
        if entry.repo or entry.path or entry.include:
            raise r.fail("url", "a url entry takes no repo, path or include")
        if entry.sha256 is None or entry.size_bytes is None or entry.dest is None:
            raise r.fail("url", "a url entry needs sha256, size_bytes and dest")
    elif entry.repo is None:
        raise r.fail("repo", "required (or url)")
    elif (entry.path is None) == (not entry.include):
        raise r.fail("path", "give exactly one of path or include")
    if entry.sha256 is not None and (len(entry.sha256) != 64 or any(c not in "0123456789abcdef" for c in entry.sha256)):
        raise r.fail("sha256", "must be 64 lowercase hex digits")
    if entry.dest is not None and (entry.dest.startswith("/") or ".." in Path(entry.dest).parts):
        raise r.fail("dest", "must be a relative path inside the model directory")
    return entry


def _parse_model(model_id: str, table: Any, source: str) -> CatalogModel:
    where = f"models.{model_id}"
    if not isinstance(table, dict):
        raise CatalogError(f"{source}: {where}: must be a table")
    unknown = set(table) - _MODEL_KEYS
    if unknown:
        raise CatalogError(f"{source}: {where}.{sorted(unknown)[0]}: unknown key")
    r = _Reader(table, where, source)
    files_raw = table.get("files", [])
    if not isinstance(files_raw, list) or not files_raw:
        raise r.fail("files", "at least one [[files]] entry is required")
    devices = r.strings("devices", DEVICES)
    if not devices:
        raise r.fail("devices", "at least one device is required")
    return CatalogModel(
        id=model_id,
        name=r.text("name"),
        modality=r.choice("modality", MODALITIES),
        engine=r.choice("engine", ENGINES),
        devices=devices,
        disk_bytes=round(r.number("disk_gb") * GB),
        vram_bytes=round(r.number("vram_gib") * GIB),
        ram_bytes=round(r.number("ram_gib") * GIB),
        licence=r.text("licence"),
        licence_url=r.text("licence_url", ""),
        licence_acceptance=r.flag("licence_acceptance", False),
        preference=r.integer("preference", 0) or 0,
        serve_name=r.text("serve_name", model_id),
        worker_args=r.strings("worker_args"),
        notes=r.text("notes", ""),
        files=tuple(_parse_file(f, f"{where}.files[{i}]", source) for i, f in enumerate(files_raw)),
    )


def parse_catalog(data: Mapping[str, Any], source: str = "<catalog>") -> Catalog:
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise CatalogError(f"{source}: models: at least one [models.<id>] table is required")
    unknown = set(data) - {"models"}
    if unknown:
        raise CatalogError(f"{source}: {sorted(unknown)[0]}: unknown key")
    return Catalog(tuple(_parse_model(mid, table, source) for mid, table in models.items()), source)


def default_catalog_path() -> Path:
    return Path(str(resources.files("appliance").joinpath("data", "catalog.toml")))


def load_catalog(path: Path | str | None = None) -> Catalog:
    """The catalog in `path`, or the one shipped with the appliance."""
    p = Path(path) if path is not None else default_catalog_path()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CatalogError(f"{p}: file not found") from None
    except OSError as exc:
        raise CatalogError(f"{p}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{p}: invalid TOML: {exc}") from None
    return parse_catalog(data, str(p))
