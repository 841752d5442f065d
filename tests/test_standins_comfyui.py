"""Contract tests of the ComfyUI stand-in (contracts.md §3): real processes on free loopback ports."""

from __future__ import annotations

import copy
import json
import re
import struct
import subprocess
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from standins.launch import (
    Running,
    async_wait_until,
    comfyui_argv,
    connection_refused,
    fake_gpu_usage,
    free_port,
    start,
    wait_ready,
    wait_until,
)

GIB = 1 << 30
FOOTPRINT = 8 * GIB
FAIL_TEXT = "EXPLODE"
WORKFLOW: dict[str, Any] = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "model.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 2}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
    "3": {
        "class_type": "KSampler",
        "inputs": {
            "seed": 1,
            "steps": 4,
            "cfg": 7,
            "sampler_name": "euler",
            "scheduler": "normal",
            "denoise": 1,
            "model": ["4", 0],
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": ["5", 0],
        },
    },
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
}
SD35_TURBO: dict[str, Any] = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd3.5_large_turbo.safetensors"}},
    "11": {
        "class_type": "TripleCLIPLoader",
        "inputs": {
            "clip_name1": "clip_l.safetensors",
            "clip_name2": "clip_g.safetensors",
            "clip_name3": "t5xxl_fp8_e4m3fn_scaled.safetensors",
        },
    },
    "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 32, "height": 64, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a dog", "clip": ["11", 0]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["11", 0]}},
    "3": {
        "class_type": "KSampler",
        "inputs": {
            "seed": 7,
            "steps": 4,
            "cfg": 1.2,
            "sampler_name": "euler",
            "scheduler": "simple",
            "denoise": 1,
            "model": ["4", 0],
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": ["5", 0],
        },
    },
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "sd35/turbo", "images": ["8", 0]}},
}


def workflow(**changes: Any) -> dict[str, Any]:
    """WORKFLOW with some node inputs replaced: workflow(**{"5": {"width": 8}})."""
    graph = copy.deepcopy(WORKFLOW)
    for node_id, inputs in changes.items():
        graph[node_id]["inputs"].update(inputs)
    return graph


def launch(tmp: Path, *flags: str, env: dict[str, str] | None = None, ready: bool = True) -> Running:
    port = free_port()
    for name in ("gpu", "out", "in", "temp"):
        (tmp / name).mkdir(exist_ok=True)
    base_env: dict[str, str | None] = {
        "APPLIANCE_FAKE_GPU_DIR": str(tmp / "gpu"),
        "COMFYUI_STANDIN_FOOTPRINT_BYTES": str(FOOTPRINT),
        "COMFYUI_STANDIN_IMAGE_S": "0.02",
        "COMFYUI_STANDIN_FREE_DELAY_S": "0",
    }
    argv = comfyui_argv(port, tmp / "out", tmp / "in", "--temp-directory", str(tmp / "temp"), *flags)
    server = start(argv, env={**base_env, **(env or {})}, port=port, log_path=tmp / f"comfy-{port}.log")
    if ready:
        try:
            wait_ready(server.url("/system_stats"), proc=server)
        except BaseException:
            server.stop()
            raise
    return server


def used_bytes(server: Running, tmp: Path) -> int:
    entry = fake_gpu_usage(tmp / "gpu").get(server.pid)
    return -1 if entry is None else entry.used_bytes


