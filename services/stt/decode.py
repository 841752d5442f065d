"""Uploaded audio to what the recognizers take: mono float32 samples at 16 kHz.

Owns decoding: libsndfile first (the `soundfile` wheel: wav, flac, ogg vorbis and opus, mp3), then
FFmpeg's libraries through PyAV (the `av` wheel faster-whisper brings: m4a/mp4/aac, webm, mpeg and the
rest), down-mixing, resampling, and the duration limit. Anything neither decodes is an
`UnsupportedAudio` whose message says so. Pure over bytes; must not know HTTP or engines.
"""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf  # type: ignore[import-untyped]

from services.speech.audio import resample
from services.stt.transcript import SAMPLE_RATE


class UnsupportedAudio(Exception):
    """The upload is not audio this worker can decode (or has no samples)."""


class TooLong(Exception):
    """The audio lasts longer than the worker accepts."""


def _soundfile(data: bytes) -> tuple[np.ndarray, int] | None:
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None
    return samples.mean(axis=1), int(rate)


def _pyav(data: bytes) -> tuple[np.ndarray, int] | None:
    try:
        import av
    except ImportError:
        return None
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                return None
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            chunks: list[np.ndarray] = []
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except (av.error.FFmpegError, ValueError, IndexError):
        return None
    if not chunks:
        return None
    return np.concatenate(chunks).astype(np.float32), SAMPLE_RATE


def decode(data: bytes, filename: str = "", max_seconds: float | None = None) -> np.ndarray:
    """Mono float32 at 16 kHz; `UnsupportedAudio` when nothing decodes it, `TooLong` past `max_seconds`."""
    decoded = _soundfile(data) or _pyav(data)
    if decoded is None:
        shown = f" ({filename})" if filename else ""
        raise UnsupportedAudio(f"'file'{shown} is not audio this worker can decode: send wav, mp3, flac, "
                               "ogg/opus, m4a or webm")  # fmt: skip
    samples, rate = decoded
    if samples.size == 0:
        raise UnsupportedAudio("'file' holds no audio samples")
    seconds = samples.size / rate
    if max_seconds is not None and seconds > max_seconds:
        raise TooLong(f"'file' lasts {seconds:.0f} s; this worker takes at most {max_seconds:.0f} s of audio")
    if rate != SAMPLE_RATE:
        samples = resample(samples, rate, SAMPLE_RATE)
    return np.asarray(samples, dtype=np.float32)
