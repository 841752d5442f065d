"""espeak-ng: the last-resort speech engine (formant synthesis, instant, always intelligible).

Owns running the `espeak-ng` program (text on stdin, UTF-8, WAV written to a temporary file, since its
`--stdout` WAV header carries no real length), mapping the OpenAI speed onto words per minute and
listing its voices. Needs the Debian package `espeak-ng`. Nothing to load onto a device. Runs on the
model thread.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf  # type: ignore[import-untyped]

from services.memory import MemoryUsage
from services.speech.audio import Audio
from services.speech.engines import Utterance, VoiceNotFound

BASE_WPM = 175  # espeak-ng's default rate
TIMEOUT_S = 120.0


class EspeakEngine:
    name = "espeak"

    def __init__(self, voice: str, binary: str = "espeak-ng") -> None:
        self._default_voice = voice
        self._binary_name = binary
        self._binary: str | None = None
        self._voices: set[str] = set()

    def load(self) -> None:
        binary = shutil.which(self._binary_name)
        if binary is None:
            raise FileNotFoundError(f"{self._binary_name} is not installed (Debian: apt-get install espeak-ng)")
        listing = subprocess.run(
            [binary, "--voices"], capture_output=True, text=True, check=True, timeout=TIMEOUT_S
        ).stdout
        voices: set[str] = set()
        for line in listing.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 5:
                voices.update((fields[1], fields[4]))  # language code and voice file, e.g. en-us, gmw/en-US
        if self._default_voice not in voices:
            raise VoiceNotFound(f"espeak-ng has no voice {self._default_voice!r}")
        self._binary, self._voices = binary, voices

    def offload(self) -> None:
        return None

    def wake(self) -> None:
        return None

    def unload(self) -> None:
        self._binary = None

    def memory(self) -> MemoryUsage:
        return MemoryUsage()

    def voices(self) -> list[str]:
        return sorted(self._voices)

    def default_voice(self) -> str:
        return self._default_voice

    def synthesize(self, utterance: Utterance, on_sentence: Callable[[], None] = lambda: None) -> Audio:
        """One espeak-ng run for the whole text (it takes milliseconds): one unit of work."""
        assert self._binary is not None
        voice = utterance.voice if utterance.voice in self._voices else self._default_voice
        wpm = int(min(max(BASE_WPM * utterance.speed, 80), 500))
        with tempfile.TemporaryDirectory(prefix="espeak-") as tmp:
            out = Path(tmp) / "speech.wav"
            subprocess.run(
                [self._binary, "-b", "1", "-v", voice, "-s", str(wpm), "-w", str(out)],
                input=utterance.text.encode("utf-8"),
                capture_output=True,
                check=True,
                timeout=TIMEOUT_S,
            )
            samples, rate = sf.read(out, dtype="float32", always_2d=False)
        on_sentence()
        return Audio(np.asarray(samples, dtype=np.float32), int(rate))
