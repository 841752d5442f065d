"""The STT worker's faster-whisper engine through its real process, on a tiny random-weight Whisper the
tests build and convert to CTranslate2 offline: the real load, offload, wake and decode paths, every
response format and the stream (the words are random: the shapes and timings are what is checked)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from stt_audio import encode, speak, wer
from worker_harness import ServedProcess, start_worker, worker_stats


@pytest.fixture(scope="module")
def whisper(log_dir: Path, tiny_whisper_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedProcess]:
    store = tmp_path_factory.mktemp("models")
    shutil.copytree(tiny_whisper_dir, store / "whisper-tiny-test")  # found by name, as `appliance pull` leaves it
    worker = start_worker("stt", "whisper-1", "whisper:whisper-tiny-test", log_dir, "--models-dir", str(store),
                          "--beam-size", "1")  # fmt: skip
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def speech() -> bytes:
    samples, rate = speak("Hello world. How are you today?")
    return encode(samples, rate, "mp3")


def post(worker: ServedProcess, data: bytes, route: str = "transcriptions", **fields: object) -> httpx.Response:
    return httpx.post(f"{worker.base_url}/v1/audio/{route}", data=fields, files={"file": ("a.mp3", data)},
                      timeout=120)  # fmt: skip


def test_transcribes_with_every_format(whisper: ServedProcess, speech: bytes) -> None:
    body = post(whisper, speech, model="whisper-1", temperature="0.2", prompt="a greeting").json()
    assert isinstance(body["text"], str) and body["usage"]["type"] == "duration"
    verbose = post(whisper, speech, response_format="verbose_json",
                   **{"timestamp_granularities[]": ["word", "segment"]}).json()  # fmt: skip
    assert verbose["task"] == "transcribe" and verbose["language"] == "english"
    # the audio's own length (Piper's timing varies from run to run), not the segments' guesses
    assert abs(verbose["duration"] - sf.info(io.BytesIO(speech)).duration) < 0.1, verbose["duration"]
    for seg in verbose["segments"]:
        assert 0.0 <= seg["start"] <= seg["end"] <= verbose["duration"] + 0.05
    assert isinstance(verbose["words"], list)
    assert post(whisper, speech, response_format="vtt").text.startswith("WEBVTT")
    assert post(whisper, speech, response_format="text").headers["content-type"].startswith("text/plain")
    assert post(whisper, speech, response_format="srt").status_code == 200


def test_stream_ends_with_done(whisper: ServedProcess, speech: bytes) -> None:
    with httpx.stream("POST", f"{whisper.base_url}/v1/audio/transcriptions", data={"stream": "true"},
                      files={"file": ("a.mp3", speech)}, timeout=120) as resp:  # fmt: skip
        assert resp.status_code == 200
        events = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1]["type"] == "transcript.text.done"
    assert all(e["type"] == "transcript.text.delta" for e in events[:-1])


def test_english_only_model_translates_english_and_refuses_other_languages(whisper: ServedProcess,
                                                                          speech: bytes) -> None:
    resp = post(whisper, speech, route="translations", response_format="verbose_json")
    assert resp.status_code == 200 and resp.json()["task"] == "translate", resp.text  # English speech: its transcript
    for route in ("transcriptions", "translations"):
        resp = post(whisper, speech, route=route, language="de")
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "language", resp.text
    assert post(whisper, speech, language="en").status_code == 200


def test_load_offload_wake_unload(whisper: ServedProcess, speech: bytes) -> None:
    assert httpx.post(whisper.base_url + "/load", timeout=60).json()["state"] == "loaded"
    stats = worker_stats(whisper)
    assert stats["device"] == "cpu" and stats["host_bytes"] > 100_000 and stats["load_seconds"] is not None
    assert httpx.post(whisper.base_url + "/offload", timeout=60).json()["state"] == "offloaded"
    assert post(whisper, speech).status_code == 200  # the request wakes it
    stats = worker_stats(whisper)
    assert stats["state"] == "loaded" and stats["wake_seconds"] is not None
    assert httpx.post(whisper.base_url + "/unload", timeout=60).json()["state"] == "unloaded"
    assert worker_stats(whisper)["host_bytes"] == 0
    silence = encode(np.zeros(16_000, dtype=np.float32), 16_000, "wav")
    assert post(whisper, silence).status_code == 200  # loaded from disk again


def test_missing_model_fails_the_load_with_its_name(log_dir: Path, tmp_path: Path, speech: bytes) -> None:
    worker = start_worker("stt", "whisper-1", "whisper:not-pulled", log_dir, "--models-dir", str(tmp_path),
                          "--fallback", "none")  # fmt: skip
    try:
        resp = post(worker, speech)
        assert resp.status_code == 503 and "not-pulled" in resp.json()["error"]["message"], resp.text
    finally:
        worker.stop()


def test_whisper_not_pulled_yet_falls_back_to_pocketsphinx(log_dir: Path, tmp_path: Path, speech: bytes) -> None:
    worker = start_worker("stt", "whisper-1", "whisper:whisper-small", log_dir, "--models-dir", str(tmp_path))
    try:
        resp = post(worker, speech)
        # Piper's timing varies from run to run, and pocketsphinx once heard "oh world are you today"
        assert resp.status_code == 200 and wer("Hello world. How are you today?", resp.json()["text"]) < 0.5, resp.text
        card = httpx.get(worker.base_url + "/v1/models", timeout=10).json()["data"][0]
        assert card["engine"] == "pocketsphinx" and "whisper-small" in card["fallback_reason"]
    finally:
        worker.stop()


class _GenerateSpy:
    """The CTranslate2 Whisper model with each `generate` call's prompt ids kept (the decoder's task tokens)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.prompts: list[list[int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def generate(self, features: Any, prompts: list[list[int]], *args: Any, **kwargs: Any) -> Any:
        self.prompts.extend(prompts)
        return self.inner.generate(features, prompts, *args, **kwargs)


def test_multilingual_whisper_runs_the_translate_task(tiny_multilingual_whisper_dir: Path) -> None:
    """The translate path end to end on a multilingual (random-weight) Whisper: the engine loads it as
    multilingual, accepts a translation of declared German speech, and the decoder is prompted with
    Whisper's <|de|> and <|translate|> tokens; the transcript has the shape of one (its words are noise)."""
    from services.stt.transcript import Task
    from services.stt.whisper_engine import WhisperEngine

    engine = WhisperEngine(str(tiny_multilingual_whisper_dir), None, beam_size=1)
    engine.load()
    try:
        assert engine.multilingual
        engine.check(Task(translate=True, language="de"))  # a multilingual model refuses nothing here
        spy = _GenerateSpy(engine._model.model)
        engine._model.model = spy
        samples, rate = speak("Guten Morgen, wie geht es dir?")
        from services.speech.audio import resample

        audio = resample(samples, rate, 16_000).astype(np.float32)
        seen: list[object] = []
        transcript = engine.transcribe(audio, Task(translate=True, language="de"), seen.append)
        tokenizer = engine._model.hf_tokenizer
        assert spy.prompts, "the decoder never ran"
        for prompt in spy.prompts:
            tokens = [tokenizer.id_to_token(i) for i in prompt]
            assert "<|translate|>" in tokens and "<|de|>" in tokens and "<|transcribe|>" not in tokens, tokens
        assert transcript.language == "english" and abs(transcript.duration - len(audio) / 16_000) < 0.01
        assert len(seen) == len(transcript.segments) and isinstance(transcript.text, str)
        spy.prompts.clear()
        engine.transcribe(audio, Task(language="de"), lambda _: None)  # and the transcribe task, for contrast
        assert all("<|transcribe|>" in [tokenizer.id_to_token(i) for i in p] for p in spy.prompts)
    finally:
        engine.unload()


def test_multilingual_whisper_translates_through_the_worker(log_dir: Path, tiny_multilingual_whisper_dir: Path,
                                                            speech: bytes) -> None:
    worker = start_worker("stt", "whisper-1", f"whisper:{tiny_multilingual_whisper_dir}", log_dir,
                          "--beam-size", "1")  # fmt: skip
    try:
        verbose = post(worker, speech, route="translations", response_format="verbose_json", language="de").json()
        assert verbose["task"] == "translate" and verbose["language"] == "english", verbose
        assert isinstance(verbose["segments"], list) and verbose["duration"] > 1
        with httpx.stream("POST", f"{worker.base_url}/v1/audio/translations", data={"stream": "true"},
                          files={"file": ("a.mp3", speech)}, timeout=120) as resp:  # fmt: skip
            assert resp.status_code == 200 and float(resp.headers["x-audio-seconds"]) > 1
            events = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: ")]
        assert events[-1]["type"] == "transcript.text.done"
    finally:
        worker.stop()


GERMAN = "Guten Morgen. Ich möchte heute eine Tasse Kaffee trinken. Das Wetter ist sehr schön."


def test_real_multilingual_whisper_translates_german_speech_into_english(log_dir: Path,
                                                                         whisper_base_dir: Path) -> None:
    """A real non-English-to-English translation: German spoken by espeak-ng, translated by the real
    Whisper base the dev extra ships (in packages, nothing downloaded), next to its German transcript."""
    german = subprocess.run(["espeak-ng", "-v", "de", "-s", "140", "--stdout", GERMAN], capture_output=True,
                            check=True, timeout=60).stdout  # fmt: skip
    worker = start_worker("stt", "whisper-1", f"whisper:{whisper_base_dir}", log_dir, "--beam-size", "5")
    try:
        def ask(route: str) -> dict[str, Any]:
            resp = httpx.post(f"{worker.base_url}/v1/audio/{route}", data={"response_format": "verbose_json"},
                              files={"file": ("german.wav", german)}, timeout=300)  # fmt: skip
            assert resp.status_code == 200, resp.text
            body: dict[str, Any] = resp.json()
            return body

        heard = ask("transcriptions")
        assert heard["language"] == "german" and "kaffee" in heard["text"].lower(), heard["text"]
        english = ask("translations")
        text = english["text"].lower()
        assert english["task"] == "translate" and english["language"] == "english"
        assert "good morning" in text and "coffee" in text and "kaffee" not in text, english["text"]
    finally:
        worker.stop()
