"""Contract tests of the vLLM stand-in (contracts.md §1): real processes on free loopback ports."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from standins.launch import (
    Running,
    connection_refused,
    fake_gpu_usage,
    free_port,
    ignored_signals,
    kill_group,
    parent_pid,
    pid_alive,
    process_group,
    start,
    vllm_argv,
    wait_ready,
    wait_until,
)

MODEL = "/models/Qwen2.5-0.5B-Instruct"
GIB = 1 << 30
FOOTPRINT = 10 * GIB


def launch(tmp: Path, *flags: str, env: dict[str, str | None] | None = None, ready: bool = True) -> Running:
    port = free_port()
    gpu_dir = tmp / "gpu"
    gpu_dir.mkdir(exist_ok=True)
    base_env: dict[str, str | None] = {
        "APPLIANCE_FAKE_GPU_DIR": str(gpu_dir),
        "VLLM_STANDIN_FOOTPRINT_BYTES": str(FOOTPRINT),
        "VLLM_SERVER_DEV_MODE": None,
        "VLLM_API_KEY": None,
    }
    server = start(
        vllm_argv(MODEL, port, *flags), env={**base_env, **(env or {})}, port=port, log_path=tmp / f"vllm-{port}.log"
    )
    if ready:
        try:
            wait_ready(server.url("/health"), proc=server)
        except BaseException:
            server.stop()
            raise
    return server


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A plain server shared by the tests that do not change engine state."""
    server = launch(
        tmp_path_factory.mktemp("vllm"), "--served-model-name", "qwen", "qwen-alias", "--max-model-len", "64"
    )
    yield server
    server.stop()


@pytest.fixture
def dev_env() -> dict[str, str | None]:
    return {"VLLM_SERVER_DEV_MODE": "1"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


async def sse_events(response: aiohttp.ClientResponse) -> list[str]:
    """The ``data:`` payloads of an SSE body, checking the ``data: ...\\n\\n`` framing."""
    text = (await response.read()).decode()
    assert text.endswith("\n\n")
    events = text.split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events), events
    return [e[len("data: ") :] for e in events]


def chat_body(content: str = "the quick brown fox", **extra: object) -> dict[str, object]:
    return {"model": "qwen", "messages": [{"role": "user", "content": content}], **extra}


def used_bytes(server: Running, tmp: Path) -> int:
    entry = fake_gpu_usage(tmp / "gpu").get(server.pid)
    return -1 if entry is None else entry.used_bytes


@pytest.mark.parametrize(
    ("flags", "code"),
    [
        (["--no-such-flag"], 2),
        (["--disable-log-requests"], 2),  # removed upstream: an adapter passing it must fail loudly
        (["--kv-transfer-config", "{not json"], 2),
        (["--gpu-memory-utilization", "1.5"], 2),
        (["--enable-auto-tool-choice"], 1),  # needs --tool-call-parser (validate_parsed_serve_args)
    ],
)
def test_bad_command_lines_exit_like_vllm(flags: list[str], code: int) -> None:
    result = subprocess.run(vllm_argv(MODEL, free_port(), *flags), capture_output=True, timeout=30)
    assert result.returncode == code
    if code == 2:
        assert b"usage: vllm" in result.stderr and b"error:" in result.stderr


