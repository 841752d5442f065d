"""The speech engine contract and the model-path grammar of the speech worker.

Owns `Utterance` (what to say and how), the `SpeechEngine` protocol every engine implements (all methods
run on the model thread), `split_sentences` and `parse_model_spec`, which reads `--model-path`:

    piper:<voice name or .onnx path>    e.g. piper:en_US-joe-medium
    xtts:<model dir or coqui model name> e.g. xtts:tts_models/multilingual/multi-dataset/xtts_v2
    espeak:<espeak-ng voice>            e.g. espeak:en-us
    a path to a .onnx voice, a directory holding one, or an XTTS directory (config.json + model.pth)

Must not import any engine library.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from services.memory import MemoryUsage
from services.speech.audio import Audio

ENGINES = ("xtts", "piper", "espeak")
XTTS_MODEL_NAME = "tts_models/multilingual/multi-dataset/xtts_v2"


@dataclass(frozen=True)
class Utterance:
    text: str
    voice: str
    speed: float = 1.0
    language: str | None = None


class SpeechEngine(Protocol):
    name: str

    def load(self) -> None: ...

    def offload(self) -> None: ...

    def wake(self) -> None: ...

    def unload(self) -> None: ...

    def memory(self) -> MemoryUsage: ...

    def voices(self) -> list[str]: ...

    def default_voice(self) -> str: ...

    def synthesize(self, utterance: Utterance, on_sentence: Callable[[], None] = ...) -> Audio:
        """The utterance's audio. `on_sentence` runs after each sentence the engine synthesizes
        separately (at least once); an exception it raises (a cancelled request) stops synthesis there."""
        ...


_SENTENCE_END = re.compile(r"(?<=[.!?…。！？])\s+")


def split_sentences(text: str) -> list[str]:
    """The text cut after sentence-ending punctuation followed by white space (what an engine that
    synthesizes a whole text at once is given sentence by sentence, so a cancel can stop it between
    two); never an empty piece."""
    return [s for s in (part.strip() for part in _SENTENCE_END.split(text)) if s] or [text]


class VoiceNotFound(Exception):
    """A requested voice or voice model does not exist."""


@dataclass(frozen=True)
class ModelSpec:
    engine: str
    target: str


def parse_model_spec(model_path: str) -> ModelSpec:
    prefix, sep, rest = model_path.partition(":")
    if sep and prefix in ENGINES:
        return ModelSpec(prefix, rest or {"espeak": "en-us", "xtts": XTTS_MODEL_NAME}.get(prefix, ""))
    if model_path in ("espeak", "espeak-ng"):
        return ModelSpec("espeak", "en-us")
    if model_path.startswith("tts_models/"):
        return ModelSpec("xtts", model_path)
    path = Path(model_path).expanduser()
    if path.suffix == ".onnx":
        return ModelSpec("piper", str(path))
    if path.is_dir():
        if (path / "config.json").is_file() and (path / "model.pth").is_file():
            return ModelSpec("xtts", str(path))
        if any(path.glob("*.onnx")):
            return ModelSpec("piper", str(path))
    raise ValueError(f"cannot tell which speech engine serves {model_path!r}: prefix it with piper:, xtts: or espeak:")
