"""faster-whisper: Whisper on CTranslate2, int8 on a CPU, float16 on the GPU under the residency scheduler.

Owns finding the converted model (a directory holding model.bin, or a name under the model store where
`appliance pull` puts it; never a download: `local_files_only`), the compute type for the device,
offload (CTranslate2 moves the weights to host RAM: `unload_model(to_cpu=True)`) and wake
(`load_model()`), and decoding with OpenAI's parameters mapped onto faster-whisper's: `language`,
`prompt` as the initial prompt, `temperature` (a fixed one: no fallback ladder), `translate` as
Whisper's translate task, word timestamps when asked; timestamps past the audio's end are clamped. An
English-only model (`*.en`) has no translate task: a translation of English speech is its transcript
(what a multilingual Whisper gives for English), and any language but English is refused.
Decoding is lazy, segment by segment, so a cancel stops it between two segments. Runs on the model
thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from services.memory import MemoryUsage
from services.store import pulled_model
from services.stt.transcript import Segment, Task, Transcript, UnsupportedTask, Word


def find_model(target: str, models_dir: Path | None) -> Path:
    path = Path(target).expanduser()
    if path.is_dir() and (path / "model.bin").is_file():
        return path
    found = pulled_model(models_dir, target)
    if found is not None and (found / "model.bin").is_file():
        return found
    raise FileNotFoundError(f"Whisper model {target!r} not found: not a CTranslate2 directory (model.bin), "
                            f"not pulled under {models_dir} (run `appliance pull {target}`)")  # fmt: skip


def compute_type(device: str) -> str:
    return "int8" if device == "cpu" else "float16"


class WhisperEngine:
    name = "whisper"

    def __init__(self, target: str, models_dir: Path | None, beam_size: int = 5) -> None:
        self._target = target
        self._models_dir = models_dir
        self._beam_size = beam_size
        self._device = "cpu"
        self._model: Any = None
        self._bytes = 0
        self._on_gpu = False
        self.multilingual = True

    def set_device(self, device: str) -> None:
        self._device = device

    def load(self) -> None:
        from faster_whisper import WhisperModel  # type: ignore[import-untyped]

        path = find_model(self._target, self._models_dir)
        device, _, index = self._device.partition(":")
        self._model = WhisperModel(str(path), device=device, device_index=int(index or 0),
                                   compute_type=compute_type(device), local_files_only=True,
                                   cpu_threads=min(4, os.cpu_count() or 1))  # fmt: skip
        self.multilingual = bool(self._model.model.is_multilingual)
        self._bytes = (path / "model.bin").stat().st_size
        self._on_gpu = device == "cuda"

    def offload(self) -> None:
        if self._on_gpu:
            self._model.model.unload_model(to_cpu=True)
            self._on_gpu = False

    def wake(self) -> None:
        if self._device.startswith("cuda") and not self._on_gpu:
            self._model.model.load_model()
            self._on_gpu = True

    def unload(self) -> None:
        self._model = None
        self._bytes = 0
        self._on_gpu = False

    def memory(self) -> MemoryUsage:
        if self._model is None:
            return MemoryUsage()
        return MemoryUsage(gpu_bytes=self._bytes) if self._on_gpu else MemoryUsage(host_bytes=self._bytes)

    def check(self, task: Task) -> None:
        if not self.multilingual and task.language not in (None, "en"):
            what = "translates English speech only (its translation is the transcript)" if task.translate \
                else "transcribes English only"
            raise UnsupportedTask("language", f"this Whisper model is English-only (a .en model): it {what}; "
                                  f"'language' is {task.language!r}: use a multilingual Whisper model")  # fmt: skip

    def transcribe(self, audio: np.ndarray, task: Task, on_segment: Callable[[Segment], None]) -> Transcript:
        pieces, info = self._model.transcribe(
            audio.astype(np.float32), language=task.language,
            task="translate" if task.translate and self.multilingual else "transcribe",  # .en: English in, English out
            beam_size=self._beam_size, temperature=task.temperature, initial_prompt=task.prompt or None,
            word_timestamps=task.words, vad_filter=False, condition_on_previous_text=True,
        )  # fmt: skip
        segments: list[Segment] = []
        # Whisper may put a timestamp past the end of the audio (its window is 30 s): clamped to the end
        end = float(info.duration)
        for piece in pieces:  # a generator: each step decodes one more 30 s window
            words = tuple(Word(w.word, min(float(w.start), end), min(float(w.end), end)) for w in (piece.words or ()))
            segment = Segment(len(segments), min(float(piece.start), end), min(float(piece.end), end), piece.text,
                              avg_logprob=float(piece.avg_logprob), no_speech_prob=float(piece.no_speech_prob),
                              temperature=float(piece.temperature or 0.0), words=words)  # fmt: skip
            segments.append(segment)
            on_segment(segment)
        language = "english" if task.translate else _LANGUAGE_NAMES.get(info.language, info.language)
        return Transcript(language, float(info.duration), tuple(segments))


# OpenAI's verbose_json names the language in words ("english"); Whisper reports codes.
_LANGUAGE_NAMES = {"en": "english", "de": "german", "fr": "french", "es": "spanish", "it": "italian",
                   "pt": "portuguese", "nl": "dutch", "ja": "japanese", "zh": "chinese", "ru": "russian",
                   "ko": "korean", "pl": "polish", "tr": "turkish", "uk": "ukrainian", "sv": "swedish"}  # fmt: skip
