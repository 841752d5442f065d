"""Abandoned jobs must not keep a worker busy (issue 13, item 3), for every worker kind with long work.

A client that hangs up mid-request cancels the work in the engine: the diffusers worker stops between two
denoising steps, the text worker between two tokens, the speech worker between two sentences. Each test
counts the units of work the worker reports in /stats (never wall-clock time): the abandoned job stops
within one unit of the cancel, the worker is idle again, and the next request runs exactly its own units.
The embeddings worker has no steps inside a request (one model call per batch); its batcher drops an
abandoned request's queued texts and waits for a running batch (tests/workers/test_embed_worker.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tiny_models
from worker_harness import ServedProcess, abandon, send_raw, start_worker, wait_until, worker_stats

SENTENCES = " ".join(f"This is sentence number {i}, spoken slowly." for i in range(60))


@pytest.fixture(scope="module")
def diffusers_worker(tiny_sd3_dir: Path, log_dir: Path) -> Iterator[ServedProcess]:
    worker = start_worker("diffusers", "tiny-sd3", tiny_sd3_dir, log_dir, "--default-size", "32x32")
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def long_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models.build_tiny_llama(tmp_path_factory.mktemp("long-llama"), max_positions=40_000)


@pytest.fixture(scope="module")
def text_worker(long_llama_dir: Path, log_dir: Path) -> Iterator[ServedProcess]:
    worker = start_worker("text", "tiny-llama", long_llama_dir, log_dir)
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def speech_worker(log_dir: Path) -> Iterator[ServedProcess]:
    worker = start_worker("speech", "joe", "piper:en_US-joe-medium", log_dir)
    yield worker
    worker.stop()


def image(steps: int) -> dict[str, object]:
    return {"model": "tiny-sd3", "prompt": "a slow red fox", "size": "64x64", "steps": steps, "seed": 1}


def test_abandoned_image_job_stops_between_steps_and_the_next_runs_alone(diffusers_worker: ServedProcess) -> None:
    stats = abandon(diffusers_worker, "/v1/images/generations", image(200), "ghost-image")
    ghost = stats["last_cancelled"]
    assert ghost["request_id"] == "ghost-image"
    assert ghost["steps_after_cancel"] <= 1, ghost  # idle again within one step of the hang-up
    assert ghost["steps"] < 200
    # The next image is served within its own service time: exactly its own steps run meanwhile.
    before = worker_stats(diffusers_worker)["steps"]
    resp = httpx.post(diffusers_worker.base_url + "/v1/images/generations", json=image(3), timeout=120)
    assert resp.status_code == 200, resp.text
    assert worker_stats(diffusers_worker)["steps"] - before == 3


def test_abandoned_text_generation_stops_between_tokens(text_worker: ServedProcess) -> None:
    body = {"model": "tiny-llama", "prompt": "once upon a time", "max_tokens": 30_000, "ignore_eos": True}
    for stream in (False, True):
        stats = abandon(text_worker, "/v1/completions", {**body, "stream": stream}, f"ghost-text-{stream}")
        ghost = stats["last_cancelled"]
        assert ghost["request_id"] == f"ghost-text-{stream}"
        assert ghost["steps_after_cancel"] <= 1 and ghost["steps"] < 30_000, ghost
    before = worker_stats(text_worker)["steps"]
    resp = httpx.post(text_worker.base_url + "/v1/completions",
                      json={**body, "max_tokens": 5}, timeout=60)  # fmt: skip
    assert resp.status_code == 200, resp.text
    assert worker_stats(text_worker)["steps"] - before == 5


def test_abandoned_speech_stops_between_sentences(speech_worker: ServedProcess) -> None:
    body = {"model": "joe", "input": SENTENCES, "voice": "alloy", "response_format": "wav"}
    stats = abandon(speech_worker, "/v1/audio/speech", body, "ghost-speech")
    ghost = stats["last_cancelled"]
    assert ghost["request_id"] == "ghost-speech"
    assert ghost["steps_after_cancel"] <= 1 and ghost["steps"] < 60, ghost
    before = worker_stats(speech_worker)["steps"]
    resp = httpx.post(speech_worker.base_url + "/v1/audio/speech",
                      json={**body, "input": "One sentence. And another."}, timeout=60)  # fmt: skip
    assert resp.status_code == 200, resp.text
    assert worker_stats(speech_worker)["steps"] - before == 2


def test_cancel_route_answers_once_the_job_has_stopped(diffusers_worker: ServedProcess) -> None:
    """The gateway's path: it hangs up and asks /cancel, whose answer means the engine let go."""
    before = worker_stats(diffusers_worker)["steps"]
    sock = send_raw(diffusers_worker, "/v1/images/generations", image(200), "cancel-me")
    try:
        wait_until(lambda: worker_stats(diffusers_worker)["steps"] - before >= 2, 60, "the job's first steps")
        answer = httpx.post(diffusers_worker.base_url + "/cancel", json={"request_id": "cancel-me"}, timeout=60)
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert result["found"] and result["steps_after_cancel"] <= 1 and result["steps"] < 200, result
        stats = worker_stats(diffusers_worker)  # the answer came after the model thread let go
        assert not stats["busy"] and stats["last_cancelled"]["request_id"] == "cancel-me"
        reply = sock.recv(65536)  # the request itself ends with the cancellation error
        assert reply.startswith(b"HTTP/1.1 499"), reply[:200]
    finally:
        sock.close()


def test_request_cancelled_before_it_arrives_never_runs(diffusers_worker: ServedProcess) -> None:
    answer = httpx.post(diffusers_worker.base_url + "/cancel", json={"request_id": "too-late"}, timeout=10)
    assert answer.json() == {"request_id": "too-late", "found": False}
    before = worker_stats(diffusers_worker)["steps"]
    resp = httpx.post(diffusers_worker.base_url + "/v1/images/generations", json=image(3),
                      headers={"X-Request-Id": "too-late"}, timeout=60)  # fmt: skip
    assert resp.status_code == 499
    assert worker_stats(diffusers_worker)["steps"] == before
    bad = httpx.post(diffusers_worker.base_url + "/cancel", json={"request_id": 3}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "request_id"
