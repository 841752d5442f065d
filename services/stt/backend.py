"""The STT worker's model: the configured engine (faster-whisper or pocketsphinx), or pocketsphinx's
packaged English model when that engine cannot load (a Whisper not pulled yet), the way espeak-ng
stands in for a speech model.

Owns choosing the engine from `--model-path` (`transcript.parse_model_spec`), the fallback (logged, and
reported by /v1/models as `engine` and `fallback_reason`, never silent; `--fallback none` turns it
off), resolving the device (pocketsphinx is CPU only; Whisper takes the GPU when there is one) and
delegating residency and decoding to the engine, counting seconds of audio transcribed. Runs on the
model thread. Must not know HTTP.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from services.memory import MemoryUsage
from services.stt.sphinx_engine import SphinxEngine
from services.stt.transcript import Segment, SttEngine, Task, Transcript, parse_model_spec
from services.stt.whisper_engine import WhisperEngine

log = logging.getLogger("services.stt")


def build_engine(model_path: str, models_dir: Path | None, beam_size: int = 5) -> SttEngine:
    spec = parse_model_spec(model_path)
    if spec.engine == "pocketsphinx":
        return SphinxEngine(spec.target)
    return WhisperEngine(spec.target, models_dir, beam_size)


def _resolve_device(requested: str) -> str:
    if requested != "auto":
        return requested
    try:
        import ctranslate2  # type: ignore[import-untyped]

        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    except ImportError:
        return "cpu"


class SttBackend:
    def __init__(self, engine: SttEngine, device: str, fallback: bool = True) -> None:
        self._primary = engine
        self.engine = engine
        self._requested = device
        self._fallback = fallback
        self.fallback_reason: str | None = None
        self.audio_seconds = 0.0

    def prepare(self) -> str:
        if isinstance(self.engine, WhisperEngine):
            device = _resolve_device(self._requested)
            self.engine.set_device(device)
            return device
        return "cpu"

    def load(self) -> None:
        self.engine, self.fallback_reason = self._primary, None
        try:
            self.engine.load()
        except Exception as exc:
            if not self._fallback or isinstance(self._primary, SphinxEngine):
                raise
            self.fallback_reason = f"{self._primary.name} could not load: {exc}"
            log.error("%s; transcribing English with pocketsphinx instead", self.fallback_reason)
            fallback = SphinxEngine("en-us")
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

    def check(self, task: Task) -> None:
        self.engine.check(task)

    def transcribe(self, audio: np.ndarray, task: Task, on_segment: Callable[[Segment], None]) -> Transcript:
        transcript = self.engine.transcribe(audio, task, on_segment)
        self.audio_seconds += transcript.duration
        return transcript
