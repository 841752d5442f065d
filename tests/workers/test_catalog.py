"""The shipped model catalog and the loader's validation."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.catalog import GB, GIB, CatalogError, UnknownModel, load_catalog

REQUIRED = {
    "qwen2.5-32b-instruct-awq", "qwen2.5-7b-instruct-awq", "qwen2.5-0.5b-instruct", "sd3.5-large-turbo-comfyui",
    "sd3.5-large-turbo-diffusers", "xtts-v2", "piper-en-us-joe-medium", "all-minilm-l6-v2", "hunyuanvideo",
    "mochi-1-preview",
}  # fmt: skip


def test_shipped_catalog_has_the_reference_models() -> None:
    catalog = load_catalog()
    assert set(catalog.ids()) >= REQUIRED
    qwen = catalog.get("qwen2.5-32b-instruct-awq")
    assert (qwen.engine, qwen.files[0].repo) == ("vllm", "Qwen/Qwen2.5-32B-Instruct-AWQ")
    assert 19 * GB < qwen.disk_bytes < 20 * GB and qwen.vram_bytes <= 22 * GIB
    xtts = catalog.get("xtts-v2")
    assert xtts.licence == "CPML" and xtts.licence_acceptance and xtts.files[0].repo == "coqui/XTTS-v2"
    comfy = catalog.get("sd3.5-large-turbo-comfyui")
    names = {Path(f.dest or "").name: f.size_bytes for f in comfy.files}
    assert set(names) == {"sd3.5_large_turbo.safetensors", "clip_l.safetensors", "clip_g.safetensors",
                          "t5xxl_fp8_e4m3fn.safetensors"}  # fmt: skip
    assert all(size and size > 100_000_000 for size in names.values())
    assert sum(names.values()) <= comfy.disk_bytes * 1.01  # type: ignore[arg-type]
    videos = catalog.by_modality("video")
    assert [m.id for m in videos] == ["hunyuanvideo", "mochi-1-preview"]
    assert all(m.vram_bytes >= 40 * GIB and m.needs_gpu for m in videos)
    assert catalog.get("piper-en-us-joe-medium").runs_on_cpu and not catalog.get("xtts-v2").runs_on_cpu
    assert next(m.id for m in catalog.by_modality("text")) == "qwen2.5-32b-instruct-awq"


def test_unknown_model_suggests_close_ids() -> None:
    with pytest.raises(UnknownModel, match=re.escape("did you mean qwen2.5-32b-instruct-awq")):
        load_catalog().get("qwen2.5-32b-instruct")


MINIMAL = """
[models.m]
name = "M"
modality = "text"
engine = "worker:text"
devices = ["cpu"]
disk_gb = 1
vram_gib = 1
ram_gib = 1
licence = "MIT"
"""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[[models.m.files]]\nrepo = "a/b"\npath = "x"\n', None),
        ("", "models.m.files: at least one"),
        ('[[models.m.files]]\nrepo = "a/b"\n', "models.m.files[0].path: give exactly one of path or include"),
        ('[[models.m.files]]\nurl = "https://x/y"\ndest = "y"\n', "models.m.files[0].url: a url entry needs sha256"),
        ('[[models.m.files]]\nrepo = "a/b"\npath = "x"\ndest = "../x"\n', "models.m.files[0].dest"),
        ('[[models.m.files]]\nrepo = "a/b"\npath = "x"\nsize = 3\n', "models.m.files[0].size: unknown key"),
        ('image_size = "big"\n[[models.m.files]]\nrepo = "a/b"\npath = "x"\n', "models.m.image_size: must be"),
    ],
)
def test_validation_names_the_file_and_key(tmp_path: Path, extra: str, message: str | None) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(MINIMAL + extra)
    if message is None:
        assert load_catalog(path).get("m").files[0].path == "x"
        return
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


def test_bad_values_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(
        MINIMAL.replace('modality = "text"', 'modality = "smell"') + '[[models.m.files]]\nrepo="a/b"\npath="x"\n'
    )
    with pytest.raises(
        CatalogError, match=re.escape("models.m.modality: must be one of text, image, speech, embedding")
    ):
        load_catalog(path)
    with pytest.raises(CatalogError, match="file not found"):
        load_catalog(tmp_path / "missing.toml")


HEAVY = ("torch", "transformers", "diffusers", "sentence_transformers", "piper", "TTS", "numpy")


@pytest.mark.parametrize(
    ("modules", "allowed"),
    [
        # daemon side: catalog, pull, plan and their CLI, including what pull imports lazily
        (["appliance.catalog_cli", "appliance.pull", "appliance.plan", "huggingface_hub",
          "huggingface_hub.utils"], ()),
        # worker entry points before /health: the scaffold and routes, no model library yet
        (["services.text.__main__", "services.embed.__main__", "services.diffusers.__main__"], ("numpy",)),
        (["services.speech.__main__"], ("numpy",)),
    ],
)  # fmt: skip
def test_no_heavy_imports(modules: list[str], allowed: tuple[str, ...]) -> None:
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in " + repr(HEAVY) + ")))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    loaded = {m.split(".")[0] for m in out.stdout.strip().split(",") if m}
    assert loaded <= set(allowed), loaded


def test_catalog_is_read_like_the_configuration_every_problem_named_by_file_and_key(tmp_path: Path) -> None:
    """Read through pydantic as the configuration is: every problem at once, each on its own line."""
    path = tmp_path / "catalog.toml"
    path.write_text(MINIMAL.replace('modality = "text"', 'modality = "text"\ncolour = "red"')
                    .replace('devices = ["cpu"]', 'devices = ["tpu"]').replace("ram_gib = 1", 'ram_gib = "1"')
                    + '[[models.m.files]]\nrepo = "a/b"\npath = "x"\nsha256 = "zz"\n')  # fmt: skip
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    lines = str(info.value).splitlines()
    assert all(line.startswith(f"{path}: models.m.") for line in lines), lines
    assert {line.split(": ")[1] for line in lines} >= {
        "models.m.colour", "models.m.devices", "models.m.ram_gib", "models.m.files[0].sha256"}


def test_workers_share_only_the_light_field_rules_of_the_daemon() -> None:
    """The XTTS worker runs from its own environment without the daemon's dependencies: a worker may
    import `appliance.fields` (standard library only) and nothing else of the daemon."""
    workers = ["services.text.__main__", "services.embed.__main__", "services.diffusers.__main__",
               "services.speech.__main__"]  # fmt: skip
    code = (
        "import importlib, sys\n"
        f"for m in {workers!r}: importlib.import_module(m)\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('appliance', 'pydantic'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert set(out.stdout.strip().split(",")) == {"appliance", "appliance.fields"}
