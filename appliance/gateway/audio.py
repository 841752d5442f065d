"""Speech responses: the Content-Type of each output format, and the duration of the audio returned
(for usage accounting), read from the bytes without decoding them.

wav: the RIFF header's byte rate; pcm: 24 kHz 16-bit mono (OpenAI's raw format, contracts.md §6);
flac: STREAMINFO's sample count and rate; opus: the last Ogg page's granule position at 48 kHz;
mp3: frame count times samples per frame (frame headers walked from the start). Pure functions.
"""

from __future__ import annotations

import struct

CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
    "aac": "audio/aac",
}
PCM_BYTES_PER_S = 24_000 * 2

_MP3_BITRATES = {  # kbit/s by version (1 or 2/2.5) for layer III
    1: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 0),
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160, 0),
}
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def duration_s(fmt: str, data: bytes) -> float:
    """Seconds of audio in `data` (0.0 when the bytes do not parse as `fmt`)."""
    try:
        if fmt == "pcm":
            return len(data) / PCM_BYTES_PER_S
        if fmt == "wav":
            return _wav(data)
        if fmt == "flac":
            return _flac(data)
        if fmt == "opus":
            return _ogg(data)
        if fmt == "mp3":
            return _mp3(data)
    except (struct.error, IndexError, ValueError):
        return 0.0
    return 0.0


def _wav(data: bytes) -> float:
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return 0.0
    pos, byte_rate = 12, 0
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if chunk == b"fmt ":
            byte_rate = struct.unpack_from("<I", data, pos + 16)[0]
        elif chunk == b"data":
            available = len(data) - pos - 8
            # Streaming writers put 0 or 0xFFFFFFFF in the size: trust the bytes that arrived.
            length = available if size in (0, 0xFFFFFFFF) or size > available else size
            return length / byte_rate if byte_rate else 0.0
        pos += 8 + size + (size & 1)
    return 0.0


def _flac(data: bytes) -> float:
    if data[:4] != b"fLaC":
        return 0.0
    info = data[8:8 + 34]  # STREAMINFO is always the first metadata block
    rate = (info[10] << 12) | (info[11] << 4) | (info[12] >> 4)
    samples = ((info[13] & 0x0F) << 32) | struct.unpack_from(">I", info, 14)[0]
    return samples / rate if rate else 0.0


def _ogg(data: bytes) -> float:
    last = data.rfind(b"OggS")
    if last < 0:
        return 0.0
    granule: int = struct.unpack_from("<q", data, last + 6)[0]
    return max(granule, 0) / 48_000  # Opus granule positions always count 48 kHz samples


def _mp3(data: bytes) -> float:
    pos = 0
    if data[:3] == b"ID3":
        size = data[6:10]
        pos = 10 + ((size[0] << 21) | (size[1] << 14) | (size[2] << 7) | size[3])
    frames, seconds = 0, 0.0
    while pos + 4 <= len(data):
        b1, b2 = data[pos + 1], data[pos + 2]
        if data[pos] != 0xFF or (b1 & 0xE0) != 0xE0:
            break
        version_bits, layer_bits = (b1 >> 3) & 3, (b1 >> 1) & 3
        if version_bits == 1 or layer_bits != 1:  # reserved version, or not layer III
            break
        bitrate = _MP3_BITRATES[1 if version_bits == 3 else 2][b2 >> 4] * 1000
        rates = _MP3_RATES[version_bits]
        rate_index = (b2 >> 2) & 3
        if not bitrate or rate_index == 3:
            break
        rate = rates[rate_index]
        per_frame = 1152 if version_bits == 3 else 576
        length = (144 if version_bits == 3 else 72) * bitrate // rate + ((b2 >> 1) & 1)
        frames += 1
        seconds += per_frame / rate
        pos += length
    return seconds if frames else 0.0
