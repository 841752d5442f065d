"""Speech-to-text benchmark: the STT worker's real-time factor on this CPU, and the gateway's added latency.

    python bench/stt.py [--model DIR] [--rounds N]

Speech: five sentences spoken by the packaged Piper voice (~15 s). Real-time factor (decoding seconds
per second of audio, lower is faster) of `python -m services.stt` on the CPU for the tiny random-weight
Whisper the tests build (converted to CTranslate2 here, offline: its output is random, so it measures
the pipeline with a model of whisper-tiny's token budget but far smaller layers, not a real model's
speed), for pocketsphinx's packaged English model, and for a real CTranslate2 Whisper: the directory
`--model` names, else the Whisper base the dev extra ships in packages (joined here) when installed.
Then the same transcription sent straight to the pocketsphinx worker and through `appliance serve` in
alternation (a short clip, 4 x N pairs): the gateway's added milliseconds (the median of the pairs'
differences). Ends with one JSON line holding `stt_rtf_cpu` (the tiny Whisper),
`stt_rtf_cpu_pocketsphinx`, `stt_rtf_cpu_model` and `model` (the real Whisper measured, or null)
and `gateway_added_ms`. Bounded in count and time; loopback only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "workers")]

from daemon_harness import Daemon  # noqa: E402
from stt_audio import SENTENCES, encode, speak  # noqa: E402
from tiny_models import build_tiny_whisper, packaged_whisper_base  # noqa: E402
from worker_harness import ServedProcess, free_port, start_worker  # noqa: E402


def transcribe(url: str, audio: bytes, model: str) -> float:
    started = time.perf_counter()
    resp = httpx.post(url + "/v1/audio/transcriptions", data={"model": model}, files={"file": ("s.wav", audio)},
                      timeout=600)  # fmt: skip
    elapsed = time.perf_counter() - started
    if resp.status_code != 200:
        raise SystemExit(f"transcription failed: {resp.status_code} {resp.text[:300]}")
    return elapsed


def rtf(worker: ServedProcess, audio: bytes, seconds: float, rounds: int) -> float:
    transcribe(worker.base_url, audio, "m")  # load and warm up
    return statistics.median(transcribe(worker.base_url, audio, "m") for _ in range(rounds)) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="a CTranslate2 Whisper directory to measure too")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    samples, rate = speak(" ".join(SENTENCES))
    seconds = len(samples) / rate
    audio = encode(samples, rate, "wav")
    print(f"speech: {seconds:.1f} s", file=sys.stderr)
    result: dict[str, object] = {"audio_s": round(seconds, 2), "stt_rtf_cpu_model": None, "model": None}
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        tiny = build_tiny_whisper(logs / "tiny-whisper")
        targets = [("stt_rtf_cpu", str(tiny)), ("stt_rtf_cpu_pocketsphinx", "pocketsphinx:en-us")]
        model = args.model
        if model is None:  # the real multilingual Whisper base the dev extra ships, when installed
            try:
                model = packaged_whisper_base(logs / "whisper-base")
                result["model"] = "whisper-base (packaged)"
            except ImportError:
                model = None
        else:
            result["model"] = str(model)
        if model is not None:
            targets.append(("stt_rtf_cpu_model", str(model)))
        for name, path in targets:
            worker = start_worker("stt", "m", path, logs, "--beam-size", "5")
            try:
                result[name] = round(rtf(worker, audio, seconds, args.rounds), 4)
            finally:
                worker.stop()
            print(f"{name}: {result[name]}", file=sys.stderr)
        port = free_port()
        engine = {"kind": "worker", "worker": "stt", "model_path": "pocketsphinx:en-us", "device": "cpu",
                  "port": port, "env": {"HF_HUB_OFFLINE": "1"}}  # fmt: skip
        daemon = Daemon(logs, {"engines": {"stt": engine},
                               "models": {"sphinx": {"engine": "stt", "modality": "transcription", "vram_gb": 0.1}}})
        daemon.start()
        try:
            direct_url = f"http://127.0.0.1:{port}"
            short = encode(*speak("Hello."), "wav")  # a short clip: the decoding's own noise stays small
            transcribe(daemon.url, short, "sphinx")  # starts and loads the worker
            direct, gateway = [], []
            for _ in range(args.rounds * 4):  # alternating pairs spread a shared machine's noise over both
                direct.append(transcribe(direct_url, short, "sphinx"))
                gateway.append(transcribe(daemon.url, short, "sphinx"))
        finally:
            if daemon.proc is not None:
                daemon.proc.terminate()
                daemon.proc.wait(30)
        result["direct_ms"] = round(statistics.median(direct) * 1000, 1)
        result["gateway_ms"] = round(statistics.median(gateway) * 1000, 1)
        added = statistics.median(g - d for g, d in zip(gateway, direct, strict=True))
        result["gateway_added_ms"] = round(added * 1000, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
