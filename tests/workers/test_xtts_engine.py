"""XTTS request handling with the coqui TTS object replaced by a fake, plus a real run where possible.

The fake stands where `TTS.api.TTS` would: a torch module with built-in speakers, a 24 kHz synthesizer
and a `tts()` that records its arguments, so the licence gate, voice selection (built-in, cloned from
reference WAVs, default), languages, offload/wake and the HTTP route run for real. The real XTTS run
needs coqui-tts, a CUDA device and the weights; it runs the worker with the XTTS environment's own
interpreter (`xtts_python`), and is skipped (with the reason) where any of them is missing.
"""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch
from aiohttp.test_utils import TestClient, TestServer
from worker_harness import REPO_ROOT, start_worker

from services.protocol import Worker, WorkerOptions, build_app
from services.speech.backend import SpeechBackend, SpeechOptions
from services.speech.engines import Utterance
from services.speech.routes import add_routes
from services.speech.xtts_engine import LicenceNotAccepted, XttsEngine


class FakeCoquiTTS(torch.nn.Module):
    """Mimics the parts of TTS.api.TTS the engine uses; speech length follows the words and the speed."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.gain = torch.nn.Parameter(torch.full((4,), 0.125))
        self.speakers = ["Ana Florence", "Claribel Dervla"]
        self.synthesizer = SimpleNamespace(output_sample_rate=24_000)
        self.calls: list[dict[str, Any]] = []

    def tts(self, text: str, **kwargs: Any) -> list[float]:
        self.calls.append({"text": text, **kwargs})
        n = int(24_000 * 0.1 * len(text.split()) / kwargs.get("speed", 1.0))
        return list(np.sin(np.arange(n) * 0.03) * float(self.gain.sum()))


@pytest.fixture
def voices_dir(tmp_path: Path) -> Path:
    root = tmp_path / "voices"
    (root / "team").mkdir(parents=True)
    tone = np.sin(np.arange(24_000) * 0.02).astype(np.float32) * 0.2
    for path in (root / "narrator.wav", root / "team" / "a.wav", root / "team" / "b.wav"):
        sf.write(path, tone, 24_000)
    return root


def make_engine(voices_dir: Path, accept: bool, environ: dict[str, str], made: list[FakeCoquiTTS]) -> XttsEngine:
    def factory(target: str) -> FakeCoquiTTS:
        made.append(FakeCoquiTTS(target))
        return made[-1]

    return XttsEngine("/models/xtts", device="cpu", accept_cpml=accept, voices_dir=voices_dir,
                      offload_strategy="arena", factory=factory, environ=environ)  # fmt: skip


def test_nothing_is_imported_or_agreed_before_the_licence_is_accepted(voices_dir: Path) -> None:
    environ: dict[str, str] = {}
    made: list[FakeCoquiTTS] = []
    engine = make_engine(voices_dir, accept=False, environ=environ, made=made)
    with pytest.raises(LicenceNotAccepted, match="CPML"):
        engine.load()
    assert made == [] and "COQUI_TOS_AGREED" not in environ


def test_accepted_licence_sets_the_agreement_before_loading(voices_dir: Path) -> None:
    environ: dict[str, str] = {}
    seen: list[str | None] = []

    def factory(target: str) -> FakeCoquiTTS:
        seen.append(environ.get("COQUI_TOS_AGREED"))  # what coqui would read while fetching
        return FakeCoquiTTS(target)

    engine = XttsEngine("/models/xtts", device="cpu", accept_cpml=True, voices_dir=voices_dir, factory=factory,
                        environ=environ)  # fmt: skip
    engine.load()
    assert seen == ["1"]


def test_voice_selection(voices_dir: Path) -> None:
    made: list[FakeCoquiTTS] = []
    engine = make_engine(voices_dir, accept=True, environ={}, made=made)
    engine.load()
    engine.synthesize(Utterance("one two", voice="Claribel Dervla"))
    engine.synthesize(Utterance("one two", voice="narrator"))
    engine.synthesize(Utterance("one two", voice="team", language="FR", speed=1.5))
    engine.synthesize(Utterance("one two", voice="alloy"))
    calls = made[0].calls
    assert calls[0]["speaker"] == "Claribel Dervla" and "speaker_wav" not in calls[0]
    assert calls[1]["speaker_wav"] == [str(voices_dir / "narrator.wav")]
    assert calls[2]["speaker_wav"] == [str(voices_dir / "team" / "a.wav"), str(voices_dir / "team" / "b.wav")]
    assert calls[2]["language"] == "fr" and calls[2]["speed"] == 1.5
    assert calls[3]["speaker"] == "Ana Florence" and calls[3]["language"] == "en"
    assert engine.voices() == ["Ana Florence", "Claribel Dervla", "narrator", "team"]


def test_unaccepted_licence_falls_back_to_espeak_with_the_reason(voices_dir: Path) -> None:
    engine = make_engine(voices_dir, accept=False, environ={}, made=[])
    backend = SpeechBackend(engine, "cpu", SpeechOptions())
    backend.load()
    assert backend.engine.name == "espeak"
    assert backend.fallback_reason is not None and "CPML" in backend.fallback_reason
    assert backend.synthesize(Utterance("hello", voice="alloy")).seconds > 0.2


@pytest.fixture
async def xtts_client(voices_dir: Path) -> AsyncIterator[tuple[TestClient[Any, Any], list[FakeCoquiTTS]]]:
    made: list[FakeCoquiTTS] = []
    backend = SpeechBackend(make_engine(voices_dir, True, {}, made), "cpu", SpeechOptions(fallback="none"))
    options = WorkerOptions("speech", "127.0.0.1", 0, "xtts-v2", "xtts:/models/xtts", "cpu", False)
    worker = Worker(options, backend, None)
    client = TestClient(TestServer(build_app(worker, lambda app, w: add_routes(app, w, backend)), host="127.0.0.1"))
    await client.start_server()
    try:
        yield client, made
    finally:
        await client.close()
        worker.shutdown_executor()


async def _speak(client: TestClient[Any, Any], text: str, **extra: Any) -> tuple[float, int]:
    resp = await client.post("/v1/audio/speech", json={"model": "xtts-v2", "input": text, "voice": "narrator",
                                                         "response_format": "wav", **extra})  # fmt: skip
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "audio/wav"
    samples, rate = sf.read(io.BytesIO(await resp.read()))
    return len(samples) / rate, rate


async def test_route_speaks_24khz_and_survives_offload(
    xtts_client: tuple[TestClient[Any, Any], list[FakeCoquiTTS]],
) -> None:
    client, made = xtts_client
    short, rate = await _speak(client, "one two three")
    long, _ = await _speak(client, "one two three four five six seven eight nine ten")
    assert rate == 24_000 and long > 3 * short
    before = await (
        await client.post("/v1/audio/speech", json={"input": "same words", "voice": "alloy", "response_format": "pcm"})
    ).read()
    assert before[:1] != b"{"  # audio, not an error envelope
    assert (await (await client.post("/offload")).json())["state"] == "offloaded"
    assert (await (await client.get("/health")).json())["state"] == "offloaded"
    after = await (await client.post("/v1/audio/speech", json={"input": "same words", "voice": "alloy",
                                                               "response_format": "pcm"})).read()  # fmt: skip
    assert before == after  # the wake rebinds the same weights (the fake's gain sets the amplitude)
    assert Path(made[0].calls[0]["speaker_wav"][0]).name == "narrator.wav"


async def test_route_rejects_an_unknown_language(xtts_client: tuple[TestClient[Any, Any], list[FakeCoquiTTS]]) -> None:
    client, _ = xtts_client
    resp = await client.post("/v1/audio/speech", json={"input": "hola", "voice": "alloy", "language": "xx"})
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "language"


def xtts_python(environ: Mapping[str, str], checkout: Path) -> str | None:
    """The XTTS environment's interpreter, where it exists: `$APPLIANCE_XTTS_PYTHON`, else the
    `xtts-venv` that install.sh builds beside the appliance's own (`<checkout>/xtts-venv` for a
    checkout install, `$APPLIANCE_PREFIX/xtts-venv`, default `~/.local/share/appliance/xtts-venv`,
    for a piped one). coqui-tts needs torch 2.9.1, so it is never in the test environment itself."""
    explicit = environ.get("APPLIANCE_XTTS_PYTHON")
    if explicit:
        return explicit
    home = Path(environ.get("HOME", str(Path.home())))
    prefix = Path(environ.get("APPLIANCE_PREFIX") or home / ".local/share/appliance")
    for venv in (checkout / "xtts-venv", prefix / "xtts-venv"):
        if (venv / "bin" / "python").is_file():
            return str(venv / "bin" / "python")
    return None


PROBE = "import importlib.util, torch; print(importlib.util.find_spec('TTS') is not None, torch.cuda.is_available())"


def xtts_run_blocker(python: str | None, environ: Mapping[str, str]) -> str | None:
    """Why the real XTTS run cannot happen with `python` (None: this environment), or None."""
    where = python or "this environment"
    if python is None:
        has_tts, has_cuda = importlib.util.find_spec("TTS") is not None, torch.cuda.is_available()
    else:
        try:
            out = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"cannot run the XTTS interpreter {python}: {exc}"
        words = out.stdout.split()
        if out.returncode != 0 or len(words) != 2:
            return f"{python} cannot import torch: {out.stderr.strip()[-300:]}"
        has_tts, has_cuda = words[0] == "True", words[1] == "True"
    if not has_tts:
        return f"coqui-tts is not installed in {where} (it needs torch 2.9.1; install.sh builds xtts-venv)"
    if not has_cuda:
        return f"no CUDA device for {where}"
    model_dir = environ.get("APPLIANCE_XTTS_MODEL_DIR") or str(
        Path(environ.get("TTS_HOME", Path.home() / ".local/share")) / "tts"
        / "tts_models--multilingual--multi-dataset--xtts_v2"
    )  # fmt: skip
    if not (Path(model_dir) / "model.pth").is_file():
        return f"XTTS v2 weights not found in {model_dir} (set APPLIANCE_XTTS_MODEL_DIR)"
    return None


def test_the_real_run_finds_the_xtts_environments_interpreter(tmp_path: Path) -> None:
    """Regression: the real run looked for coqui-tts in the test environment, where it can never be
    (it pins torch 2.9.1), so it always skipped; it must use the XTTS environment when there is one."""
    home = {"HOME": str(tmp_path / "home")}
    assert xtts_python(home, tmp_path) is None
    python = tmp_path / "xtts-venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\necho True False\n")
    python.chmod(0o755)
    assert xtts_python(home, tmp_path) == str(python)
    assert xtts_python({**home, "APPLIANCE_XTTS_PYTHON": "/opt/x/bin/python"}, tmp_path) == "/opt/x/bin/python"
    # The blocker asks that interpreter, not this one: it has coqui-tts here, but no CUDA device.
    assert xtts_run_blocker(str(python), home) == f"no CUDA device for {python}"


def test_xtts_real_run(log_dir: Path) -> None:
    python = xtts_python(os.environ, REPO_ROOT)
    reason = xtts_run_blocker(python, os.environ)
    if reason is not None:
        pytest.skip(f"XTTS real run needs coqui-tts, CUDA and the XTTS v2 weights: {reason}")
    model_dir = os.environ.get("APPLIANCE_XTTS_MODEL_DIR", "")
    target = f"xtts:{model_dir}" if model_dir else "xtts:"
    worker = start_worker("speech", "xtts-v2", target, log_dir, "--accept-cpml", "--fallback", "none",
                          "--device", "cuda", deadline_s=120, python=python)  # fmt: skip
    try:
        body = {
            "model": "xtts-v2",
            "input": "The appliance speaks with XTTS.",
            "voice": "alloy",
            "response_format": "wav",
        }
        resp = httpx.post(worker.base_url + "/v1/audio/speech", json=body, timeout=600)
        assert resp.status_code == 200, resp.text
        samples, rate = sf.read(io.BytesIO(resp.content))
        assert rate == 24_000 and len(samples) / rate > 0.5
    finally:
        worker.stop()


def test_xtts_speaks_sentence_by_sentence_and_stops_between_two(voices_dir: Path) -> None:
    """Issue 13 item 3: a cancelled request stops XTTS between two sentences, not after the whole text."""
    made: list[FakeCoquiTTS] = []
    engine = make_engine(voices_dir, accept=True, environ={}, made=made)
    engine.load()
    audio = engine.synthesize(Utterance("One two three. Four five? Six.", voice="narrator"))
    assert [c["text"] for c in made[0].calls] == ["One two three.", "Four five?", "Six."]
    assert audio.seconds == pytest.approx(0.1 * 6 + 2 * 0.2, abs=0.01)  # six words, two pauses

    class Stop(Exception):
        pass

    def cancelled() -> None:
        raise Stop

    made[0].calls.clear()
    with pytest.raises(Stop):
        engine.synthesize(Utterance("First one. Second one. Third one.", voice="narrator"), cancelled)
    assert [c["text"] for c in made[0].calls] == ["First one."]
