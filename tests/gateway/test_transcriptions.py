"""/v1/audio/transcriptions and /v1/audio/translations through a real daemon, with the official openai
client: a voice round trip (Piper speech from /v1/audio/speech transcribed by pocketsphinx with a word
error rate under 30%, in every response format, streamed and not), the tiny Whisper the tests build
behind a second model, bad input answered with the gateway's envelope and nothing left running, and a
client that hangs up stopping the decoding in the worker before the lease is given back."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from stt_audio import SENTENCES, encode, wer

from appliance.store import open_store

from .conftest import Gateway, launch, wait_until, worker_engine

SAID = " ".join(SENTENCES[:3])


@pytest.fixture(scope="module")
def box(module_tmp: Path, tiny_whisper_dir: Path) -> Iterator[tuple[Gateway, dict[str, Any]]]:
    engines = {
        "tts": worker_engine("speech", "piper:en_US-joe-medium"),
        "stt": worker_engine("stt", "pocketsphinx:en-us"),
        "whisper": worker_engine("stt", str(tiny_whisper_dir), extra_args=["--beam-size", "1"]),
    }
    doc = {"server": {"keepalive_interval_s": 0.2},
           "engines": engines,
           "models": {"voice": {"engine": "tts", "modality": "speech", "vram_gb": 0.1},
                      "sphinx": {"engine": "stt", "modality": "transcription", "vram_gb": 0.1},
                      "whisper-tiny": {"engine": "whisper", "modality": "transcription", "vram_gb": 0.1}}}
    gw = launch(module_tmp, doc, keys={"user": False, "admin": True})
    try:
        yield gw, engines
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def spoken(box: tuple[Gateway, dict[str, Any]]) -> bytes:
    gw, _ = box
    audio = gw.client(timeout=120).audio.speech.create(model="tts-1", voice="alloy", input=SAID,
                                                       response_format="wav")  # fmt: skip
    return audio.content


def test_voice_round_trip_in_every_format(box: tuple[Gateway, dict[str, Any]], spoken: bytes) -> None:
    gw, _ = box
    client = gw.client(timeout=120)
    result = client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", spoken))
    assert wer(SAID, result.text) < 0.3, result.text
    text = client.audio.transcriptions.create(model="sphinx", file=("s.wav", spoken), response_format="text")
    assert wer(SAID, str(text)) < 0.3
    srt = client.audio.transcriptions.create(model="sphinx", file=("s.wav", spoken), response_format="srt")
    assert str(srt).startswith("1\n00:00:") and " --> " in str(srt)
    vtt = client.audio.transcriptions.create(model="sphinx", file=("s.wav", spoken), response_format="vtt")
    assert str(vtt).startswith("WEBVTT")
    verbose = client.audio.transcriptions.create(model="sphinx", file=("s.wav", spoken),
                                                 response_format="verbose_json",
                                                 timestamp_granularities=["word", "segment"])  # fmt: skip
    assert verbose.language == "english" and verbose.duration > 5
    assert verbose.words and verbose.segments and wer(SAID, verbose.text) < 0.3
    assert wer(SAID, " ".join(w.word for w in verbose.words)) < 0.3
    for fmt in ("mp3", "flac", "ogg", "m4a", "webm"):
        samples, rate = _read_wav(spoken)
        again = client.audio.transcriptions.create(model="sphinx", file=(f"s.{fmt}", encode(samples, rate, fmt)))
        assert wer(SAID, again.text) < 0.3, (fmt, again.text)
    assert gw.idle()


def test_streamed_transcription(box: tuple[Gateway, dict[str, Any]], spoken: bytes) -> None:
    gw, _ = box
    stream = gw.client(timeout=120).audio.transcriptions.create(model="sphinx", file=("s.wav", spoken), stream=True)
    events = list(stream)
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    done = [e for e in events if e.type == "transcript.text.done"]
    assert deltas and len(done) == 1 and events[-1] is done[0]
    assert "".join(deltas).strip() == done[0].text and wer(SAID, done[0].text) < 0.3


def test_tiny_whisper_behind_the_gateway(box: tuple[Gateway, dict[str, Any]], spoken: bytes) -> None:
    gw, _ = box
    client = gw.client(timeout=120)
    result = client.audio.transcriptions.create(model="whisper-tiny", file=("s.wav", spoken), language="en",
                                                prompt="three sentences", temperature=0.2)  # fmt: skip
    assert isinstance(result.text, str)
    events = list(client.audio.transcriptions.create(model="whisper-tiny", file=("s.wav", spoken), stream=True))
    assert events[-1].type == "transcript.text.done"
    # an English-only Whisper (the tiny one is, to CTranslate2) translates English speech into its transcript
    # and refuses a declared other language (this openai release marks audio.translations deprecated:
    # OpenAI's own models moved on; it still calls it)
    with pytest.warns(DeprecationWarning):
        verbose = client.audio.translations.create(model="whisper-tiny", file=("s.wav", spoken),
                                                   response_format="verbose_json")  # fmt: skip
    assert verbose.task == "translate" and verbose.language == "english"
    with pytest.raises(openai.BadRequestError) as err, pytest.warns(DeprecationWarning):
        client.audio.translations.create(model="whisper-tiny", file=("s.wav", spoken), extra_body={"language": "de"})
    assert err.value.body["param"] == "language" and "English" in err.value.body["message"]  # type: ignore[index]


def test_translations_of_english_speech_offline(box: tuple[Gateway, dict[str, Any]], spoken: bytes) -> None:
    """pocketsphinx serves translations of English speech (into English: the transcript, as Whisper
    gives), streamed and not, through the official client; a declared non-English language is a 400."""
    gw, _ = box
    client = gw.client(timeout=120)
    with pytest.warns(DeprecationWarning):
        result = client.audio.translations.create(model="sphinx", file=("s.wav", spoken))
    assert wer(SAID, result.text) < 0.3, result.text
    with pytest.warns(DeprecationWarning):
        verbose = client.audio.translations.create(model="whisper-1", file=("s.wav", spoken),
                                                   response_format="verbose_json")  # fmt: skip
    assert verbose.task == "translate" and verbose.language == "english" and wer(SAID, verbose.text) < 0.3
    # OpenAI's client streams only transcriptions: a translation stream is asked for with extra_body and
    # read as it arrives with with_streaming_response
    with pytest.warns(DeprecationWarning), client.audio.translations.with_streaming_response.create(
            model="sphinx", file=("s.wav", spoken), extra_body={"stream": True}) as resp:  # fmt: skip
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: ")]
    deltas = [e["delta"] for e in events if e["type"] == "transcript.text.delta"]
    assert deltas and events[-1]["type"] == "transcript.text.done"
    assert "".join(deltas).strip() == events[-1]["text"] and wer(SAID, events[-1]["text"]) < 0.3
    with pytest.raises(openai.BadRequestError) as err, pytest.warns(DeprecationWarning):
        client.audio.translations.create(model="sphinx", file=("s.wav", spoken), extra_body={"language": "fr"})
    assert err.value.body["param"] == "language" and "English" in err.value.body["message"]  # type: ignore[index]
    assert gw.idle()


def test_transcription_usage_records_audio_seconds(box: tuple[Gateway, dict[str, Any]], spoken: bytes) -> None:
    gw, _ = box
    seconds = len(_read_wav(spoken)[0]) / _read_wav(spoken)[1]
    client = gw.client(timeout=120)
    client.audio.transcriptions.create(model="sphinx", file=("s.wav", spoken), response_format="srt")
    list(client.audio.transcriptions.create(model="sphinx", file=("s.wav", spoken), stream=True))

    def recorded() -> list[dict[str, Any]]:
        return [r for r in gw.usage()["recent"] if r["model"] == "sphinx" and r["status"] == 200
                and r["route"] == "/v1/audio/transcriptions"]  # fmt: skip

    wait_until(lambda: len(recorded()) >= 2, 30, "the usage records")
    for rec in recorded()[-2:]:
        assert abs(rec["audio_s"] - seconds) < 0.1, rec
    metrics = httpx.get(gw.url + "/metrics", headers={"Authorization": f"Bearer {gw.keys['admin']}"}, timeout=30).text
    line = next(m for m in metrics.splitlines() if m.startswith('appliance_audio_seconds_total{model="sphinx"}'))
    assert float(line.split()[-1]) >= 2 * seconds - 0.2, line


def _read_wav(data: bytes) -> tuple[np.ndarray, int]:
    import io

    import soundfile as sf

    samples, rate = sf.read(io.BytesIO(data), dtype="float32")
    return samples, int(rate)


@pytest.mark.parametrize(("case", "filename", "data", "fields", "status", "param"), [
    ("text file", "notes.txt", b"not audio\n" * 100, {}, 400, "file"),
    ("empty file", "a.wav", b"", {}, 400, "file"),
    ("unsupported codec", "a.webm", b"\x1aE\xdf\xa3" + bytes(range(256)) * 20, {}, 400, "file"),
    ("unknown language", "a.wav", None, {"language": "klingon"}, 400, "language"),
    ("unknown model", "a.wav", None, {"model": "nope"}, 404, "model"),
    ("speech model", "a.wav", None, {"model": "voice"}, 400, "model"),
    ("bad response_format", "a.wav", None, {"response_format": "docx"}, 400, "response_format"),
])  # fmt: skip
def test_bad_input_is_a_clear_4xx(box: tuple[Gateway, dict[str, Any]], spoken: bytes, case: str, filename: str,
                                  data: bytes | None, fields: dict[str, str], status: int, param: str) -> None:
    gw, _ = box
    resp = httpx.post(gw.url + "/v1/audio/transcriptions", headers={"Authorization": f"Bearer {gw.keys['user']}"},
                      data={"model": "sphinx", **fields}, files={"file": (filename, spoken if data is None else data)},
                      timeout=60)  # fmt: skip
    assert resp.status_code == status, (case, resp.text)
    assert resp.json()["error"]["param"] == param, (case, resp.text)
    assert gw.idle()


def test_missing_file_and_oversized_upload(box: tuple[Gateway, dict[str, Any]]) -> None:
    gw, _ = box
    auth = {"Authorization": f"Bearer {gw.keys['user']}"}
    resp = httpx.post(gw.url + "/v1/audio/transcriptions", headers=auth, data={"model": "sphinx"},
                      files={"audio": ("a.wav", b"RIFF")}, timeout=60)  # fmt: skip
    assert resp.status_code == 400 and resp.json()["error"]["param"] in ("file", "audio"), resp.text
    resp = httpx.post(gw.url + "/v1/audio/transcriptions", headers=auth, data={"model": "sphinx"}, timeout=60)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "file", resp.text
    big = np.random.default_rng(0).integers(0, 255, 30 * 1024 * 1024, dtype=np.uint8).tobytes()
    resp = httpx.post(gw.url + "/v1/audio/transcriptions", headers=auth, data={"model": "sphinx"},
                      files={"file": ("big.wav", big)}, timeout=60)  # fmt: skip
    assert resp.status_code == 413, resp.text
    assert gw.idle()


def test_hanging_up_stops_the_decoding(box: tuple[Gateway, dict[str, Any]], spoken: bytes) -> None:
    gw, engines = box
    worker = f"http://127.0.0.1:{engines['stt']['port']}"
    samples, rate = _read_wav(spoken)
    long = np.concatenate([samples] * 12)[: 110 * rate]
    audio = encode(long, rate, "flac")
    boundary = "hangup"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nsphinx\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="long.flac"\r\n\r\n').encode()
    body += audio + f"\r\n--{boundary}--\r\n".encode()

    def stats() -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(worker + "/stats", timeout=10).json()
        return result

    gw.client(timeout=120).audio.transcriptions.create(model="sphinx", file=("s.wav", spoken))  # the worker is up
    before = stats()
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    head = (f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {gw.keys['user']}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n")
    try:
        sock.sendall(head.encode() + body)
        wait_until(lambda: stats()["steps"] > before["steps"], 60, "the worker decoding")
    finally:
        sock.close()
    wait_until(lambda: stats()["jobs_cancelled"] > before["jobs_cancelled"], 60, "the worker cancelling the job")
    after = stats()
    assert after["in_flight"] == 0 and not after["busy"]
    assert after["last_cancelled"]["steps_after_cancel"] <= 1
    wait_until(gw.idle, 30, "the lease given back")
    recent = gw.usage()["recent"]
    assert any(r["model"] == "sphinx" and r["error"] == "client_disconnected" for r in recent), json.dumps(recent)[:800]


def _job_rows(gw: Gateway) -> list[dict[str, Any]]:
    store = open_store("", gw.state)
    try:
        return [dict(zip(cols, row, strict=True)) for table, cols, rows in store.dump() if table == "jobs"
                for row in rows]  # fmt: skip
    finally:
        store.close()


def _post_job(gw: Gateway, fields: dict[str, Any], upload: bytes | None, key: str = "user",
              headers: dict[str, str] | None = None) -> httpx.Response:  # fmt: skip
    files = {"file": ("speech.wav", upload)} if upload is not None else {"audio": ("a.wav", b"RIFF")}
    return httpx.post(gw.url + "/v1/jobs", headers={"Authorization": f"Bearer {gw.keys[key]}", **(headers or {})},
                      data=fields, files=files, timeout=60)  # fmt: skip


def _finished(gw: Gateway, job_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        view: dict[str, Any] = gw.request("GET", f"/v1/jobs/{job_id}").json()
        return view if view["status"] in ("succeeded", "failed", "cancelled") else None

    result: dict[str, Any] = wait_until(done, 120, f"job {job_id} to finish")
    return result


def test_transcription_and_translation_jobs(box: tuple[Gateway, dict[str, Any]], spoken: bytes) -> None:
    """A multipart upload to /v1/jobs queues a transcription (or translation) with real pocketsphinx:
    the audio waits in the job's directory, not in the store's row, and goes once the job has finished;
    the result is the synchronous route's answer, and the usage records its audio seconds."""
    gw, _ = box
    jobs_dir = gw.state / "data" / "jobs"
    resp = _post_job(gw, {"route": "/v1/audio/transcriptions", "model": "whisper-1",
                          "response_format": "verbose_json"}, spoken, headers={"Idempotency-Key": "t-1"})  # fmt: skip
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["route"] == "/v1/audio/transcriptions" and job["model"] == "sphinx"
    row = next(r for r in _job_rows(gw) if r["id"] == job["id"])
    body = json.loads(row["body"])
    assert len(row["body"]) < 2000 and body["file"]["bytes"] == len(spoken), row["body"][:300]
    assert body["fields"]["model"] == ["sphinx"] and "route" not in body["fields"]
    again = _post_job(gw, {"route": "/v1/audio/transcriptions", "model": "whisper-1",
                           "response_format": "verbose_json"}, spoken, headers={"Idempotency-Key": "t-1"})  # fmt: skip
    assert again.status_code == 200 and again.json()["id"] == job["id"], again.text
    done = _finished(gw, job["id"])
    assert done["status"] == "succeeded", done
    assert done["result"]["task"] == "transcribe" and wer(SAID, done["result"]["text"]) < 0.3
    assert not (jobs_dir / job["id"]).exists()  # the audio is gone once the job has finished
    assert [p.name for p in jobs_dir.iterdir() if p.is_dir()] == [], "an upload left behind"
    srt = _finished(gw, _post_job(gw, {"route": "/v1/audio/translations", "model": "sphinx",
                                       "response_format": "srt"}, spoken).json()["id"])  # fmt: skip
    assert srt["status"] == "succeeded" and srt["result"].startswith("1\n00:00:"), srt
    seconds = len(_read_wav(spoken)[0]) / _read_wav(spoken)[1]

    def job_records() -> list[dict[str, Any]]:
        return [r for r in gw.usage()["recent"] if r["model"] == "sphinx" and r["status"] == 200
                and r["route"] == "/v1/audio/translations"]  # fmt: skip

    records = wait_until(job_records, 30, "the translation job's usage record")
    assert abs(records[-1]["audio_s"] - seconds) < 0.1, records[-1]