def test_accepts_the_flags_a_supervisor_passes(tmp_path: Path) -> None:
    flags = [
        "--served-model-name",
        "a",
        "b",
        "--api-key",
        "k",
        "--gpu-memory-utilization",
        "0.5",
        "--max-model-len",
        "2K",
        "--enable-sleep-mode",
        "--kv-transfer-config",
        '{"kv_connector":"LMCacheConnectorV1","kv_role":"kv_both"}',
        "-q",
        "fp8",
        "--dtype",
        "bfloat16",
        "--enforce-eager",
        "--enable-prefix-caching",
        "--max-num-seqs",
        "8",
        "--disable-log-stats",
        "--uvicorn-log-level",
        "warning",
        "--disable-uvicorn-access-log",
        "--no-enable-log-requests",
        "--tensor-parallel-size",
        "1",
        "--kv-cache-dtype",
        "fp8",
        "--chat-template",
        "x.jinja",
        "--tool-call-parser",
        "hermes",
        "--enable-auto-tool-choice",
        "--root-path",
        "/x",
        "--disable-fastapi-docs",
        "--enable-request-id-headers",
        "--trust-remote-code",
        "--generation-config",
        "vllm",
        "--seed",
        "1",
    ]
    with launch(tmp_path, *flags) as server:
        request = urllib.request.Request(server.url("/v1/models"), headers={"Authorization": "Bearer k"})
        with urllib.request.urlopen(request, timeout=5) as response:
            cards = json.load(response)["data"]
        assert [c["id"] for c in cards] == ["a", "b"]
        assert cards[0]["max_model_len"] == 2048


def test_port_is_bound_but_refuses_connections_until_ready(tmp_path: Path) -> None:
    ready_file = tmp_path / "ready"
    with launch(tmp_path, env={"VLLM_STANDIN_READY_FILE": str(ready_file)}, ready=False) as server:
        # Memory is taken while loading: the file appears before the port answers.
        wait_until(lambda: used_bytes(server, tmp_path) == FOOTPRINT, message="loading memory")
        assert server.port is not None
        assert connection_refused("127.0.0.1", server.port)
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", server.port))  # bound early, as vLLM does against races
        ready_file.touch()
        wait_ready(server.url("/health"), proc=server)
        assert f"Starting vLLM server on http://127.0.0.1:{server.port}" in server.log()


async def test_plain_routes(vllm: Running, http: aiohttp.ClientSession) -> None:
    for method, path in (("GET", "/health"), ("GET", "/ping"), ("POST", "/ping")):
        async with http.request(method, vllm.url(path)) as r:
            assert r.status == 200
            assert await r.read() == b""
    async with http.get(vllm.url("/version")) as r:
        assert isinstance((await r.json())["version"], str)
    async with http.get(vllm.url("/load")) as r:
        assert (await r.json()) == {"server_load": 0}
    async with http.get(vllm.url("/v1/models")) as r:
        models = await r.json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["qwen", "qwen-alias"]
    card = models["data"][0]
    assert (card["object"], card["owned_by"], card["root"], card["max_model_len"]) == ("model", "vllm", MODEL, 64)
    assert card["permission"][0]["object"] == "model_permission"


async def test_chat_completion_is_deterministic_with_usage(vllm: Running, http: aiohttp.ClientSession) -> None:
    async with http.post(vllm.url("/v1/chat/completions"), json=chat_body(max_tokens=6)) as r:
        assert r.status == 200
        body = await r.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "the quick brown fox the quick"
    assert choice["finish_reason"] == "length"
    assert body["usage"] == {
        "prompt_tokens": 4,
        "completion_tokens": 6,
        "total_tokens": 10,
        "prompt_tokens_details": None,
    }
    async with http.post(vllm.url("/v1/chat/completions"), json=chat_body()) as r:
        default = await r.json()
    assert default["usage"]["completion_tokens"] == 16  # max_tokens defaults to 16
    async with http.post(vllm.url("/v1/chat/completions"), json=chat_body(stop=["brown"], max_tokens=9)) as r:
        stopped = (await r.json())["choices"][0]
    assert (stopped["message"]["content"], stopped["finish_reason"], stopped["stop_reason"]) == (
        "the quick",
        "stop",
        "brown",
    )


