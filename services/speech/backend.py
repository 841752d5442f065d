"""The speech worker's model: the configured engine, or espeak-ng when that engine cannot load.

Owns choosing the engine from `--model-path` (see `engines.parse_model_spec`), the fallback (logged and
reported by /v1/audio/voices, never silent), which voice a requested name means (`resolve_voice`: the
configured mapping, the engine's own names, OpenAI's names to the default voice, anything else refused)
and delegating residency and synthesis to the engine. Runs on the model thread. Must not know HTTP.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from appliance.fields import OPENAI_VOICES
from services.memory import MemoryUsage
from services.speech.audio import Audio
from services.speech.engines import SpeechEngine, Utterance, parse_model_spec
from services.speech.espeak_engine import EspeakEngine
from services.speech.piper_engine import PiperEngine
from services.speech.xtts_engine import XttsEngine

log = logging.getLogger("services.speech")


@dataclass(frozen=True)
class SpeechOptions:
    models_dir: Path | None = None  # Piper voices by name
    voices_dir: Path | None = None  # XTTS reference WAVs
    accept_cpml: bool = False
    fallback: str = "espeak"  # or "none"
    fallback_voice: str = "en-us"
    default_speaker: str = "Ana Florence"
    language: str = "en"
    offload_strategy: str = "auto"
    voice_map: dict[str, str] = field(default_factory=dict)  # requested name -> the engine's voice


class UnknownVoice(Exception):
    """A requested voice this model neither has nor maps; the message lists what it offers."""


def build_engine(model_path: str, device: str, options: SpeechOptions) -> SpeechEngine:
    spec = parse_model_spec(model_path)
    if spec.engine == "piper":
        return PiperEngine(spec.target, options.models_dir)
    if spec.engine == "espeak":
        return EspeakEngine(spec.target)
    return XttsEngine(
        spec.target,
        device=device,
        accept_cpml=options.accept_cpml,
        voices_dir=options.voices_dir,
        default_speaker=options.default_speaker,
        default_language=options.language,
        offload_strategy=options.offload_strategy,
    )


class SpeechBackend:
    def __init__(self, primary: SpeechEngine, device: str, options: SpeechOptions) -> None:
        self._primary = primary
        self._device = device
        self._options = options
        self.engine: SpeechEngine = primary
        self.fallback_reason: str | None = None

    def prepare(self) -> str:
        if self._primary.name != "xtts":
            return "cpu"  # Piper (onnxruntime CPU) and espeak-ng never use the GPU
        from services.weights import resolve_device

        return str(resolve_device(self._device))

    def load(self) -> None:
        self.engine, self.fallback_reason = self._primary, None
        try:
            self.engine.load()
        except Exception as exc:
            if self._options.fallback != "espeak" or self._primary.name == "espeak":
                raise
            self.fallback_reason = f"{self._primary.name} could not load: {exc}"
            log.error("%s; speaking with espeak-ng instead", self.fallback_reason)
            fallback = EspeakEngine(self._options.fallback_voice)
            fallback.load()
            self.engine = fallback
            return
        names = set(self.engine.voices())
        for name, target in sorted(self._options.voice_map.items()):
            if target not in names:
                log.error("voice %r is mapped to %r, which %s does not have (it has: %s)",
                          name, target, self.engine.name, ", ".join(sorted(names)[:20]))  # fmt: skip

    def offload(self) -> None:
        self.engine.offload()

    def wake(self) -> None:
        self.engine.wake()

    def unload(self) -> None:
        self.engine.unload()

    def memory(self) -> MemoryUsage:
        return self.engine.memory()

    def voices(self) -> list[str]:
        return self.engine.voices()

    @property
    def voice_map(self) -> dict[str, str]:
        return dict(self._options.voice_map)

    def resolve_voice(self, requested: str) -> str:
        """The engine's voice for a requested name: the configured mapping first, then the engine's own
        names, then OpenAI's names to the default voice (so clients that send `alloy` work unconfigured).
        Raises `UnknownVoice` for anything else. On the espeak fallback every mapped or OpenAI name gets
        the fallback's voice: the primary's voices are not there to map onto."""
        names = self.engine.voices()
        target = self._options.voice_map.get(requested)
        if target is not None and (target in names or self.fallback_reason is not None):
            return target if target in names else self.engine.default_voice()
        if target is not None:
            raise UnknownVoice(f"voice {requested!r} is mapped to {target!r}, which this model's {self.engine.name} "
                               f"engine does not have; its voices: {_listing(names)}")  # fmt: skip
        if requested in names:
            return requested
        if requested in OPENAI_VOICES:
            return self.engine.default_voice()
        aliases = sorted({*OPENAI_VOICES, *self._options.voice_map})
        raise UnknownVoice(f"unknown voice {requested!r}: this model speaks {_listing(names)}, "
                           f"or one of {', '.join(aliases)}")  # fmt: skip

    def synthesize(self, utterance: Utterance, on_sentence: Callable[[], None] = lambda: None) -> Audio:
        return self.engine.synthesize(utterance, on_sentence)


def _listing(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")
