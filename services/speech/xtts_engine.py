"""XTTS v2 through coqui-tts: multilingual neural speech on the GPU, 24 kHz, built-in and cloned voices.

Owns the licence gate (XTTS is under the CPML; coqui asks for agreement on stdin and a non-interactive
process hangs, so nothing is imported or fetched, and `COQUI_TOS_AGREED` is not set, until the worker
was started with `--accept-cpml`), loading through `TTS.api.TTS` (imported lazily: coqui-tts only imports
on torch 2.9.1 + torchaudio 2.9, so this engine runs from the virtual environment the installer makes
for it), residency through `ModelResidence`, and voice selection:

- a cloned voice: `<voices_dir>/<name>.wav`, or several reference clips in `<voices_dir>/<name>/*.wav`;
- a built-in speaker by name (e.g. "Ana Florence");
- any other name (OpenAI's alloy, echo, ...) uses the default speaker.

Synthesis goes one sentence per `tts()` call, so a cancelled request stops between two sentences. Runs
on the model thread. Must not import TTS before the licence is accepted.
"""

from __future__ import annotations

import os
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from services.memory import ResidentWeights
from services.speech.audio import Audio, concatenate
from services.speech.engines import XTTS_MODEL_NAME, Utterance, split_sentences

if TYPE_CHECKING:
    from services.weights import ModelResidence

XTTS_RATE = 24_000
SENTENCE_GAP_S = 0.2  # silence between two sentences synthesized separately
LANGUAGES = (
    "en", "es", "fr", "de", "it", "pt", "pl", "tr", "ru", "nl", "cs", "ar", "zh-cn", "hu", "ko", "ja", "hi",
)  # fmt: skip
DEFAULT_SPEAKER = "Ana Florence"


class LicenceNotAccepted(Exception):
    """The model's licence has not been accepted in the configuration."""


class UnknownLanguage(ValueError):
    pass


def _coqui_factory(target: str) -> Any:
    from TTS.api import TTS  # type: ignore[import-not-found]  # only importable in the XTTS environment

    path = Path(target).expanduser()
    if path.is_dir():
        return TTS(model_path=str(path), config_path=str(path / "config.json"), progress_bar=False)
    return TTS(target, progress_bar=False)


class XttsEngine(ResidentWeights):
    name = "xtts"

    def __init__(
        self,
        target: str,
        *,
        device: str,
        accept_cpml: bool,
        voices_dir: Path | None,
        default_speaker: str = DEFAULT_SPEAKER,
        default_language: str = "en",
        offload_strategy: str = "auto",
        factory: Callable[[str], Any] = _coqui_factory,
        environ: MutableMapping[str, str] = os.environ,
    ) -> None:
        self._target = target or XTTS_MODEL_NAME
        self._requested_device = device
        self._accept_cpml = accept_cpml
        self._voices_dir = voices_dir
        self._default_speaker = default_speaker
        self._default_language = default_language
        self._offload_strategy = offload_strategy
        self._factory = factory
        self._environ = environ
        self._tts: Any = None
        self._residence: ModelResidence | None = None

    def load(self) -> None:
        if not self._accept_cpml:
            raise LicenceNotAccepted(
                "XTTS v2 is licensed under the Coqui Public Model License (CPML, non-commercial); "
                'accept it in the configuration (licences.accepted = ["CPML"]), which starts this worker '
                "with --accept-cpml"
            )
        # coqui reads this before fetching; without it a process with no terminal waits on stdin forever.
        self._environ["COQUI_TOS_AGREED"] = "1"
        from services.weights import ModelResidence, resolve_device

        device = resolve_device(self._requested_device)
        tts = self._factory(self._target)
        tts.eval()
        tts.requires_grad_(False)
        self._residence = ModelResidence([tts], device, self._offload_strategy)
        self._tts = tts

    def _forget(self) -> None:
        self._tts = None

    def cloned_voices(self) -> dict[str, list[Path]]:
        voices: dict[str, list[Path]] = {}
        if self._voices_dir is None or not self._voices_dir.is_dir():
            return voices
        for entry in sorted(self._voices_dir.iterdir()):
            if entry.is_file() and entry.suffix.lower() == ".wav":
                voices[entry.stem] = [entry]
            elif entry.is_dir():
                clips = sorted(p for p in entry.iterdir() if p.suffix.lower() == ".wav")
                if clips:
                    voices[entry.name] = clips
        return voices

    def builtin_speakers(self) -> list[str]:
        speakers = getattr(self._tts, "speakers", None) if self._tts is not None else None
        return [str(s) for s in speakers or []]

    def voices(self) -> list[str]:
        return sorted({*self.cloned_voices(), *self.builtin_speakers()})

    def default_voice(self) -> str:
        return self._default_speaker

    def synthesize(self, utterance: Utterance, on_sentence: Callable[[], None] = lambda: None) -> Audio:
        """One coqui `tts()` call per sentence (`split_sentences`), `on_sentence` after each, joined
        with a short pause, so a cancelled request stops between two sentences."""
        language = (utterance.language or self._default_language).lower()
        if language not in LANGUAGES:
            raise UnknownLanguage(f"XTTS speaks {', '.join(LANGUAGES)}; got {language!r}")
        kwargs: dict[str, Any] = {"language": language, "speed": utterance.speed, "split_sentences": False}
        cloned = self.cloned_voices()
        if utterance.voice in cloned:
            kwargs["speaker_wav"] = [str(p) for p in cloned[utterance.voice]]
        elif utterance.voice in self.builtin_speakers():
            kwargs["speaker"] = utterance.voice
        else:
            kwargs["speaker"] = self._default_speaker
        synthesizer = getattr(self._tts, "synthesizer", None)
        rate = int(getattr(synthesizer, "output_sample_rate", 0) or XTTS_RATE)
        parts = []
        for sentence in split_sentences(utterance.text):
            parts.append(np.asarray(self._tts.tts(sentence, **kwargs), dtype=np.float32).reshape(-1))
            on_sentence()
        return Audio(concatenate(parts, rate, SENTENCE_GAP_S), rate)
