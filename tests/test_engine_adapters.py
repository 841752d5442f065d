"""Engine adapters: the command lines and environments they build (checked by the faithful
stand-ins' own argument parsers), and their activate/release against the stand-ins."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from daemon_harness import free_port, vllm_engine
from standins.launch import async_wait_until, start

from appliance.config import ConfigError, parse_config
from appliance.engines.base import ControlError, EngineContext, Tier
from appliance.engines.engine import build_adapter
from appliance.engines.openwebui import OpenWebUIAdapter
from appliance.engines.vllm import VllmAdapter
from appliance.gpu import FakeGpuProbe

GIB = 1 << 30


def ctx(tmp_path: Path, engines: dict[str, Any], models: dict[str, Any] | None = None) -> EngineContext:
    cfg = parse_config({"server": {"state_dir": str(tmp_path / "state")}, "engines": engines,
                        "models": models or {}}, "test")
    return EngineContext(cfg, tmp_path / "state", "http://127.0.0.1:8080")


def test_vllm_command_line_and_environment(tmp_path: Path) -> None:
    c = ctx(tmp_path, {"vllm": {"kind": "vllm", "model": "Qwen/Qwen2.5-32B-Instruct-AWQ", "port": 8001,
                                "quantization": "awq_marlin", "lmcache": {"cpu_gb": 12, "disk_gb": 50}}},
            {"qwen": {"engine": "vllm", "modality": "text"}})
    a = VllmAdapter("vllm", c, gpu_fraction=0.812, max_model_len=16384)
    argv = a.argv()
    assert argv[:3] == ["vllm", "serve", "Qwen/Qwen2.5-32B-Instruct-AWQ"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "8001"
    assert argv[argv.index("--served-model-name") + 1] == "qwen"
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.812"
    assert argv[argv.index("--max-model-len") + 1] == "16384"
    assert "--enable-sleep-mode" in argv and "--quantization" in argv
    kv = json.loads(argv[argv.index("--kv-transfer-config") + 1])
    assert kv == {"kv_connector": "LMCacheConnectorV1", "kv_role": "kv_both"}
    env = a.environment()
    assert env["VLLM_SERVER_DEV_MODE"] == "1"
    lm = json.loads(Path(env["LMCACHE_CONFIG_FILE"]).read_text())
    assert lm["max_local_cpu_size"] == 12 and lm["max_local_disk_size"] == 50
    assert lm["local_disk"].startswith("file://") and lm["local_cpu"] is True
    assert Path(env["PROMETHEUS_MULTIPROC_DIR"]).is_dir()


def test_vllm_without_sleep_mode_has_no_dev_routes_and_cannot_release(tmp_path: Path) -> None:
    c = ctx(tmp_path, {"vllm": {"kind": "vllm", "model": "m", "sleep_mode": False,
                                "lmcache": {"enabled": False}}})
    a = VllmAdapter("vllm", c)
    assert "--enable-sleep-mode" not in a.argv() and "VLLM_SERVER_DEV_MODE" not in a.environment()
    assert "--kv-transfer-config" not in a.argv() and a.releasable == frozenset()


def test_comfyui_and_worker_command_lines(tmp_path: Path) -> None:
    c = ctx(tmp_path, {
        "comfyui": {"kind": "comfyui", "path": str(tmp_path), "port": 8188},
        "tts": {"kind": "worker", "worker": "speech", "model_path": "piper:en_US-joe-medium", "port": 8010,
                "device": "cpu", "python": "/opt/xtts/bin/python"},
    }, {"voice": {"engine": "tts", "modality": "speech"}})
    spec = build_adapter("comfyui", c).launch_spec()
    assert spec.argv[1:2] == ["main.py"] and spec.cwd == str(tmp_path)
    assert spec.argv[spec.argv.index("--listen") + 1] == "127.0.0.1"
    out = spec.argv[spec.argv.index("--output-directory") + 1]
    assert out.startswith(str(tmp_path / "state")) and Path(out).is_dir()
    w = build_adapter("tts", c).launch_spec()
    assert w.argv[:3] == ["/opt/xtts/bin/python", "-m", "services.speech"]
    assert w.argv[w.argv.index("--model-id") + 1] == "voice"
    assert w.argv[w.argv.index("--host") + 1] == "127.0.0.1"
    assert "PYTHONPATH" in w.env


def test_comfyui_is_launched_inside_its_grant_not_across_the_whole_card(tmp_path: Path) -> None:
    """Regression: ComfyUI's dynamic VRAM (on by default since Feb 2026) sized itself to the whole
    card beside vLLM and pinned tens of GB of host RAM; it must start inside what the scheduler grants."""
    from standins.comfyui_args import build_parser

    engines = {"comfyui": {"kind": "comfyui", "path": str(tmp_path), "port": 8188}}
    models = {"sd": {"engine": "comfyui", "modality": "image", "vram_gb": 15.0},
              "sd-small": {"engine": "comfyui", "modality": "image", "vram_gb": 6.0}}
    cfg = ctx(tmp_path, engines, models).config
    c = EngineContext(cfg, tmp_path / "state", "http://127.0.0.1:8080", gpu_total_bytes=24 * GIB)
    argv = build_adapter("comfyui", c).launch_spec().argv
    assert "--disable-dynamic-vram" in argv
    reserve = float(argv[argv.index("--reserve-vram") + 1])
    assert 9 * GIB / 1e9 <= reserve < 9 * GIB / 1e9 + 0.01  # the card less the 15 GiB grant, never less
    build_parser().parse_args(argv[2:])  # only flags ComfyUI documents (contracts §3.1): else SystemExit

    unknown = EngineContext(cfg, tmp_path / "state", "http://127.0.0.1:8080")  # no GPU size: no reserve
    assert "--reserve-vram" not in build_adapter("comfyui", unknown).launch_spec().argv

    own = {"comfyui": {**engines["comfyui"], "extra_args": ["--enable-dynamic-vram", "--vram-headroom", "1"]}}
    c2 = EngineContext(ctx(tmp_path, own, models).config, tmp_path / "state", "http://127.0.0.1:8080",
                       gpu_total_bytes=24 * GIB)
    argv = build_adapter("comfyui", c2).launch_spec().argv
    assert "--disable-dynamic-vram" not in argv and "--reserve-vram" not in argv  # the operator's choice
    assert argv[-3:] == ["--enable-dynamic-vram", "--vram-headroom", "1"]


def test_comfyui_pins_no_host_memory_when_it_could_pin_past_the_host_budget() -> None:
    """Regression: ComfyUI pins host RAM up to most of the box's (no flag caps it by size), past the
    host-RAM budget the scheduler keeps for slept weights; it pins nothing then, and keeps pinning
    where the budget covers what it may pin."""
    from appliance.engines.comfyui import memory_flags

    assert "--disable-pinned-memory" in memory_flags(15 * GIB, 24 * GIB, [], 64 * GIB, 32 * GIB)
    assert "--disable-pinned-memory" not in memory_flags(15 * GIB, 24 * GIB, [], 32 * GIB, 32 * GIB)
    assert memory_flags(15 * GIB, 24 * GIB, ["--disable-pinned-memory"], 64 * GIB, 32 * GIB).count(
        "--disable-pinned-memory") == 0  # the operator's own flag is not doubled


async def test_the_comfyui_standin_serves_from_the_adapters_command_line(tmp_path: Path) -> None:
    from daemon_harness import comfyui_engine

    port = free_port()
    c = ctx(tmp_path, {"comfyui": comfyui_engine(port)},
            {"sd": {"engine": "comfyui", "modality": "image", "vram_gb": 15.0}})
    adapter = build_adapter("comfyui", EngineContext(c.config, c.state_dir, c.gateway_url, gpu_total_bytes=24 * GIB))
    spec = adapter.launch_spec()
    assert "--disable-dynamic-vram" in spec.argv and "--reserve-vram" in spec.argv
    with start(spec.argv, env=spec.env, port=port):
        async with aiohttp.ClientSession() as session:
            await async_wait_until(lambda: adapter.probe(session), 20, message="ComfyUI stand-in ready")


def test_openwebui_is_wired_to_the_gateway(tmp_path: Path) -> None:
    c = ctx(tmp_path, {"ui": {"kind": "openwebui", "port": 3000}, "img": {"kind": "comfyui"}},
            {"sd": {"engine": "img", "modality": "image"}})
    a = OpenWebUIAdapter("ui", c)
    spec = a.launch_spec()
    assert spec.argv == ["open-webui", "serve", "--host", "127.0.0.1", "--port", "3000"]
    env = spec.env
    assert env["OPENAI_API_BASE_URL"] == "http://127.0.0.1:8080/v1"
    assert env["ENABLE_PERSISTENT_CONFIG"] == "False" and env["ENABLE_OLLAMA_API"] == "False"
    assert env["IMAGE_GENERATION_ENGINE"] == "openai" and env["IMAGE_GENERATION_MODEL"] == "sd"
    assert env["AUDIO_TTS_OPENAI_API_BASE_URL"] == env["OPENAI_API_BASE_URL"]
    assert env["WEBUI_SECRET_KEY"] == a.environment()["WEBUI_SECRET_KEY"]  # generated once, then kept
    assert "SSL_CERT_FILE" not in env


def test_openwebui_trusts_the_gateways_certificate_on_https(tmp_path: Path) -> None:
    cfg = parse_config({"server": {"state_dir": str(tmp_path / "s"), "tls_cert": "/e/cert.pem", "tls_key": "/e/k.pem"},
                        "engines": {"ui": {"kind": "openwebui", "port": 3000}}}, "test")
    env = OpenWebUIAdapter("ui", EngineContext(cfg, tmp_path / "s", "https://127.0.0.1:8080")).environment()
    assert env["OPENAI_API_BASE_URL"] == "https://127.0.0.1:8080/v1"
    assert env["SSL_CERT_FILE"] == env["REQUESTS_CA_BUNDLE"] == "/e/cert.pem"


@contextlib.asynccontextmanager
async def vllm_standin(tmp_path: Path, **knobs: str) -> AsyncIterator[tuple[VllmAdapter, aiohttp.ClientSession,
                                                                          FakeGpuProbe, str]]:
    """The vLLM stand-in (20 GiB on a 24 GiB fake GPU) started from the adapter's own command line,
    ready; yields the adapter, a session, the fake GPU and the server's base URL."""
    fake = tmp_path / "gpu"
    fake.mkdir()
    port = free_port()
    c = ctx(tmp_path, {"vllm": vllm_engine(port)}, {"chat": {"engine": "vllm", "modality": "text"}})
    adapter = VllmAdapter("vllm", c, gpu_fraction=0.8)
    spec = adapter.launch_spec()
    env = {**spec.env, "APPLIANCE_FAKE_GPU_DIR": str(fake), "VLLM_STANDIN_FOOTPRINT_BYTES": str(20 * GIB),
           **{f"VLLM_STANDIN_{k.upper()}": v for k, v in knobs.items()}}
    with start(spec.argv, env=env, port=port) as server:
        async with aiohttp.ClientSession() as session:
            await async_wait_until(lambda: adapter.probe(session), 20, message="vLLM stand-in ready")
            yield adapter, session, FakeGpuProbe(fake, 24 * GIB), server.url("")


