"""Every configuration key is documented (a setting nobody can find is a bug)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from appliance import config as c

DOC = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()


def keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out: list[str] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel) and ann is not c.Config:
            out += keys(ann, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


def documented(key: str) -> bool:
    return re.search(r"`" + re.escape(key) + r"`", DOC) is not None


def test_every_setting_is_documented() -> None:
    missing: list[str] = []
    for model in (c.ServerConfig, c.GpuConfig, c.SchedulerConfig, c.ModelConfig, c.LicenceConfig, c.VllmEngine,
                  c.ComfyUIEngine, c.WorkerEngine, c.OpenWebUIEngine, c.StoreConfig, c.JobsConfig):
        missing += [f"{model.__name__}.{key}" for key in keys(model) if not documented(key)]
    assert "`profile`" in DOC
    assert not missing, f"undocumented settings: {missing}"
