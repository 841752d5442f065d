"""The configuration reference and the code agree: every setting is documented in its section of
docs/configuration.md, every documented key is a real setting, and every setting is read by the
daemon or its workers (a documented setting that does nothing is a bug: users tune it in vain).

"Read" is checked statically: the setting's attribute name must be accessed (`cfg.scheduler.tick_s`)
somewhere in appliance/ or services/ outside config.py, where the models are only declared.
"""

from __future__ import annotations

import ast
import re
import types
import typing
from functools import cache
from pathlib import Path

from pydantic import BaseModel

from appliance import config as c

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "configuration.md").read_text()
NOT_TOML = {"source"}  # Config.source records the file a Config came from; no one writes it


def nested_model(annotation: object) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted keys of a model's settings; a nested table (`restart`, `lmcache`) gives `restart.window_s`."""
    out: list[str] = []
    for name, field in model.model_fields.items():
        inner = nested_model(field.annotation)
        out += keys(inner, f"{prefix}{name}.") if inner else [prefix + name]
    return out


def table_models() -> dict[str, list[type[BaseModel]]]:
    """Each documented table (`server`, `engines.NAME`, ...) and the models its keys belong to."""
    out: dict[str, list[type[BaseModel]]] = {}
    for name, field in c.Config.model_fields.items():
        ann = field.annotation
        if nested_model(ann):
            out[name] = [typing.cast(type[BaseModel], ann)]
        elif typing.get_origin(ann) is dict:
            value = typing.get_args(ann)[1]
            if typing.get_origin(value) is typing.Annotated:
                value = typing.get_args(value)[0]
            members = typing.get_args(value) if isinstance(value, types.UnionType) else (value,)
            out[f"{name}.*"] = [m for m in members if nested_model(m)]
    return out


def documented_sections() -> dict[str, dict[str, set[str]]]:
    """Keys documented per table, from docs/configuration.md: the top-level table under `Top level`,
    `[server]` and the like under their heading, and for `[engines.NAME]` the common table plus one
    table per `kind = "..."`."""
    sections: dict[str, dict[str, set[str]]] = {}
    table: str | None = None
    part, prefix = "*", ""
    for line in DOC.splitlines():
        # `[server]`, `[engines.NAME]`, a nested table such as `[server.tls]` (keys then read `tls.x`)
        heading = re.match(r"^#{2,3} (?:`\[([a-z_]+)((?:\.[a-z_]+)*)(\.[A-Z]+)?\]`|(Top level))", line)
        if heading:
            table = "" if heading.group(4) else heading.group(1) + (".*" if heading.group(3) else "")
            part, prefix = "*", (heading.group(2) or "").lstrip(".") + ("." if heading.group(2) else "")
            sections.setdefault(table, {})
            continue
        if line.startswith("## "):
            table = None  # a section that documents no table
            continue
        kind = re.match(r'^`kind = "([a-z]+)"`', line)
        if kind and table is not None:
            part = kind.group(1)
        row = re.match(r"^\| `([a-z_.]+)` \|", line)
        if row and table is not None:
            sections[table].setdefault(part, set()).add(prefix + row.group(1))
    return sections


def test_every_setting_is_documented_in_its_table_and_every_documented_key_exists() -> None:
    sections = documented_sections()
    problems: list[str] = []
    top = {k for k in keys(c.Config) if "." not in k} - NOT_TOML - set(table_models()) - {"engines", "models"}
    top_doc = sections.get("", {}).get("*", set())
    problems += [f"top-level `{k}` is not documented under Top level" for k in sorted(top - top_doc)]
    problems += [f"`{k}` is documented under Top level but is no setting" for k in sorted(top_doc - top)]
    for table, models in table_models().items():
        doc = sections.get(table)
        if doc is None:
            problems.append(f"table [{table}] has no section in docs/configuration.md")
            continue
        common = doc.get("*", set())
        for model in models:
            kind_field = model.model_fields.get("kind")
            kind = typing.get_args(kind_field.annotation)[0] if kind_field else "*"
            documented = common | doc.get(kind, set())
            actual = set(keys(model))
            problems += [f"[{table}] {model.__name__}.{k} is not documented" for k in sorted(actual - documented)]
            extra = doc.get(kind, set()) - actual if kind != "*" else set()
            problems += [f"[{table}] `{k}` is documented for kind {kind} but is no setting" for k in sorted(extra)]
        everything = set().union(*(set(keys(m)) for m in models))
        problems += [f"[{table}] `{k}` is documented but is no setting" for k in sorted(common - everything)]
    assert not problems, "\n".join(problems)


@cache
def attributes_read() -> frozenset[str]:
    """Every attribute name read in appliance/ and services/, config.py excepted."""
    found: set[str] = set()
    for base in ("appliance", "services"):
        for path in (ROOT / base).rglob("*.py"):
            if path == ROOT / "appliance" / "config.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                    found.add(node.attr)
    return frozenset(found)


def unread(model: type[BaseModel]) -> list[str]:
    """Settings of `model` (dotted keys) whose every part is never read outside config.py."""
    return [k for k in keys(model) if k not in NOT_TOML and not set(k.split(".")) <= attributes_read()]


def test_every_setting_is_read_somewhere() -> None:
    tables = [m for name, ms in table_models().items() if name.endswith(".*") for m in ms]
    models = [c.Config, *tables]  # Config's keys take in its nested tables ([server], [gpu], ...)
    missing = [f"{m.__name__}.{k}" for m in models for k in unread(m)]
    assert not missing, f"settings read nowhere (implement them, or remove them and their docs): {missing}"


def test_the_read_check_catches_a_setting_nobody_reads() -> None:
    class Planted(BaseModel):
        tick_s: float = 1.0
        zz_headroom_nobody_reads: float = 1.05

    assert unread(Planted) == ["zz_headroom_nobody_reads"]