async def test_vllm_adapter_sleeps_and_wakes_the_standin_at_both_levels(tmp_path: Path) -> None:
    async with vllm_standin(tmp_path) as (adapter, session, gpu, url):
        assert gpu.snapshot().used_bytes == 20 * GIB
        for tier in (Tier.HOST, Tier.DISK):
            await adapter.release(session, tier)
            assert await adapter.is_sleeping(session)
            assert gpu.snapshot().used_bytes < 2 * GIB
            await adapter.activate(session)
            assert not await adapter.is_sleeping(session)
            body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
            async with session.post(url + "/v1/chat/completions", json=body) as r:
                assert r.status == 200, await r.text()  # after level 2, only with reload_weights
        assert gpu.snapshot().used_bytes == 20 * GIB


async def test_vllm_adapter_prefetches_the_weights_then_wakes_the_kv_cache(tmp_path: Path) -> None:
    async with vllm_standin(tmp_path, weights_fraction="0.8") as (adapter, session, gpu, _):
        assert adapter.supports_prefetch
        with pytest.raises(ControlError, match="level 1"):
            await adapter.prefetch(session)  # awake: nothing to prefetch
        await adapter.release(session, Tier.HOST)
        slept = gpu.snapshot().used_bytes
        await adapter.prefetch(session)
        assert await adapter.is_sleeping(session)  # the KV cache still sleeps
        assert gpu.snapshot().used_bytes == slept + 16 * GIB  # the weights are back
        with pytest.raises(ControlError, match="partly awake"):
            await adapter.release(session, Tier.HOST)  # why the scheduler never sleeps it half awake
        await adapter.activate(session)
        assert not await adapter.is_sleeping(session)
        assert gpu.snapshot().used_bytes == 20 * GIB
        await adapter.release(session, Tier.DISK)
        with pytest.raises(ControlError, match="level 1"):
            await adapter.prefetch(session)  # level 2 discarded the weights