async def test_chat_stream_chunks_usage_and_done(vllm: Running, http: aiohttp.ClientSession) -> None:
    body = chat_body(max_tokens=5, stream=True, stream_options={"include_usage": True})
    async with http.post(vllm.url("/v1/chat/completions"), json=body) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        events = await sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content_chunks = chunks[1:-1]
    assert "".join(c["choices"][0]["delta"]["content"] for c in content_chunks) == "the quick brown fox the"
    assert [c["choices"][0]["finish_reason"] for c in content_chunks] == [None] * 4 + ["length"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 5
    assert chunks[-1]["usage"]["prompt_tokens"] == 4
    assert all("usage" not in c for c in chunks[:-1])


async def test_continue_final_message_goes_on_where_the_message_stopped(
    vllm: Running, http: aiohttp.ClientSession
) -> None:
    whole_body = chat_body(max_tokens=7)
    async with http.post(vllm.url("/v1/chat/completions"), json=whole_body) as r:
        whole = (await r.json())["choices"][0]["message"]["content"]
    assert whole == "the quick brown fox the quick brown"
    cont = chat_body(max_tokens=4)
    cont["messages"] = [*cont["messages"], {"role": "assistant", "content": "the quick brown"}]
    cont.update(continue_final_message=True, add_generation_prompt=False)
    async with http.post(vllm.url("/v1/chat/completions"), json=cont) as r:
        assert r.status == 200
        rest = (await r.json())["choices"][0]["message"]["content"]
    assert "the quick brown" + rest == whole  # the continuation brings its own leading space
    both = {**cont, "add_generation_prompt": True}
    async with http.post(vllm.url("/v1/chat/completions"), json=both) as r:
        assert r.status == 400
        err = (await r.json())["error"]
    assert "Cannot set both `continue_final_message` and `add_generation_prompt` to True." in err["message"]


async def test_completions_plain_and_streamed(vllm: Running, http: aiohttp.ClientSession) -> None:
    body = {"model": "qwen-alias", "prompt": "one two three", "max_tokens": 4}
    async with http.post(vllm.url("/v1/completions"), json=body) as r:
        plain = await r.json()
    assert plain["object"] == "text_completion"
    assert plain["model"] == "qwen-alias"
    assert plain["choices"][0]["text"] == " one two three one"  # the first word carries its space
    async with http.post(vllm.url("/v1/completions"), json={**body, "stream": True}) as r:
        events = await sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert "".join(c["choices"][0]["text"] for c in chunks) == " one two three one"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_a_completion_continued_from_its_own_text_goes_on_as_the_whole_run(
    vllm: Running, http: aiohttp.ClientSession
) -> None:
    """What the gateway relies on to resume a preempted completion: prompt + text so far, as a new
    prompt, yields the rest of the uninterrupted output (repeated words included)."""
    prompt = "a b a c a d"

    async def complete(text: str, n: int) -> str:
        async with http.post(vllm.url("/v1/completions"), json={"prompt": text, "max_tokens": n}) as r:
            return str((await r.json())["choices"][0]["text"])

    whole = await complete(prompt, 9)
    head = await complete(prompt, 4)
    assert whole.startswith(head) and len(whole.split()) == 9
    assert head + await complete(prompt + head, 5) == whole


@pytest.mark.parametrize(
    ("path", "payload", "status", "err_type"),
    [
        ("/v1/chat/completions", chat_body(model="nope"), 404, "NotFoundError"),
        ("/v1/completions", {"model": "nope", "prompt": "x"}, 404, "NotFoundError"),
        ("/v1/chat/completions", b"{not json", 400, "BadRequestError"),
        ("/v1/chat/completions", chat_body(max_tokens="many"), 400, "BadRequestError"),
        ("/v1/chat/completions", {"model": "qwen", "messages": "hi"}, 400, "BadRequestError"),
        ("/v1/chat/completions", chat_body(stream_options={"include_usage": True}), 400, "BadRequestError"),
        ("/v1/completions", {"model": "qwen", "prompt": 7}, 400, "BadRequestError"),
        ("/v1/chat/completions", chat_body(max_tokens=100), 400, "BadRequestError"),  # exceeds max_model_len 64
    ],
)
async def test_error_envelopes(
    vllm: Running, http: aiohttp.ClientSession, path: str, payload: object, status: int, err_type: str
) -> None:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    async with http.post(vllm.url(path), data=data, headers={"Content-Type": "application/json"}) as r:
        assert r.status == status
        body = await r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == err_type
    assert body["error"]["code"] == status
    assert isinstance(body["error"]["code"], int)


async def test_unknown_fields_are_accepted_and_embeddings_route_is_absent(
    vllm: Running, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        vllm.url("/v1/chat/completions"), json=chat_body(max_tokens=2, surprise={"nested": True}, top_k=5)
    ) as r:
        assert r.status == 200
    async with http.post(vllm.url("/v1/embeddings"), json={"model": "qwen", "input": "x"}) as r:
        assert r.status == 404


async def test_tokenize_detokenize_round_trip(vllm: Running, http: aiohttp.ClientSession) -> None:
    async with http.post(vllm.url("/tokenize"), json={"model": "qwen", "prompt": "hello big world"}) as r:
        tokens = await r.json()
    assert tokens["count"] == 3
    assert tokens["max_model_len"] == 64
    async with http.post(vllm.url("/detokenize"), json={"model": "qwen", "tokens": tokens["tokens"]}) as r:
        assert (await r.json()) == {"prompt": "hello big world"}


async def test_metrics_use_vllm_names_and_labels(vllm: Running, http: aiohttp.ClientSession) -> None:
    async with http.post(vllm.url("/v1/completions"), json={"model": "qwen", "prompt": "a b c", "max_tokens": 3}):
        pass
    async with http.get(vllm.url("/metrics")) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await r.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:engine_sleep_state",
        "vllm:prompt_tokens",
        "vllm:generation_tokens",
        "vllm:request_success",
        "vllm:prefix_cache_queries",
        "vllm:prefix_cache_hits",
        "vllm:time_to_first_token_seconds",
        "vllm:inter_token_latency_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:request_queue_time_seconds",
        "vllm:request_prompt_tokens",
        "vllm:request_generation_tokens",
    ):
        assert name in families, name
    for sample in families["vllm:num_requests_running"].samples:
        assert sample.labels == {"engine": "0", "model_name": "qwen"}
    sleep = {s.labels["sleep_state"]: s.value for s in families["vllm:engine_sleep_state"].samples}
    assert sleep == {"awake": 1.0, "weights_offloaded": 0.0, "discard_all": 0.0}
    assert families["vllm:prompt_tokens"].type == "counter"
    assert families["vllm:generation_tokens"].samples[0].name == "vllm:generation_tokens_total"
    assert families["vllm:generation_tokens"].samples[0].value >= 3
    assert families["vllm:e2e_request_latency_seconds"].type == "histogram"