@pytest.mark.parametrize(("fields", "upload", "status", "param"), [
    ({"model": "sphinx"}, b"audio", 400, "route"),
    ({"route": "/v1/audio/speech", "model": "sphinx"}, b"audio", 400, "route"),
    ({"route": "/v1/audio/transcriptions", "model": "sphinx"}, None, 400, "audio"),
    ({"route": "/v1/audio/transcriptions", "model": "sphinx"}, b"", 400, "file"),
    ({"route": "/v1/audio/transcriptions", "model": "sphinx", "stream": "true"}, b"audio", 400, "stream"),
    ({"route": "/v1/audio/transcriptions", "model": "voice"}, b"audio", 400, "model"),
    ({"route": "/v1/audio/transcriptions", "model": "nope"}, b"audio", 404, "model"),
    ({"route": "/v1/audio/transcriptions", "model": "sphinx", "diarize": "true"}, b"audio", 400, "diarize"),
])  # fmt: skip
def test_bad_transcription_jobs_write_nothing(box: tuple[Gateway, dict[str, Any]], fields: dict[str, str],
                                              upload: bytes | None, status: int, param: str) -> None:
    gw, _ = box
    before = len(_job_rows(gw))
    resp = _post_job(gw, fields, upload)
    assert resp.status_code == status and resp.json()["error"]["param"] == param, resp.text
    assert len(_job_rows(gw)) == before
    jobs_dir = gw.state / "data" / "jobs"
    assert not jobs_dir.exists() or [p for p in jobs_dir.iterdir() if p.is_dir()] == []