def test_prefetched_weights_come_from_the_config_else_the_daemons_catalog(tmp_path: Path) -> None:
    from appliance.catalog import load_catalog
    from appliance.scheduler.profiles import prefetch_bytes

    c = ctx(tmp_path, {"vllm": vllm_engine(free_port())},
            {"chat": {"engine": "vllm", "modality": "text", "vram_gb": 21.0, "catalog": "qwen2.5-32b-instruct-awq"}})
    adapter = VllmAdapter("vllm", c)
    m = c.config.models["chat"]
    footprint = 21 * GIB
    catalog = load_catalog()
    assert prefetch_bytes(m, footprint, adapter, catalog) == catalog.get("qwen2.5-32b-instruct-awq").disk_bytes
    assert prefetch_bytes(m, footprint, adapter, None) == 0  # no catalog given and no weights_gb: unknown
    own = m.model_copy(update={"weights_gb": 16.0})
    assert prefetch_bytes(own, footprint, adapter, None) == 16 * GIB
    assert prefetch_bytes(own, 16 * GIB, adapter, None) == 0  # nothing would be left to wake after the weights


def test_comfyui_points_at_pulled_models(tmp_path: Path) -> None:
    c = ctx(tmp_path, {"comfyui": {"kind": "comfyui", "path": str(tmp_path)}},
            {"sd": {"engine": "comfyui", "modality": "image", "catalog": "sd3.5-large-turbo-comfyui"}})
    assert "--extra-model-paths-config" not in build_adapter("comfyui", c).launch_spec().argv  # nothing pulled
    (tmp_path / "state" / "models" / "sd3.5-large-turbo-comfyui" / "checkpoints").mkdir(parents=True)
    argv = build_adapter("comfyui", c).launch_spec().argv
    yaml = Path(argv[argv.index("--extra-model-paths-config") + 1]).read_text()
    assert f"base_path: {tmp_path / 'state' / 'models' / 'sd3.5-large-turbo-comfyui'}" in yaml
    assert "text_encoders: text_encoders" in yaml


