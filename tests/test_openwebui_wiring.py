"""Open WebUI wired to the appliance for every modality (issue 19, item 3), checked on the environment
the adapter generates: chat, images, text-to-speech, speech-to-text and RAG embeddings all point at the
gateway with a key the appliance created for it, no GPU is visible to it, its default chat model is
one the box runs, and the key survives restarts but not a revocation."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from appliance.config import parse_config
from appliance.engine_keys import EngineKeys
from appliance.engines.base import EngineContext
from appliance.engines.openwebui import OpenWebUIAdapter
from appliance.gateway.keys import KeyStore
from appliance.store import open_store

ENGINES = {"ui": {"kind": "openwebui", "port": 3000},
           "w": {"kind": "worker", "worker": "embed", "model_path": "x", "port": 8011},
           "s": {"kind": "worker", "worker": "stt", "model_path": "pocketsphinx:en-us", "port": 8014},
           "t": {"kind": "worker", "worker": "speech", "model_path": "espeak:en-us", "port": 8010},
           "l": {"kind": "worker", "worker": "text", "model_path": "x", "port": 8012},
           "i": {"kind": "comfyui"}}  # fmt: skip
MODELS = {"qwen-small": {"engine": "l", "modality": "text"}, "sd": {"engine": "i", "modality": "image"},
          "voice": {"engine": "t", "modality": "speech"}, "ears": {"engine": "s", "modality": "transcription"},
          "minilm": {"engine": "w", "modality": "embedding"}}  # fmt: skip


def adapter(tmp_path: Path, engines: dict[str, object] | None = None) -> tuple[OpenWebUIAdapter, KeyStore]:
    state = tmp_path / "state"
    cfg = parse_config({"server": {"state_dir": str(state)}, "engines": engines or ENGINES, "models": MODELS}, "test")
    store = open_store("", state)
    ctx = EngineContext(cfg, state, "http://127.0.0.1:8080", engine_key=EngineKeys(store, state).key_for)
    return OpenWebUIAdapter("ui", ctx), KeyStore(store)


def test_every_modality_goes_through_the_gateway(tmp_path: Path) -> None:
    ui, _ = adapter(tmp_path)
    env = ui.launch_spec().env
    base = "http://127.0.0.1:8080/v1"
    for setting in ("OPENAI_API_BASE_URL", "IMAGES_OPENAI_API_BASE_URL", "AUDIO_TTS_OPENAI_API_BASE_URL",
                    "AUDIO_STT_OPENAI_API_BASE_URL", "RAG_OPENAI_API_BASE_URL"):  # fmt: skip
        assert env[setting] == base, setting
    assert (env["AUDIO_STT_ENGINE"], env["RAG_EMBEDDING_ENGINE"], env["AUDIO_TTS_ENGINE"]) == ("openai",) * 3
    assert env["IMAGE_GENERATION_ENGINE"] == "openai" and env["ENABLE_OLLAMA_API"] == "False"
    assert (env["AUDIO_STT_MODEL"], env["RAG_EMBEDDING_MODEL"], env["AUDIO_TTS_MODEL"]) == ("ears", "minilm", "voice")
    assert env["IMAGE_GENERATION_MODEL"] == "sd" and env["DEFAULT_MODELS"] == "qwen-small"
    assert env["CUDA_VISIBLE_DEVICES"] == ""  # nothing it runs itself can take GPU memory
    assert env["ENABLE_PERSISTENT_CONFIG"] == "False"  # our settings win over what its database kept


def test_it_gets_a_key_of_its_own_kept_across_restarts(tmp_path: Path) -> None:
    ui, keys = adapter(tmp_path)
    env = ui.launch_spec().env
    key = env["OPENAI_API_KEY"]
    assert key.startswith("sk-app-") and keys.verify(key) is not None
    assert all(env[k] == key for k in ("IMAGES_OPENAI_API_KEY", "AUDIO_TTS_OPENAI_API_KEY",
                                       "AUDIO_STT_OPENAI_API_KEY", "RAG_OPENAI_API_KEY"))  # fmt: skip
    saved = tmp_path / "state" / "engines" / "ui" / "api_key"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert ui.launch_spec().env["OPENAI_API_KEY"] == key  # the same key on the next start
    assert [k.name for k in keys.list()] == ["engine:ui"]
    keys.revoke("engine:ui")
    fresh = ui.launch_spec().env["OPENAI_API_KEY"]
    assert fresh != key and keys.verify(fresh) is not None and keys.verify(key) is None


def test_a_configured_key_variable_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UI_KEY", "sk-from-the-operator")
    ui, keys = adapter(tmp_path, {**ENGINES, "ui": {"kind": "openwebui", "port": 3000, "api_key_env": "UI_KEY"}})
    assert ui.launch_spec().env["OPENAI_API_KEY"] == "sk-from-the-operator" and keys.list() == []