def png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """Decode an 8-bit RGB, non-interlaced PNG independently of the stand-in's writer."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(kind + body)
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", header[:10])
    assert (depth, color) == (8, 2)
    raw = zlib.decompress(idat)
    assert len(raw) == height * (1 + 3 * width)
    return width, height, raw


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("comfy")


@pytest.fixture(scope="module")
def comfy(module_tmp: Path) -> Iterator[Running]:
    server = launch(
        module_tmp,
        "--disable-all-custom-nodes",
        "--preview-method",
        "auto",
        env={"COMFYUI_STANDIN_FAIL_TEXT": FAIL_TEXT},
    )
    yield server
    server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


async def next_message(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=15)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    data: dict[str, Any] = json.loads(msg.data)
    return data


async def run_prompt(
    http: aiohttp.ClientSession, server: Running, graph: dict[str, Any], client_id: str
) -> tuple[str, list[dict[str, Any]]]:
    """Submit ``graph`` for a connected ``client_id``; return its messages up to the final executing."""
    async with http.ws_connect(server.url(f"/ws?clientId={client_id}")) as ws:
        first = await next_message(ws)
        assert first["type"] == "status"
        assert first["data"]["sid"] == client_id
        async with http.post(server.url("/prompt"), json={"prompt": graph, "client_id": client_id}) as r:
            assert r.status == 200, await r.text()
            prompt_id = str((await r.json())["prompt_id"])
        messages: list[dict[str, Any]] = []
        while True:
            message = await next_message(ws)
            messages.append(message)
            data = message["data"]
            if message["type"] == "executing" and data["node"] is None and data["prompt_id"] == prompt_id:
                return prompt_id, messages


async def history(http: aiohttp.ClientSession, server: Running, prompt_id: str) -> dict[str, Any]:
    async with http.get(server.url(f"/history/{prompt_id}")) as r:
        assert r.status == 200
        body: dict[str, Any] = await r.json()
        return body


def test_unknown_flag_exits_2() -> None:
    result = subprocess.run(
        comfyui_argv(free_port(), "/nonexistent/out", "/nonexistent/in", "--bogus"), capture_output=True, timeout=30
    )
    assert result.returncode == 2
    assert b"unrecognized arguments: --bogus" in result.stderr


def test_nothing_listens_until_ready(tmp_path: Path) -> None:
    ready_file = tmp_path / "ready"
    with launch(tmp_path, env={"COMFYUI_STANDIN_READY_FILE": str(ready_file)}, ready=False) as server:
        wait_until(lambda: used_bytes(server, tmp_path) > 0, message="CUDA context at startup")
        assert server.port is not None
        assert connection_refused("127.0.0.1", server.port)
        ready_file.touch()
        wait_ready(server.url("/system_stats"), proc=server)
        assert f"To see the GUI go to: http://127.0.0.1:{server.port}" in server.log()


@pytest.mark.parametrize("prefix", ["", "/api"])
@pytest.mark.parametrize(
    ("body", "error_type", "node_error"),
    [
        ({}, "no_prompt", None),
        ({"prompt": {"1": {"class_type": "NoSuchNode", "inputs": {}}}}, "missing_node_type", None),
        ({"prompt": {"1": {"inputs": {}}}}, "missing_node_type", None),
        ({"prompt": {k: v for k, v in WORKFLOW.items() if k != "9"}}, "prompt_no_outputs", None),
        (
            {"prompt": workflow(**{"4": {"ckpt_name": "nope.safetensors"}})},
            "prompt_outputs_failed_validation",
            ("4", "value_not_in_list"),
        ),
        (
            {
                "prompt": {
                    **SD35_TURBO,
                    "11": {
                        "class_type": "TripleCLIPLoader",
                        "inputs": {
                            "clip_name1": "clip_l.safetensors",
                            "clip_name2": "missing.safetensors",
                            "clip_name3": "t5xxl_fp8_e4m3fn_scaled.safetensors",
                        },
                    },
                }
            },
            "prompt_outputs_failed_validation",
            ("11", "value_not_in_list"),
        ),
        (
            {"prompt": workflow(**{"3": {"steps": 0}})},
            "prompt_outputs_failed_validation",
            ("3", "value_smaller_than_min"),
        ),
        (
            {"prompt": workflow(**{"3": {"cfg": 101}})},
            "prompt_outputs_failed_validation",
            ("3", "value_bigger_than_max"),
        ),
        (
            {"prompt": workflow(**{"5": {"width": 8}})},
            "prompt_outputs_failed_validation",
            ("5", "value_smaller_than_min"),
        ),
        (
            {"prompt": workflow(**{"5": {"height": 20000}})},
            "prompt_outputs_failed_validation",
            ("5", "value_bigger_than_max"),
        ),
        (
            {"prompt": workflow(**{"5": {"height": "tall"}})},
            "prompt_outputs_failed_validation",
            ("5", "invalid_input_type"),
        ),
        (
            {"prompt": workflow(**{"8": {"samples": ["3"]}})},
            "prompt_outputs_failed_validation",
            ("8", "bad_linked_input"),
        ),
        (
            {"prompt": {**WORKFLOW, "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0]}}}},
            "prompt_outputs_failed_validation",
            ("9", "required_input_missing"),
        ),
        ({"prompt": WORKFLOW, "prompt_id": "NOT-A-UUID"}, "invalid_prompt_id", None),
        ({"prompt": WORKFLOW, "prompt_id": str(uuid.uuid4()).upper()}, "invalid_prompt_id", None),
    ],
)
async def test_prompt_validation_errors(
    comfy: Running,
    http: aiohttp.ClientSession,
    prefix: str,
    body: dict[str, Any],
    error_type: str,
    node_error: tuple[str, str] | None,
) -> None:
    async with http.post(comfy.url(prefix + "/prompt"), json=body) as r:
        assert r.status == 400
        reply = await r.json()
    assert set(reply) == {"error", "node_errors"}
    assert reply["error"]["type"] == error_type
    assert set(reply["error"]) == {"type", "message", "details", "extra_info"}
    if node_error is None:
        assert reply["node_errors"] == {}
    else:
        node_id, kind = node_error
        entry = reply["node_errors"][node_id]
        assert kind in [e["type"] for e in entry["errors"]]
        assert entry["dependent_outputs"] == ["9"]
        assert entry["class_type"] == body["prompt"][node_id]["class_type"]


async def test_value_not_in_list_names_the_installed_files(comfy: Running, http: aiohttp.ClientSession) -> None:
    async with http.post(comfy.url("/prompt"), json={"prompt": workflow(**{"4": {"ckpt_name": "x.ckpt"}})}) as r:
        error = (await r.json())["node_errors"]["4"]["errors"][0]
    assert error["details"].startswith("ckpt_name: 'x.ckpt' not in [")
    assert "sd3.5_large_turbo.safetensors" in error["details"]
    async with http.get(comfy.url("/models/checkpoints")) as r:
        assert "sd3.5_large_fp8_scaled.safetensors" in await r.json()
    async with http.get(comfy.url("/models/text_encoders")) as r:
        assert {"clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp8_e4m3fn_scaled.safetensors"} <= set(
            await r.json()
        )
    async with http.get(comfy.url("/models/no_such_folder")) as r:
        assert r.status == 404


async def test_run_messages_history_and_images(comfy: Running, module_tmp: Path, http: aiohttp.ClientSession) -> None:
    async with http.ws_connect(comfy.url("/ws?clientId=bystander")) as other:
        assert (await next_message(other))["type"] == "status"
        prompt_id, messages = await run_prompt(http, comfy, workflow(**{"3": {"seed": 42}}), "owner")
        events = [m["type"] for m in messages if m["type"] != "status"]
        assert events[:2] == ["execution_start", "execution_cached"]
        assert events[-2:] == ["execution_success", "executing"]
        executing = [m["data"]["node"] for m in messages if m["type"] == "executing"]
        assert set(executing[:-1]) == set(WORKFLOW)
        assert executing.index("3") > executing.index("5") and executing[-2] == "9"
        progress = [m["data"] for m in messages if m["type"] == "progress"]
        assert [p["value"] for p in progress] == [1, 2, 3, 4]
        assert {p["max"] for p in progress} == {4} and {p["node"] for p in progress} == {"3"}
        (executed,) = [m["data"] for m in messages if m["type"] == "executed"]
        images = executed["output"]["images"]
        assert [i["filename"] for i in images] == ["ComfyUI_00001_.png", "ComfyUI_00002_.png"]
        assert all(m["data"]["prompt_id"] == prompt_id for m in messages if m["type"] != "status")
        # Messages for one client go nowhere else: the bystander's own prompt is a barrier, since
        # everything is published in order on one queue.
        async with http.post(comfy.url("/prompt"), json={"prompt": WORKFLOW, "client_id": "bystander"}) as r:
            barrier_id = (await r.json())["prompt_id"]
        seen = []
        while True:
            message = await next_message(other)
            seen.append(message)
            if message["type"] == "execution_start":
                assert message["data"]["prompt_id"] == barrier_id
                break
        assert {m["type"] for m in seen[:-1]} <= {"status"}

    entry = (await history(http, comfy, prompt_id))[prompt_id]
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert [m[0] for m in entry["status"]["messages"]] == [
        "execution_start",
        "execution_cached",
        "execution_success",
    ]
    assert entry["outputs"] == {"9": {"images": images}}
    _number, pid, graph, extra, outputs = entry["prompt"]
    assert (pid, extra, outputs) == (prompt_id, {"client_id": "owner"}, ["9"])
    assert graph["3"]["inputs"]["seed"] == 42
    assert entry["meta"]["9"]["node_id"] == "9"
    pixels = []
    for image in images:
        async with http.get(
            comfy.url("/view"), params={"filename": image["filename"], "subfolder": "", "type": "output"}
        ) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "image/png"
            data = await r.read()
        assert data == (module_tmp / "out" / image["filename"]).read_bytes()
        width, height, raw = png_pixels(data)
        assert (width, height) == (64, 48)
        pixels.append(raw)
    assert pixels[0] != pixels[1]  # batch members differ; the same seed gives the same pixels (below)


async def test_identical_prompt_is_served_from_cache(
    comfy: Running, module_tmp: Path, http: aiohttp.ClientSession
) -> None:
    graph = workflow(**{"3": {"seed": 9001}, "9": {"filename_prefix": "cached/pic"}})
    first_id, _ = await run_prompt(http, comfy, graph, "cache-client")
    files = sorted(p.name for p in (module_tmp / "out" / "cached").iterdir())
    assert files == ["pic_00001_.png", "pic_00002_.png"]
    second_id, messages = await run_prompt(http, comfy, graph, "cache-client")
    cached = next(m["data"]["nodes"] for m in messages if m["type"] == "execution_cached")
    assert set(cached) == set(graph)
    assert not [m for m in messages if m["type"] == "executing" and m["data"]["node"] is not None]
    assert sorted(p.name for p in (module_tmp / "out" / "cached").iterdir()) == files
    first = (await history(http, comfy, first_id))[first_id]["outputs"]
    second = (await history(http, comfy, second_id))[second_id]["outputs"]
    assert first == second


async def test_sd35_turbo_graph_with_triple_clip(comfy: Running, module_tmp: Path, http: aiohttp.ClientSession) -> None:
    prompt_id, _ = await run_prompt(http, comfy, SD35_TURBO, "sd35")
    entry = (await history(http, comfy, prompt_id))[prompt_id]
    (image,) = entry["outputs"]["9"]["images"]
    assert image == {"filename": "turbo_00001_.png", "subfolder": "sd35", "type": "output"}
    width, height, _ = png_pixels((module_tmp / "out" / "sd35" / "turbo_00001_.png").read_bytes())
    assert (width, height) == (32, 64)


@pytest.mark.parametrize(
    ("graph", "node_id", "needle"),
    [
        (workflow(**{"6": {"text": f"a {FAIL_TEXT} cat"}}), "3", FAIL_TEXT),
        # The turbo checkpoint has no text encoders: its CLIP output is None, as in ComfyUI.
        (workflow(**{"4": {"ckpt_name": "sd3.5_large_turbo.safetensors"}}), "6", "clip input is invalid"),
    ],
)
async def test_execution_error(
    comfy: Running, http: aiohttp.ClientSession, graph: dict[str, Any], node_id: str, needle: str
) -> None:
    prompt_id, messages = await run_prompt(http, comfy, graph, "failing")
    (error,) = [m["data"] for m in messages if m["type"] == "execution_error"]
    assert error["prompt_id"] == prompt_id and error["node_id"] == node_id
    assert needle in error["exception_message"]
    for key in ("node_type", "executed", "exception_type", "traceback", "current_inputs", "current_outputs"):
        assert key in error
    assert "execution_success" not in [m["type"] for m in messages]
    status = (await history(http, comfy, prompt_id))[prompt_id]["status"]
    assert status["status_str"] == "error" and status["completed"] is False
    assert status["messages"][-1][0] == "execution_error"


async def test_unknown_history_is_empty_object(comfy: Running, http: aiohttp.ClientSession) -> None:
    for path in (f"/history/{uuid.uuid4()}", f"/api/history/{uuid.uuid4()}"):
        async with http.get(comfy.url(path)) as r:
            assert r.status == 200
            assert await r.json() == {}


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"filename": "/etc/passwd"}, 400),
        ({"filename": "../secret.png"}, 400),
        ({"filename": "x.png", "type": "elsewhere"}, 400),
        ({"filename": "x.png", "subfolder": "../../etc"}, 403),
        ({"filename": "missing.png"}, 404),
        ({}, 404),
    ],
)
async def test_view_path_checks(
    comfy: Running, http: aiohttp.ClientSession, params: dict[str, str], status: int
) -> None:
    async with http.get(comfy.url("/view"), params=params) as r:
        assert r.status == status


async def test_introspection_routes(comfy: Running, http: aiohttp.ClientSession) -> None:
    async with http.get(comfy.url("/object_info")) as r:
        info = await r.json()
    for name in (
        "CheckpointLoaderSimple",
        "TripleCLIPLoader",
        "EmptyLatentImage",
        "EmptySD3LatentImage",
        "CLIPTextEncode",
        "KSampler",
        "VAEDecode",
        "SaveImage",
    ):
        assert info[name]["name"] == name
    assert info["SaveImage"]["output_node"] is True
    assert info["CheckpointLoaderSimple"]["output"] == ["MODEL", "CLIP", "VAE"]
    async with http.get(comfy.url("/api/object_info/KSampler")) as r:
        assert list(await r.json()) == ["KSampler"]
    async with http.get(comfy.url("/object_info/NoSuchNode")) as r:
        assert await r.json() == {}
    async with http.get(comfy.url("/system_stats")) as r:
        stats = await r.json()
    device = stats["devices"][0]
    assert device["type"] == "cuda" and device["vram_total"] == 24 * GIB
    assert 0 <= device["vram_free"] < device["vram_total"]
    assert {"os", "ram_total", "ram_free", "comfyui_version", "python_version", "argv"} <= set(stats["system"])
    async with http.get(comfy.url("/prompt")) as r:
        assert set((await r.json())["exec_info"]) == {"queue_remaining"}


async def test_free_returns_before_memory_drops(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    gate = tmp_path / "free-gate"
    with launch(tmp_path, env={"COMFYUI_STANDIN_FREE_GATE_FILE": str(gate)}) as server:
        idle = used_bytes(server, tmp_path)
        assert 0 < idle < FOOTPRINT  # the CUDA context; models load lazily
        await run_prompt(http, server, WORKFLOW, "free-client")
        assert used_bytes(server, tmp_path) == FOOTPRINT  # loaded on first use, kept after the prompt
        async with http.post(server.url("/free"), json={"unload_models": True, "free_memory": True}) as r:
            assert r.status == 200
            assert await r.read() == b""
        async with http.get(server.url("/queue")) as r:
            assert r.status == 200  # the server still answers while the unload is pending
        assert used_bytes(server, tmp_path) == FOOTPRINT  # a 200 from /free does not mean memory is free
        gate.touch()
        wait_until(lambda: used_bytes(server, tmp_path) == idle, message="memory released after /free")


async def test_queue_listing_delete_and_interrupt(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    with launch(tmp_path, env={"COMFYUI_STANDIN_IMAGE_S": "600"}) as server:
        extra = {"api_key_comfy_org": "secret", "note": "kept"}
        ids = []
        for seed in (1, 2):
            body = {"prompt": workflow(**{"3": {"seed": seed}}), "client_id": "q", "extra_data": dict(extra)}
            async with http.post(server.url("/prompt"), json=body) as r:
                ids.append((await r.json())["prompt_id"])

        async def queue() -> dict[str, Any]:
            async with http.get(server.url("/queue")) as r:
                body: dict[str, Any] = await r.json()
                return body

        async def running_listing() -> dict[str, Any] | None:
            listing = await queue()
            return listing if listing["queue_running"] else None

        listing = await async_wait_until(running_listing, message="first prompt running")
        (running,) = listing["queue_running"]
        (pending,) = listing["queue_pending"]
        assert [running[1], pending[1]] == ids
        assert len(running) == 5 and running[3] == {"note": "kept", "client_id": "q"} and running[4] == ["9"]
        async with http.get(server.url("/prompt")) as r:
            assert (await r.json())["exec_info"]["queue_remaining"] == 2
        async with http.post(server.url("/queue"), json={"delete": [ids[1]]}) as r:
            assert r.status == 200
        assert (await queue())["queue_pending"] == []
        async with http.post(server.url("/interrupt"), json={"prompt_id": ids[0]}) as r:
            assert r.status == 200
        entry = wait_until(lambda: server_history(server, ids[0]), message="interrupted prompt in history")
        assert entry["status"]["status_str"] == "error"
        assert entry["status"]["messages"][-1][0] == "execution_interrupted"
        assert "api_key_comfy_org" not in entry["prompt"][3]


def server_history(server: Running, prompt_id: str) -> dict[str, Any] | None:
    import urllib.request

    with urllib.request.urlopen(server.url(f"/history/{prompt_id}"), timeout=5) as response:
        body: dict[str, dict[str, Any]] = json.load(response)
    return body.get(prompt_id)


async def test_crash_after_n_prompts(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    with launch(tmp_path, env={"COMFYUI_STANDIN_CRASH_AFTER": "1"}) as server:
        async with http.post(server.url("/prompt"), json={"prompt": WORKFLOW}) as r:
            assert r.status == 200
        assert server.proc.wait(timeout=15) == 1
    assert "CRASH_AFTER" in server.log()


def test_the_standin_accepts_exactly_the_flags_the_contract_documents() -> None:
    """docs/contracts.md §3.1 lists ComfyUI's flags; the stand-in must know each of them and no other,
    or an adapter flag the real server would reject could pass the tests."""
    from standins.comfyui_args import build_parser

    doc = (Path(__file__).resolve().parent.parent / "docs" / "contracts.md").read_text()
    section = doc[doc.index("### 3.1 Command line"):doc.index("**Memory on a shared card.**")]
    documented = set(re.findall(r"`(--[a-z0-9_-]+)", section))
    known = {o for a in build_parser()._actions for o in a.option_strings if o.startswith("--")} - {"--help"}
    assert known == documented, (sorted(known - documented), sorted(documented - known))
