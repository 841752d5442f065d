"""Audio: mono float samples to the formats of OpenAI's speech API.

Owns encoding through libsndfile (the `soundfile` wheel bundles libsndfile 1.2 with MP3 and Opus):
wav (PCM 16), flac, mp3 (MPEG layer III), opus (in Ogg; Opus only takes 8/12/16/24/48 kHz, so other
rates are resampled to 24 kHz) and pcm (raw 16-bit little-endian mono at 24 kHz, as OpenAI documents),
with the matching Content-Type, and an FFT resampler. Pure numpy + soundfile; no model code.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile as sf  # type: ignore[import-untyped]

PCM_RATE = 24_000
OPUS_RATES = (8_000, 12_000, 16_000, 24_000, 48_000)
# format -> (libsndfile container, subtype, Content-Type)
CONTAINERS = {
    "wav": ("WAV", "PCM_16", "audio/wav"),
    "flac": ("FLAC", "PCM_16", "audio/flac"),
    "mp3": ("MP3", "MPEG_LAYER_III", "audio/mpeg"),
    "opus": ("OGG", "OPUS", "audio/ogg"),
}
FORMATS = (*CONTAINERS, "pcm")


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray  # float32 mono in [-1, 1]
    rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate if self.rate else 0.0


def resample(samples: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Band-limited resampling by zero-padding or truncating the spectrum."""
    if src_rate == dst_rate or len(samples) == 0:
        return samples.astype(np.float32, copy=False)
    n_out = max(1, round(len(samples) * dst_rate / src_rate))
    spectrum = np.fft.rfft(samples.astype(np.float64))
    out = np.zeros(n_out // 2 + 1, dtype=np.complex128)
    keep = min(len(spectrum), len(out))
    out[:keep] = spectrum[:keep]
    return (np.fft.irfft(out, n_out) * (n_out / len(samples))).astype(np.float32)


def concatenate(parts: list[np.ndarray], rate: int, gap_s: float = 0.0) -> np.ndarray:
    """Join sentence chunks with a short silence between them."""
    if not parts:
        return np.zeros(0, dtype=np.float32)
    gap = np.zeros(int(rate * gap_s), dtype=np.float32)
    joined: list[np.ndarray] = []
    for i, part in enumerate(parts):
        if i and len(gap):
            joined.append(gap)
        joined.append(part.astype(np.float32, copy=False))
    return np.concatenate(joined)


def encode(audio: Audio, fmt: str) -> tuple[bytes, str]:
    """The encoded bytes and their Content-Type."""
    samples = np.clip(np.nan_to_num(audio.samples.astype(np.float32)), -1.0, 1.0)
    if fmt == "pcm":
        pcm = (resample(samples, audio.rate, PCM_RATE) * 32767.0).round().astype("<i2")
        return pcm.tobytes(), "audio/pcm"
    if fmt not in CONTAINERS:
        raise ValueError(f"unsupported audio format {fmt!r}; supported: {', '.join(FORMATS)}")
    container, subtype, content_type = CONTAINERS[fmt]
    rate = audio.rate
    if fmt == "opus" and rate not in OPUS_RATES:
        samples, rate = resample(samples, rate, PCM_RATE), PCM_RATE
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=container, subtype=subtype)
    return buffer.getvalue(), content_type
