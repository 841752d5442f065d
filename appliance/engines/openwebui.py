"""Open WebUI (optional): `open-webui serve` on its own loopback port, configured entirely through
the environment to use the gateway for every modality (contracts.md §5): chat (its OpenAI
connection), image generation, text-to-speech, speech-to-text and its RAG embeddings, so it never
loads a Whisper or an embedding model of its own onto the card behind the scheduler's back; it is
started with no GPU visible (`CUDA_VISIBLE_DEVICES=""`) so whatever it still runs itself stays on the
CPU. Its default chat model is the first configured text model (one this box runs).

Its settings are `PersistentConfig` values, read from the environment only on first start and then
kept in its database: `ENABLE_PERSISTENT_CONFIG=False` makes it take ours on every start. The gateway
key it uses is `engines.NAME.api_key_env`'s variable when set, else a key the appliance created for it
(`engine:NAME`, see appliance.engine_keys).
"""

from __future__ import annotations

import os
import secrets

from ..config import OpenWebUIEngine
from ..supervisor.launcher import LaunchSpec
from .base import Adapter, EngineContext


class OpenWebUIAdapter(Adapter):
    kind = "openwebui"
    readiness_path = "/health"

    def __init__(self, name: str, ctx: EngineContext) -> None:
        super().__init__(name, ctx)
        assert isinstance(self.cfg, OpenWebUIEngine)
        self.ocfg: OpenWebUIEngine = self.cfg

    def _secret(self) -> str:
        path = self.ctx.engine_dir(self.name) / "webui_secret_key"
        if not path.exists():
            path.write_text(secrets.token_urlsafe(32), encoding="utf-8")
            path.chmod(0o600)
        return path.read_text(encoding="utf-8").strip()

    def environment(self) -> dict[str, str]:
        data_dir = self.ctx.engine_dir(self.name) / "data"
        data_dir.mkdir(exist_ok=True)
        base = self.ctx.gateway_url.rstrip("/") + "/v1"
        key = self._key()
        env = {
            "DATA_DIR": str(data_dir),
            "WEBUI_SECRET_KEY": self._secret(),
            "ENABLE_PERSISTENT_CONFIG": "False",
            "ENABLE_OLLAMA_API": "False",
            "ENABLE_OPENAI_API": "True",
            "OPENAI_API_BASE_URL": base,
            "OPENAI_API_KEY": key,
            "ENABLE_IMAGE_GENERATION": "true",
            "IMAGE_GENERATION_ENGINE": "openai",
            "IMAGES_OPENAI_API_BASE_URL": base,
            "IMAGES_OPENAI_API_KEY": key,
            "AUDIO_TTS_ENGINE": "openai",
            "AUDIO_TTS_OPENAI_API_BASE_URL": base,
            "AUDIO_TTS_OPENAI_API_KEY": key,
            "AUDIO_STT_ENGINE": "openai",
            "AUDIO_STT_OPENAI_API_BASE_URL": base,
            "AUDIO_STT_OPENAI_API_KEY": key,
            "RAG_EMBEDDING_ENGINE": "openai",
            "RAG_OPENAI_API_BASE_URL": base,
            "RAG_OPENAI_API_KEY": key,
            "CUDA_VISIBLE_DEVICES": "",  # the appliance decides what holds the card; Open WebUI gets none of it
        }
        cert = self.ctx.config.server.tls_cert
        if cert:  # the gateway serves HTTPS with this (often self-signed) certificate: Open WebUI trusts it
            env["SSL_CERT_FILE"] = env["REQUESTS_CA_BUNDLE"] = os.path.expanduser(cert)
        first: dict[str, str] = {}
        for mid, m in self.ctx.config.models.items():
            first.setdefault(m.modality, mid)
        for modality, setting in (("image", "IMAGE_GENERATION_MODEL"), ("speech", "AUDIO_TTS_MODEL"),
                                  ("transcription", "AUDIO_STT_MODEL"), ("embedding", "RAG_EMBEDDING_MODEL"),
                                  ("text", "DEFAULT_MODELS")):  # fmt: skip
            if modality in first:
                env[setting] = first[modality]
        env.update(self.ocfg.env)
        return env

    def _key(self) -> str:
        if self.ocfg.api_key_env:
            return os.environ.get(self.ocfg.api_key_env, "")
        return self.ctx.engine_key(self.name) if self.ctx.engine_key is not None else ""

    def launch_spec(self) -> LaunchSpec:
        o = self.ocfg
        prefix = list(o.command) or ["open-webui"]
        argv = [*prefix, "serve", "--host", "127.0.0.1", "--port", str(o.port)]
        return LaunchSpec(self.name, argv, self.environment(), str(self.ctx.engine_dir(self.name)))
