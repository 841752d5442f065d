"""What a recognizer returns (`Transcript`: segments, words, language, duration) and the `SttEngine`
contract every engine implements (all its methods run on the model thread), plus `parse_model_spec`,
which reads `--model-path`:

    pocketsphinx:<language>      e.g. pocketsphinx:en-us (the model the pocketsphinx package ships)
    whisper:<dir or name>        a CTranslate2 Whisper directory (model.bin), or a name looked up
                                 under the model store (what `appliance pull` puts there)
    a directory holding model.bin and config.json: whisper

Must not import any engine library.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from services.memory import MemoryUsage

SAMPLE_RATE = 16_000  # what every engine is fed: mono float32 at 16 kHz
ENGINES = ("whisper", "pocketsphinx")


@dataclass(frozen=True)
class Word:
    word: str
    start: float
    end: float


@dataclass(frozen=True)
class Segment:
    id: int
    start: float
    end: float
    text: str
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    temperature: float = 0.0
    words: tuple[Word, ...] = ()


@dataclass(frozen=True)
class Transcript:
    language: str
    duration: float
    segments: tuple[Segment, ...] = field(default_factory=tuple)

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())


@dataclass(frozen=True)
class Task:
    """What to do with the audio: `translate` turns it into English text."""

    translate: bool = False
    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    words: bool = False


class UnsupportedTask(Exception):
    """The engine cannot do this (a language it does not know, translation): a 400 naming `field`."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


class SttEngine(Protocol):
    name: str

    def load(self) -> None: ...

    def offload(self) -> None: ...

    def wake(self) -> None: ...

    def unload(self) -> None: ...

    def memory(self) -> MemoryUsage: ...

    def check(self, task: Task) -> None:
        """Raise `UnsupportedTask` for what this engine cannot do (before any decoding)."""
        ...

    def transcribe(self, audio: np.ndarray, task: Task, on_segment: Callable[[Segment], None]) -> Transcript:
        """The transcript of 16 kHz mono audio. `on_segment` runs after each segment is decoded (a
        stream's delta; a raise from it, a cancelled request, stops the decoding there)."""
        ...


@dataclass(frozen=True)
class ModelSpec:
    engine: str
    target: str


def parse_model_spec(model_path: str) -> ModelSpec:
    prefix, sep, rest = model_path.partition(":")
    if sep and prefix in ENGINES:
        return ModelSpec(prefix, rest or ("en-us" if prefix == "pocketsphinx" else ""))
    if model_path == "pocketsphinx":
        return ModelSpec("pocketsphinx", "en-us")
    path = Path(model_path).expanduser()
    if path.is_dir() and (path / "model.bin").is_file():
        return ModelSpec("whisper", str(path))
    raise ValueError(f"cannot tell which speech-to-text engine serves {model_path!r}: prefix it with "
                     "whisper: or pocketsphinx:")  # fmt: skip
