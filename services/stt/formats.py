"""A `Transcript` in each of OpenAI's response formats: json, text, srt, vtt, verbose_json, and the
events of a streamed transcription (`transcript.text.delta`, `transcript.text.done`).

Pure functions; must not know HTTP or engines.
"""

from __future__ import annotations

import json
from typing import Any

from services.stt.transcript import Segment, Transcript

CONTENT_TYPES = {"json": "application/json", "verbose_json": "application/json", "text": "text/plain",
                 "srt": "text/plain", "vtt": "text/vtt"}  # fmt: skip


def _clock(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def srt(t: Transcript) -> str:
    blocks = [f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text.strip()}\n"
              for i, s in enumerate((s for s in t.segments if s.text.strip()), start=1)]  # fmt: skip
    return "\n".join(blocks)


def vtt(t: Transcript) -> str:
    cues = [f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text.strip()}\n"
            for s in t.segments if s.text.strip()]  # fmt: skip
    return "WEBVTT\n\n" + "\n".join(cues)


def _segment(s: Segment) -> dict[str, Any]:
    return {"id": s.id, "seek": 0, "start": round(s.start, 3), "end": round(s.end, 3), "text": s.text,
            "tokens": [], "temperature": s.temperature, "avg_logprob": s.avg_logprob,
            "compression_ratio": 1.0, "no_speech_prob": s.no_speech_prob}  # fmt: skip


def verbose(t: Transcript, task: str, words: bool, segments: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"task": task, "language": t.language, "duration": round(t.duration, 3), "text": t.text}
    if segments:
        out["segments"] = [_segment(s) for s in t.segments]
    if words:
        out["words"] = [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)}
                        for s in t.segments for w in s.words]  # fmt: skip
    return out


def usage(t: Transcript) -> dict[str, Any]:
    return {"type": "duration", "seconds": max(1, round(t.duration))}


def render(t: Transcript, fmt: str, task: str, granularities: tuple[str, ...]) -> tuple[bytes, str]:
    """(body, Content-Type) of a whole answer."""
    if fmt == "text":
        return (t.text + "\n").encode(), CONTENT_TYPES[fmt]
    if fmt == "srt":
        return srt(t).encode(), CONTENT_TYPES[fmt]
    if fmt == "vtt":
        return vtt(t).encode(), CONTENT_TYPES[fmt]
    if fmt == "verbose_json":
        doc = verbose(t, task, "word" in granularities, "segment" in granularities)
        return json.dumps(doc).encode(), CONTENT_TYPES[fmt]
    return json.dumps({"text": t.text, "usage": usage(t)}).encode(), CONTENT_TYPES["json"]


def sse(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def delta_event(text: str) -> bytes:
    return sse({"type": "transcript.text.delta", "delta": text})


def done_event(t: Transcript) -> bytes:
    return sse({"type": "transcript.text.done", "text": t.text, "usage": usage(t)})