def test_generation_tokens_counter_moves_while_a_request_runs() -> None:
    """vLLM's logger adds each engine step's generated tokens to `vllm:generation_tokens_total`, so
    a scraper (or a test waiting for a request to be under way) sees it rise before the request ends."""
    from standins.vllm_metrics import Metrics

    def counted(m: Metrics, generating: int) -> float:
        text = m.render(running=1, waiting=0, kv_usage=0.0, sleep_level=None, generating=generating).decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        return families["vllm:generation_tokens"].samples[0].value

    m = Metrics("qwen")
    assert counted(m, 0) == 0 and counted(m, 5) == 5
    m.finished(prompt_tokens=2, generation_tokens=7, reasons=["length"], queue_s=0.0, ttft_s=0.1, e2e_s=1.0)
    assert counted(m, 0) == 7 and counted(m, 3) == 10


async def test_api_key_guards_only_v1_and_sleep_routes_need_dev_mode(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    with launch(tmp_path, "--enable-sleep-mode", env={"VLLM_API_KEY": "sekret"}) as server:
        async with http.get(server.url("/v1/models")) as r:
            assert r.status == 401
            assert (await r.json()) == {"error": "Unauthorized"}
        async with http.get(server.url("/v1/models"), headers={"Authorization": "Bearer sekret"}) as r:
            assert r.status == 200
        for path in ("/health", "/metrics", "/version", "/ping"):
            async with http.get(server.url(path)) as r:
                assert r.status == 200, path
        for method, path in (
            ("POST", "/sleep?level=1"),
            ("POST", "/wake_up"),
            ("GET", "/is_sleeping"),
            ("POST", "/collective_rpc"),
        ):
            async with http.request(method, server.url(path)) as r:
                assert r.status == 404, path


async def test_sleep_without_enable_sleep_mode_is_an_error(
    tmp_path: Path, http: aiohttp.ClientSession, dev_env: dict[str, str | None]
) -> None:
    with launch(tmp_path, env=dev_env) as server:
        async with http.post(server.url("/sleep?level=1")) as r:
            assert r.status == 500
            assert (await r.json())["error"]["type"] == "InternalServerError"
        assert used_bytes(server, tmp_path) == FOOTPRINT


async def test_sleep_level_1_offloads_and_wakes(
    tmp_path: Path, http: aiohttp.ClientSession, dev_env: dict[str, str | None]
) -> None:
    with launch(tmp_path, "--enable-sleep-mode", env=dev_env) as server:
        assert used_bytes(server, tmp_path) == FOOTPRINT
        async with http.get(server.url("/is_sleeping")) as r:
            assert (await r.json()) == {"is_sleeping": False}
        async with http.post(server.url("/sleep?level=1")) as r:
            assert r.status == 200
            assert await r.read() == b""
        residual = used_bytes(server, tmp_path)
        assert 0 < residual <= FOOTPRINT // 10  # the CUDA context stays
        async with http.get(server.url("/is_sleeping")) as r:
            assert (await r.json()) == {"is_sleeping": True}
        async with http.get(server.url("/health")) as r:
            assert r.status == 200
        async with http.post(server.url("/v1/chat/completions"), json=chat_body(model=MODEL)) as r:
            assert r.status == 503
            assert (await r.json())["error"]["code"] == 503
        async with http.get(server.url("/metrics")) as r:
            text = await r.text()
        assert 'sleep_state="weights_offloaded"} 1.0' in text
        async with http.post(server.url("/wake_up?tags=kv_cache")) as r:
            assert r.status == 200
        async with http.get(server.url("/is_sleeping")) as r:
            assert (await r.json()) == {"is_sleeping": True}  # weights are still asleep
        assert residual < used_bytes(server, tmp_path) < FOOTPRINT
        async with http.post(server.url("/wake_up")) as r:
            assert r.status == 200
        async with http.get(server.url("/is_sleeping")) as r:
            assert (await r.json()) == {"is_sleeping": False}
        assert used_bytes(server, tmp_path) == FOOTPRINT
        async with http.post(server.url("/v1/chat/completions"), json=chat_body(model=MODEL, max_tokens=2)) as r:
            assert r.status == 200  # level 1 needs no reload


async def test_sleep_level_2_requires_reload_weights(
    tmp_path: Path, http: aiohttp.ClientSession, dev_env: dict[str, str | None]
) -> None:
    with launch(tmp_path, "--enable-sleep-mode", env=dev_env) as server:
        async with http.post(server.url("/sleep?level=2")) as r:
            assert r.status == 200
        assert used_bytes(server, tmp_path) < FOOTPRINT // 10
        async with http.get(server.url("/metrics")) as r:
            assert 'sleep_state="discard_all"} 1.0' in await r.text()
        async with http.post(server.url("/wake_up")) as r:
            assert r.status == 200
        assert used_bytes(server, tmp_path) == FOOTPRINT
        async with http.post(server.url("/v1/completions"), json={"prompt": "a b", "max_tokens": 2}) as r:
            assert r.status == 500
            assert "reload_weights" in (await r.json())["error"]["message"]
        async with http.post(server.url("/collective_rpc"), json={"method": "reload_weights"}) as r:
            assert r.status == 200
            assert (await r.json()) == {"results": [None]}
        async with http.post(server.url("/reset_prefix_cache")) as r:
            assert r.status == 200
        async with http.post(server.url("/v1/completions"), json={"prompt": "a b", "max_tokens": 2}) as r:
            assert r.status == 200
            assert (await r.json())["choices"][0]["text"] == " a b"


async def test_sleep_aborts_an_inflight_stream(
    tmp_path: Path, http: aiohttp.ClientSession, dev_env: dict[str, str | None]
) -> None:
    env = {**dev_env, "VLLM_STANDIN_TOKENS_PER_S": "30"}
    with launch(tmp_path, "--enable-sleep-mode", env=env) as server:
        body = {"prompt": "x y", "max_tokens": 3000, "stream": True, "stream_options": {"include_usage": True}}
        async with http.post(server.url("/v1/completions"), json=body) as stream:
            first = await stream.content.readuntil(b"\n\n")
            assert first.startswith(b"data: {")
            async with http.post(server.url("/sleep?level=1")) as r:
                assert r.status == 200
            events = [first.decode()[len("data: ") : -2], *await sse_events(stream)]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "abort"
    assert chunks[-1]["usage"]["completion_tokens"] < 3000


async def test_crash_after_n_drops_the_stream_mid_way(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    with launch(tmp_path, env={"VLLM_STANDIN_CRASH_AFTER": "2"}) as server:
        async with http.post(server.url("/v1/chat/completions"), json=chat_body(model=MODEL, max_tokens=2)) as r:
            assert r.status == 200
        received = b""
        with pytest.raises(aiohttp.ClientError):
            async with http.post(
                server.url("/v1/chat/completions"), json=chat_body(model=MODEL, max_tokens=8, stream=True)
            ) as r:
                assert r.status == 200
                async for chunk in r.content.iter_any():
                    received += chunk
        assert received.startswith(b"data: ")
        assert b"[DONE]" not in received
        assert server.proc.wait(timeout=10) == 1


async def test_hang_accepts_but_never_answers_and_ignores_sigterm(tmp_path: Path) -> None:
    server = launch(tmp_path, env={"VLLM_STANDIN_HANG": "1"}, ready=False)
    with server:
        assert server.port is not None
        wait_until(lambda: not connection_refused("127.0.0.1", server.port or 0), message="listening")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as http:
            with pytest.raises(TimeoutError):
                async with http.get(server.url("/health")):
                    pass
        assert signal.SIGTERM in ignored_signals(server.pid)
        kill_group(server.proc, signal.SIGTERM)
        assert server.proc.poll() is None
    assert server.proc.returncode == -signal.SIGKILL


async def test_engine_core_grandchild_holds_memory_until_the_group_dies(
    tmp_path: Path, http: aiohttp.ClientSession, dev_env: dict[str, str | None]
) -> None:
    env = {**dev_env, "VLLM_STANDIN_ENGINE_CORE": "1", "VLLM_STANDIN_ORPHAN_LINGER_S": "-1"}
    server = launch(tmp_path, "--enable-sleep-mode", env=env)
    with server:
        usage = wait_until(lambda: fake_gpu_usage(tmp_path / "gpu"), message="engine core memory")
        assert server.pid not in usage  # the API server holds no GPU memory, as in vLLM V1
        (core,) = usage.values()
        assert core.used_bytes == FOOTPRINT
        assert parent_pid(core.pid) == server.pid
        assert process_group(core.pid) == server.pid
        assert signal.SIGTERM in ignored_signals(core.pid)
        async with http.post(server.url("/sleep?level=1")) as r:
            assert r.status == 200
        wait_until(
            lambda: fake_gpu_usage(tmp_path / "gpu")[core.pid].used_bytes < FOOTPRINT // 10,
            message="engine core releases memory on sleep",
        )
        server.proc.kill()  # the API server alone: an orphaned EngineCore keeps its memory
        server.proc.wait(timeout=10)
        assert pid_alive(core.pid)
        assert core.pid in fake_gpu_usage(tmp_path / "gpu")
    # Leaving the block killed the whole group.
    wait_until(lambda: not pid_alive(core.pid), message="engine core killed with the group")
    assert fake_gpu_usage(tmp_path / "gpu") == {}
