"""The speech worker's model: the configured engine, or espeak-ng when that engine cannot load.

Owns choosing the engine from `--model-path` (see `engines.parse_model_spec`), the fallback (logged and
reported by /v1/audio/voices, never silent), and delegating residency and synthesis to the engine. Runs
on the model thread. Must not know HTTP.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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

    def synthesize(self, utterance: Utterance, on_sentence: Callable[[], None] = lambda: None) -> Audio:
        return self.engine.synthesize(utterance, on_sentence)