def test_models_voices_setting_was_never_read_now_reaches_the_speech_worker(tmp_path: Path) -> None:
    engines = {"tts": {"kind": "worker", "worker": "speech", "model_path": "espeak:en-us"}}
    models = {"voice": {"engine": "tts", "modality": "speech", "voices": {"nova": "de", "alloy": "en-gb"}}}
    argv = build_adapter("tts", ctx(tmp_path, engines, models)).launch_spec().argv
    flags = [argv[i + 1] for i, a in enumerate(argv) if a == "--voice"]
    assert flags == ["alloy=en-gb", "nova=de"]
    with pytest.raises(ConfigError, match=r"test: models\.voice\.voices"):
        parse_config({"engines": engines, "models": {"voice": {**models["voice"], "voices": ["de"]}}}, "test")


def test_image_default_size_comes_from_the_catalog_per_model(tmp_path: Path) -> None:
    engines = {"img": {"kind": "worker", "worker": "diffusers", "model_path": "/models/sd35"}}
    models = {"sd": {"engine": "img", "modality": "image", "catalog": "sd3.5-large-turbo-diffusers"}}
    argv = build_adapter("img", ctx(tmp_path, engines, models)).launch_spec().argv
    assert argv[argv.index("--default-size") + 1] == "1024x1024"
    assert "--cpu-default-size" not in argv  # a CPU keeps the worker's small default


def test_xtts_licence_flag_only_once_accepted(tmp_path: Path) -> None:
    engines = {"tts": {"kind": "worker", "worker": "speech", "model_path": "xtts:xtts_v2"}}
    models = {"voice": {"engine": "tts", "modality": "speech", "catalog": "xtts-v2"}}
    refused = build_adapter("tts", ctx(tmp_path, engines, models)).launch_spec().argv
    assert "--accept-cpml" not in refused
    cfg = parse_config({"server": {"state_dir": str(tmp_path / "s")}, "engines": engines, "models": models,
                        "licences": {"accepted": ["CPML"]}}, "test")
    accepted = build_adapter("tts", EngineContext(cfg, tmp_path / "s", "http://127.0.0.1:8080")).launch_spec()
    assert accepted.argv.count("--accept-cpml") == 1
    assert accepted.env["APPLIANCE_STATE_DIR"] == str(tmp_path / "s")


def test_vllm_is_sized_to_its_budget_not_to_vllms_default(tmp_path: Path) -> None:
    from appliance.app import vllm_sizing
    from appliance.catalog import load_catalog

    doc = {"engines": {"vllm": {"kind": "vllm", "model": "Qwen/Qwen2.5-32B-Instruct-AWQ"}},
           "models": {"qwen": {"engine": "vllm", "modality": "text", "vram_gb": 21.0,
                               "catalog": "qwen2.5-32b-instruct-awq"}}}
    cfg = parse_config(doc, "test")
    frac, max_len = vllm_sizing(cfg, "vllm", 24 * GIB, load_catalog()) or (0.0, 0)
    assert frac == 0.875  # 21 GiB of 24: the other 3 GiB stay free for co-resident models
    assert max_len >= 2048 and max_len % 16 == 0
    smaller = parse_config({**doc, "models": {"qwen": {**doc["models"]["qwen"], "vram_gb": 20.5}}}, "test")
    frac2, max_len2 = vllm_sizing(smaller, "vllm", 24 * GIB, load_catalog()) or (0.0, 0)
    assert frac2 < frac and max_len2 < max_len  # less VRAM: less KV cache, shorter context
    assert vllm_sizing(cfg, "vllm", 0) is None  # no GPU: nothing to size


def test_engines_and_scheduler_share_one_tier_enum() -> None:
    """Regression: engines.base and scheduler.types each had a `Tier`, so a scheduler tier handed to
    an adapter compared by value only."""
    from appliance.scheduler.types import Tier as SchedulerTier

    assert Tier is SchedulerTier
