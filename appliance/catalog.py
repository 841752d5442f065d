"""The model catalog: what each known model is, where it comes from and what it costs in memory.

Owns the catalog data model (`CatalogModel`, `CatalogFile`), loading and validating the TOML data file
(`appliance/data/catalog.toml` by default) through pydantic models, as the configuration is read
(`appliance.config`): every problem is one line naming the file and the key path and lookups by id and
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
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .config import _describe as describe_error

MODALITIES = ("text", "image", "speech", "embedding", "transcription", "video")
ENGINES = ("vllm", "comfyui", "worker:text", "worker:diffusers", "worker:speech", "worker:embed", "worker:stt")
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
    image_size: str = ""  # image models: the size of a request that names none, on a GPU ("" = the engine's)

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


def _choice(value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
    return value


_Text = Annotated[str, Field(strict=True, min_length=1)]
_Size = Annotated[float, Field(strict=True, ge=0)]
_Count = Annotated[int, Field(strict=True, ge=0)]


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _FileTable(_Table):
    repo: _Text | None = None
    path: _Text | None = None
    include: list[_Text] = Field(default_factory=list)
    url: _Text | None = None
    revision: _Text = "main"
    dest: _Text | None = None
    size_bytes: _Count | None = None
    sha256: _Text | None = None

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        if v is not None and (len(v) != 64 or any(c not in "0123456789abcdef" for c in v)):
            raise ValueError("must be 64 lowercase hex digits")
        return v

    @field_validator("dest")
    @classmethod
    def _relative(cls, v: str | None) -> str | None:
        if v is not None and (v.startswith("/") or ".." in Path(v).parts):
            raise ValueError("must be a relative path inside the model directory")
        return v

    @model_validator(mode="after")
    def _source(self) -> _FileTable:
        # "KEY: message": the error names the key the rule is about (see _lines)
        if self.url is not None:
            if self.repo or self.path or self.include:
                raise ValueError("url: a url entry takes no repo, path or include")
            if self.sha256 is None or self.size_bytes is None or self.dest is None:
                raise ValueError("url: a url entry needs sha256, size_bytes and dest")
        elif self.repo is None:
            raise ValueError("repo: required (or url)")
        elif (self.path is None) == (not self.include):
            raise ValueError("path: give exactly one of path or include")
        return self


class _ModelTable(_Table):
    name: _Text
    modality: str
    engine: str
    devices: list[str] = Field(default_factory=list, validate_default=True)
    disk_gb: _Size
    vram_gib: _Size
    ram_gib: _Size
    licence: _Text
    licence_url: Annotated[str, Field(strict=True)] = ""
    licence_acceptance: Annotated[bool, Field(strict=True)] = False
    preference: _Count = 0
    serve_name: _Text | None = None
    worker_args: list[_Text] = Field(default_factory=list)
    notes: Annotated[str, Field(strict=True)] = ""
    image_size: Annotated[str, Field(strict=True)] = ""
    files: list[_FileTable] = Field(default_factory=list, validate_default=True)

    _modality = field_validator("modality")(classmethod(lambda cls, v: _choice(v, MODALITIES)))
    _engine = field_validator("engine")(classmethod(lambda cls, v: _choice(v, ENGINES)))

    @field_validator("image_size")
    @classmethod
    def _size(cls, v: str) -> str:
        w, sep, h = v.partition("x")
        if v and not (sep and w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
            raise ValueError(f"must be WIDTHxHEIGHT, e.g. 1024x1024, got {v!r}")
        return v

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one device is required")
        for device in v:
            _choice(device, DEVICES)
        return v

    @field_validator("files")
    @classmethod
    def _files(cls, v: list[_FileTable]) -> list[_FileTable]:
        if not v:
            raise ValueError("at least one [[files]] entry is required")
        return v


class _CatalogDoc(_Table):
    models: dict[str, _ModelTable]

    @field_validator("models")
    @classmethod
    def _some(cls, v: dict[str, _ModelTable]) -> dict[str, _ModelTable]:
        if not v:
            raise ValueError("at least one [models.<id>] table is required")
        return v


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _lines(exc: ValidationError, source: str) -> list[str]:
    """Each problem as `SOURCE: key.path: message`, worded as the configuration's errors are."""
    lines: list[str] = []
    for err in exc.errors():
        where, message = _where(tuple(err["loc"])), describe_error(err)[1]
        key, sep, rest = message.partition(": ")
        if err["type"] == "value_error" and sep and key.isidentifier() and key in _FileTable.model_fields:
            where, message = f"{where}.{key}", rest
        lines.append(f"{source}: {where}: {message}" if where else f"{source}: {message}")
    return lines


def _model(model_id: str, t: _ModelTable) -> CatalogModel:
    return CatalogModel(
        id=model_id,
        name=t.name,
        modality=t.modality,
        engine=t.engine,
        devices=tuple(t.devices),
        disk_bytes=round(t.disk_gb * GB),
        vram_bytes=round(t.vram_gib * GIB),
        ram_bytes=round(t.ram_gib * GIB),
        licence=t.licence,
        licence_url=t.licence_url,
        licence_acceptance=t.licence_acceptance,
        preference=t.preference,
        serve_name=t.serve_name or model_id,
        worker_args=tuple(t.worker_args),
        notes=t.notes,
        image_size=t.image_size,
        files=tuple(CatalogFile(repo=f.repo, path=f.path, include=tuple(f.include), url=f.url, revision=f.revision,
                                dest=f.dest, size_bytes=f.size_bytes, sha256=f.sha256) for f in t.files),
    )  # fmt: skip


def parse_catalog(data: Mapping[str, Any], source: str = "<catalog>") -> Catalog:
    """Validate a parsed catalog document; raise CatalogError naming `source` and each key path."""
    try:
        doc = _CatalogDoc.model_validate(dict(data))
    except ValidationError as exc:
        raise CatalogError("\n".join(_lines(exc, source))) from None
    return Catalog(tuple(_model(mid, table) for mid, table in doc.models.items()), source)


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
