"""Open WebUI (optional): `open-webui serve` on its own loopback port, configured entirely through
the environment to use the gateway for chat, images and speech (contracts.md §5).
`ENABLE_PERSISTENT_CONFIG=False`, or settings once saved in its database would override ours.
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
        key = os.environ.get(self.ocfg.api_key_env, "") if self.ocfg.api_key_env else ""
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
        }
        cert = self.ctx.config.server.tls_cert
        if cert:  # the gateway serves HTTPS with this (often self-signed) certificate: Open WebUI trusts it
            env["SSL_CERT_FILE"] = env["REQUESTS_CA_BUNDLE"] = os.path.expanduser(cert)
        image_models = [m for m, c in self.ctx.config.models.items() if c.modality == "image"]
        speech_models = [m for m, c in self.ctx.config.models.items() if c.modality == "speech"]
        if image_models:
            env["IMAGE_GENERATION_MODEL"] = image_models[0]
        if speech_models:
            env["AUDIO_TTS_MODEL"] = speech_models[0]
        env.update(self.ocfg.env)
        return env

    def launch_spec(self) -> LaunchSpec:
        o = self.ocfg
        prefix = list(o.command) or ["open-webui"]
        argv = [*prefix, "serve", "--host", "127.0.0.1", "--port", str(o.port)]
        return LaunchSpec(self.name, argv, self.environment(), str(self.ctx.engine_dir(self.name)))
