"""pocketsphinx: the light offline recognizer, English only, with the acoustic model, language model and
dictionary its Python package ships (nothing to download), the way espeak-ng stands beside Piper.

Owns loading the decoder, decoding 16 kHz audio at most 30 s at a time (cut at the quietest point),
segments cut at the pauses it hears (a stream gets one delta per segment; a cancel stops it at the
next segment), and word timings from its segmentation (frames of 10 ms). It hears English only, so a
translation (into English, by OpenAI's definition) of English speech is its transcript, as Whisper's
translate task gives for English audio; a `language` other than English is refused on both routes.
`prompt` and `temperature` do not apply to it and are refused when set. Runs on the model thread.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from services.memory import MemoryUsage
from services.stt.transcript import SAMPLE_RATE, Segment, Task, Transcript, UnsupportedTask, Word

FRAME_S = 0.01
PAUSE_S = 0.25  # a silence this long between two words ends a segment
UTTERANCE_S = 30.0  # at most this much audio per decoder call: longer speech is cut at its quietest point
_FILLERS = {"<s>", "</s>", "<sil>", "[NOISE]", "[SPEECH]", "++NOISE++", "++BREATH++"}


def quiet_cuts(audio: np.ndarray, max_s: float = UTTERANCE_S, rate: int = SAMPLE_RATE) -> list[tuple[int, int]]:
    """(start, end) sample ranges of at most `max_s`, each cut at the quietest 50 ms of its last third."""
    limit = int(max_s * rate)
    cuts: list[tuple[int, int]] = []
    start = 0
    win = rate // 20
    while len(audio) - start > limit:
        lo, hi = start + limit * 2 // 3, start + limit
        frames = audio[lo:hi][: (hi - lo) // win * win].reshape(-1, win)
        end = lo + int(np.argmin(np.abs(frames).mean(axis=1))) * win + win // 2
        cuts.append((start, end))
        start = end
    cuts.append((start, len(audio)))
    return cuts


class SphinxEngine:
    name = "pocketsphinx"

    def __init__(self, language: str) -> None:
        if language not in ("en-us", "en"):
            raise ValueError(f"pocketsphinx ships an English (en-us) model only; got {language!r}")
        self._decoder: Any = None
        self._bytes = 0

    def load(self) -> None:
        import pocketsphinx  # type: ignore[import-untyped]

        model = Path(pocketsphinx.get_model_path())
        self._decoder = pocketsphinx.Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")
        self._bytes = sum(f.stat().st_size for f in model.rglob("*") if f.is_file())

    def offload(self) -> None:
        return None  # CPU only: nothing moves

    def wake(self) -> None:
        return None

    def unload(self) -> None:
        self._decoder = None
        self._bytes = 0

    def memory(self) -> MemoryUsage:
        return MemoryUsage(host_bytes=self._bytes)

    def check(self, task: Task) -> None:
        if task.language not in (None, "en"):
            what = "translates English speech only (its translation into English is the transcript)" \
                if task.translate else "recognizes English (en) only"
            raise UnsupportedTask("language", f"this pocketsphinx model {what}; 'language' is {task.language!r}: "
                                  "use a multilingual Whisper model for other languages")  # fmt: skip
        if task.prompt:
            raise UnsupportedTask("prompt", "'prompt' is not supported by pocketsphinx (use a Whisper model)")
        if task.temperature:
            raise UnsupportedTask("temperature", "'temperature' does not apply to pocketsphinx (it decodes "
                                  "deterministically): leave it at 0")  # fmt: skip

    def transcribe(self, audio: np.ndarray, task: Task, on_segment: Callable[[Segment], None]) -> Transcript:
        pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
        segments: list[Segment] = []
        for start, end in quiet_cuts(audio):
            offset = start / SAMPLE_RATE
            self._decoder.start_utt()
            self._decoder.process_raw(pcm[start:end].tobytes(), full_utt=True)
            self._decoder.end_utt()
            hyp = self._decoder.hyp()
            logprob = float(self._decoder.get_logmath().log(hyp.prob)) if hyp is not None and hyp.prob else 0.0
            for words in _phrases(list(self._decoder.seg()), offset):
                text = "".join(w.word for w in words)
                segment = Segment(len(segments), words[0].start, words[-1].end, text, avg_logprob=logprob,
                                  words=tuple(words))  # fmt: skip
                segments.append(segment)
                on_segment(segment)
        return Transcript("english", len(audio) / SAMPLE_RATE, tuple(segments))


def _phrases(segs: list[Any], offset: float) -> list[list[Word]]:
    """The decoder's words grouped into segments, cut where it heard a pause of `PAUSE_S` or more."""
    phrases: list[list[Word]] = [[]]
    for seg in segs:
        if seg.word in _FILLERS:
            if seg.word == "<sil>" and (seg.end_frame - seg.start_frame + 1) * FRAME_S >= PAUSE_S and phrases[-1]:
                phrases.append([])
            continue
        phrases[-1].append(Word(" " + _spelling(seg.word), offset + seg.start_frame * FRAME_S,
                                offset + (seg.end_frame + 1) * FRAME_S))  # fmt: skip
    return [p for p in phrases if p]


def _spelling(word: str) -> str:
    """The dictionary's word without its pronunciation variant: `coffee(2)` -> `coffee`."""
    return word.split("(", 1)[0]
