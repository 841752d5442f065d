"""The residency manager with real stand-in engines on a 24 GiB fake GPU: a 20 GiB vLLM, a 15 GiB
ComfyUI (they never fit together) and the appliance's speech worker declaring 2 GiB (it fits beside
either). Alternating requests must cause verified sleep/wake cycles; the worker stays resident
beside both; a request in flight is never evicted; a release that is not verified in time escalates
to a stop; a crash during a swap leaves the scheduler consistent; a bounded mixed burst completes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from daemon_harness import comfyui_engine, free_port, vllm_engine
from standins.launch import async_wait_until

from appliance.app import Appliance
from appliance.config import parse_config
from appliance.events import Event
from appliance.gpu import FakeGpuProbe
from appliance.store import open_store

GIB = 1 << 30
BUDGET = 24 * GIB
WORKER_BYTES = 2 * GIB
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

GRAPH = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "model.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
    "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 4, "cfg": 1.0, "sampler_name": "euler",
                                               "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                               "positive": ["6", 0], "negative": ["7", 0],
                                               "latent_image": ["5", 0]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "t", "images": ["8", 0]}},
}


async def until(pred: Callable[[], bool], what: str, limit_s: float = 20.0) -> None:
    """Poll `pred` with a deadline (events cross processes, so there is nothing to await)."""
    await async_wait_until(pred, deadline_s=limit_s, interval_s=0.01, message=what)


def fake_gpu_used(directory: Path) -> int:
    """What the daemon's own probe reads: live processes only (a SIGKILLed engine whose parent died
    stays a zombie where pid 1 does not reap, and holds no GPU memory)."""
    return FakeGpuProbe(directory, BUDGET).snapshot().used_bytes


class Rig:
    def __init__(self, app: Appliance, fake_dir: Path, doc: dict[str, Any]) -> None:
        self.app = app
        self.fake_dir = fake_dir
        self.doc = doc  # the configuration, to build the next daemon from
        self.actions: list[tuple[str, str]] = []
        self.peak = 0
        self._queue = app.bus.subscribe()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks.append(asyncio.ensure_future(self._collect()))
        self._tasks.append(asyncio.ensure_future(self._watch_memory()))

    async def _collect(self) -> None:
        while True:
            ev: Event = await self._queue.get()
            if ev.kind == "residency.action":
                self.actions.append((str(ev.data["action"]), ev.subject))

    async def _watch_memory(self) -> None:
        """A 100 Hz sampler of the fake GPU (a measurement, not a wait): an overlap of two engines'
        memory during a swap shows up in `peak`, which no event reports."""
        while True:
            self.peak = max(self.peak, fake_gpu_used(self.fake_dir))
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()

    async def chat(self, tokens: int = 4, stream: bool = False) -> str:
        async with self.app.residency.lease("chat") as lease, aiohttp.ClientSession() as s:
            body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": tokens,
                    "stream": stream}
            async with s.post(lease.endpoint + "/v1/chat/completions", json=body) as r:
                assert r.status == 200, await r.text()
                return await r.text()

    async def image(self, model: str = "img") -> None:
        async with self.app.residency.lease(model) as lease, aiohttp.ClientSession() as s:
            async with s.post(lease.endpoint + "/prompt", json={"prompt": GRAPH, "client_id": "t"}) as r:
                assert r.status == 200, await r.text()
                pid = (await r.json())["prompt_id"]

            async def finished() -> bool:
                async with s.get(f"{lease.endpoint}/history/{pid}") as r:
                    return pid in await r.json()

            await async_wait_until(finished, deadline_s=10.0, message="the image to finish")

    async def speech(self, text: str = "hello there") -> bytes:
        async with self.app.residency.lease("voice") as lease, aiohttp.ClientSession() as s:
            body = {"input": text, "voice": "alloy", "response_format": "wav"}
            async with s.post(lease.endpoint + "/v1/audio/speech", json=body) as r:
                assert r.status == 200, await r.text()
                return await r.read()

    def state(self, engine: str) -> str:
        return self.app.engines[engine].state.value


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, *, comfy_env: dict[str, str] | None = None,
              vllm_env: dict[str, str] | None = None, release_deadline_s: float = 10.0,
              chat_gib: int = 20, img_gib: int = 15, extra_models: dict[str, Any] | None = None,
              chat_config: dict[str, Any] | None = None, sample_interval_s: float = 0.2) -> AsyncIterator[Rig]:
    fake = tmp_path / "fakegpu"
    fake.mkdir()
    os.environ["APPLIANCE_FAKE_GPU_DIR"] = str(fake)
    doc: dict[str, Any] = {
        "server": {"state_dir": str(tmp_path / "state"), "load_deadline_s": 60.0},
        "gpu": {"probe": "fake", "fake_dir": str(fake), "declared_total_gb": 24, "reserve_gb": 1.5,
                "host_ram_budget_gb": 64, "sample_interval_s": sample_interval_s},
        "scheduler": {"max_wait_s": 2.0, "release_deadline_s": release_deadline_s},
        "engines": {
            "vllm": vllm_engine(free_port(), env={"VLLM_STANDIN_FOOTPRINT_BYTES": str(chat_gib * GIB),
                                                  **(vllm_env or {})}),
            "comfyui": comfyui_engine(free_port(), env={"COMFYUI_STANDIN_FOOTPRINT_BYTES": str(15 * GIB),
                                                        "COMFYUI_STANDIN_FREE_DELAY_S": "0.3",
                                                        **(comfy_env or {})}),
            # device "auto" on the fake GPU: scheduled as a GPU model, synthesising on the CPU
            "tts": {"kind": "worker", "worker": "speech", "model_path": "espeak:en-us", "device": "auto",
                    "port": free_port(), "ready_timeout_s": 60.0, "stop_grace_s": 2.0,
                    "env": {**OFFLINE, "APPLIANCE_FAKE_GPU_BYTES": str(WORKER_BYTES)}},
        },
        "models": {"chat": {"engine": "vllm", "modality": "text", "vram_gb": chat_gib, **(chat_config or {})},
                   "img": {"engine": "comfyui", "modality": "image", "vram_gb": img_gib},
                   "voice": {"engine": "tts", "modality": "speech", "vram_gb": 2}, **(extra_models or {})},
    }
    app = Appliance(parse_config(doc, "test"), host="127.0.0.1", port=free_port())
    await app.startup()
    r = Rig(app, fake, doc)
    r.start()
    try:
        yield r
    finally:
        await r.close()
        await app.shutdown()
        os.environ.pop("APPLIANCE_FAKE_GPU_DIR", None)


async def test_alternating_requests_sleep_and_wake_with_verified_releases(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.chat()
        await r.image()
        await r.chat()
        await r.image()
        assert r.actions[:4] == [("start", "chat"), ("sleep", "chat"), ("start", "img"), ("sleep", "img")]
        assert ("wake", "chat") in r.actions and ("wake", "img") in r.actions
        assert r.peak <= BUDGET, f"fake GPU peaked at {r.peak / GIB:.1f} GiB"
        # both engines stayed up: swaps were sleeps and wakes, never cold starts after the first
        assert r.state("vllm") == "ready" and r.state("comfyui") == "ready"
        assert r.app.engines["vllm"].process.restarts == 0


def released(r: Rig, model: str) -> list[tuple[str, str]]:
    return [a for a in r.actions if a[1] == model and a[0] in ("sleep", "unload", "stop")]


@pytest.mark.parametrize("comfy_residual", [0.02, 0.05])
async def test_small_worker_stays_resident_beside_either_engine(tmp_path: Path, comfy_residual: float) -> None:
    """2 GiB fits beside the 20 GiB vLLM and beside the 15 GiB ComfyUI (22.5 GiB budget), so speech
    between chats and images costs no swap of its own while chat and image still swap. A slept
    engine keeps its CUDA context: with ComfyUI's at 2 % of 15 GiB (0.3 GiB) the worker stays beside
    vLLM; at 5 % (0.75 GiB) 20 + 2 + 0.75 GiB exceeds the budget and the worker is slept instead."""
    async with rig(tmp_path, comfy_env={"COMFYUI_STANDIN_RESIDUAL_FRACTION": str(comfy_residual)}) as r:
        for step in (r.speech, r.chat, r.speech, r.image, r.speech, r.chat, r.speech):
            await step()
        assert r.actions.count(("start", "voice")) == 1
        assert ("sleep", "chat") in r.actions and ("wake", "chat") in r.actions
        assert ("sleep", "img") in r.actions
        assert r.peak <= BUDGET, f"fake GPU peaked at {r.peak / GIB:.1f} GiB"
        models = r.app.residency.snapshot()["models"]
        assert isinstance(models, dict)
        if comfy_residual < 0.05:
            assert released(r, "voice") == []
            assert models["voice"]["tier"] == "vram" and models["chat"]["tier"] == "vram"
            used = fake_gpu_used(r.fake_dir)
            assert 22 * GIB <= used <= BUDGET, f"vLLM and the worker should both hold memory: {used / GIB:.1f} GiB"
        else:
            # the second chat could not sit beside the worker and the slept ComfyUI's context
            chat_back = r.actions.index(("wake", "chat"))
            assert r.actions[chat_back - 1] == ("sleep", "voice")
            assert ("wake", "voice") in r.actions[chat_back:]


async def test_a_sleeping_engines_context_is_stopped_when_it_alone_is_in_the_way(tmp_path: Path) -> None:
    """A 22 GiB vLLM in a 22.5 GiB budget: slept, it keeps 1.1 GiB (5 %) and needs 20.9 GiB more to
    wake, but the slept ComfyUI still holds 0.75 GiB of context, so ComfyUI is stopped first and
    comes back with a cold start."""
    async with rig(tmp_path, chat_gib=22) as r:
        await r.chat()
        await r.image()
        await r.chat()
        wake = r.actions.index(("wake", "chat"))
        assert r.actions[wake - 2:wake] == [("sleep", "img"), ("stop", "img")]
        assert r.state("comfyui") == "stopped" and r.state("vllm") == "ready"
        await r.image()
        assert r.actions.count(("start", "img")) == 2
        assert r.peak <= BUDGET, f"fake GPU peaked at {r.peak / GIB:.1f} GiB"


async def test_vllm_weights_come_back_while_the_worker_still_works(tmp_path: Path) -> None:
    """A 21 GiB vLLM (16.8 GiB of weights, 80 %) cannot sit beside the 2 GiB worker, but its weights
    can: while a speech lease is in flight, a chat brings them back (/wake_up?tags=weights), and
    once the worker is slept only the KV cache is left to wake."""
    vllm_env = {"VLLM_STANDIN_WEIGHTS_FRACTION": "0.8"}
    async with rig(tmp_path, chat_gib=21, vllm_env=vllm_env, chat_config={"weights_gb": 16.8}) as r:
        await r.chat()
        async with r.app.residency.lease("voice"):
            chat = asyncio.ensure_future(r.chat())
            await async_wait_until(lambda: ("prefetch", "chat") in r.actions, deadline_s=10.0,
                                   message="the chat's weights to be prefetched")
            assert r.app.engines["tts"].state.value == "ready" and not chat.done()
            models = r.app.residency.snapshot()["models"]
            assert isinstance(models, dict)
            assert models["chat"]["prefetched_bytes"] == int(16.8 * GIB) and models["chat"]["tier"] == "host"
        await asyncio.wait_for(chat, 30.0)
        prefetch = r.actions.index(("prefetch", "chat"))
        assert r.actions[prefetch:] == [("prefetch", "chat"), ("sleep", "voice"), ("wake", "chat")]
        assert r.peak <= BUDGET, f"fake GPU peaked at {r.peak / GIB:.1f} GiB"
        assert r.app.engines["vllm"].process.restarts == 0 and r.state("vllm") == "ready"


async def test_a_prefetch_the_measured_free_memory_cannot_hold_is_declined(tmp_path: Path) -> None:
    """Another process takes 5 GiB of the card between two GPU samples, so the core still books the
    chat's 16.8 GiB of weights beside the worker. The residency manager measures the free memory
    before it wakes them, declines the prefetch and leaves vLLM asleep and whole (no out-of-memory
    half way, no stop and cold start); once that process is gone the chat wakes as usual."""
    vllm_env = {"VLLM_STANDIN_WEIGHTS_FRACTION": "0.8"}
    async with rig(tmp_path, chat_gib=21, vllm_env=vllm_env, chat_config={"weights_gb": 16.8},
                   sample_interval_s=120.0) as r:
        await r.chat()
        models = lambda: r.app.residency.snapshot()["models"]  # type: ignore[no-any-return]  # noqa: E731
        foreign = r.fake_dir / f"{os.getpid()}.json"
        async with r.app.residency.lease("voice"):  # the chat sleeps, the worker is in
            foreign.write_text(json.dumps({"pid": os.getpid(), "used_bytes": 5 * GIB, "name": "someone else"}))
            chat = asyncio.ensure_future(r.chat())
            await until(lambda: ("prefetch", "chat") in r.actions and models()["chat"]["phase"] == "steady",
                        "the prefetch to be issued and turned down")
            assert models()["chat"]["prefetched_bytes"] == 0 and models()["chat"]["tier"] == "host"
            async with aiohttp.ClientSession() as s, s.get(r.app.engines["vllm"].base_url + "/is_sleeping") as resp:
                assert (await resp.json())["is_sleeping"] is True
            foreign.unlink()  # that process ends while the worker still works
            assert not chat.done()
        await asyncio.wait_for(chat, 30.0)
        prefetch = r.actions.index(("prefetch", "chat"))
        assert r.actions[prefetch:] == [("prefetch", "chat"), ("sleep", "voice"), ("wake", "chat")]
        assert r.app.engines["vllm"].process.restarts == 0 and r.state("vllm") == "ready"
        assert r.peak <= BUDGET, f"fake GPU peaked at {r.peak / GIB:.1f} GiB"


async def test_transition_times_are_measured_shown_and_kept_for_the_next_start(tmp_path: Path) -> None:
    """Every start, wake and verified release is timed; the medians replace the estimates in the
    core's costs at once, show in the status, and are where the next daemon starts from."""
    async with rig(tmp_path) as r:
        await r.chat()
        await r.image()
        await r.chat()
        models = r.app.residency.snapshot()["models"]
        assert isinstance(models, dict)
        chat, img = models["chat"]["transitions_s"], models["img"]["transitions_s"]
        assert set(chat) == {"start", "release", "wake"}
        assert set(img) == {"release"}  # ComfyUI loads its checkpoint inside the first job: no start timed
        assert all(0 < s < 60 for s in [*chat.values(), *img.values()])
        assert chat["release"] < chat["start"]  # a sleep is quicker than a process start
        costs = r.app.residency.core.ledger.slots["chat"].profile.costs
        assert (costs.wake_s, costs.release_s, costs.cold_start_s) == (chat["wake"], chat["release"], chat["start"])
        doc = r.doc
    backing = open_store("", tmp_path / "state")
    saved = backing.state_get("transitions")
    backing.close()
    assert saved is not None
    assert len(saved["chat"]["wake"]) == 1 and len(saved["img"]["release"]) == 1
    later = Appliance(parse_config(doc, "test"), host="127.0.0.1", port=free_port())  # built, never started
    try:
        slots = later.residency.core.ledger.slots
        assert slots["chat"].profile.costs.wake_s == pytest.approx(chat["wake"], abs=1e-4)
        assert slots["img"].profile.costs.release_s == pytest.approx(img["release"], abs=1e-4)
    finally:
        await later.shutdown()


async def test_checkpoints_of_one_comfyui_are_released_together(tmp_path: Path) -> None:
    """Two checkpoints in one ComfyUI (7 GiB each by estimate, the engine's 15 GiB split between
    them once measured): its /free unloads both, so making room for a 12 GiB vLLM (for which one
    checkpoint's 7.5 GiB would do) releases both, and the scheduler's books say so; either comes
    back by a wake."""
    img2 = {"img2": {"engine": "comfyui", "modality": "image", "vram_gb": 7}}
    async with rig(tmp_path, img_gib=7, extra_models=img2, chat_gib=12) as r:
        await r.image("img")
        await r.image("img2")
        assert ("sleep", "img") not in r.actions  # they fit together
        await r.chat()
        back = next(i for i, a in enumerate(r.actions) if a[1] == "chat" and a[0] in ("start", "wake"))
        assert {("sleep", "img"), ("sleep", "img2")} <= set(r.actions[:back])
        models = r.app.residency.snapshot()["models"]
        assert isinstance(models, dict)
        assert models["img"]["tier"] == models["img2"]["tier"] == "host"
        await r.image("img2")
        assert ("wake", "img2") in r.actions
        assert r.peak <= BUDGET, f"fake GPU peaked at {r.peak / GIB:.1f} GiB"


async def test_mixed_burst_all_complete_within_budget(tmp_path: Path) -> None:
    """A bounded burst of every kind at once (10 chats, half streamed, 3 images, 5 speeches):
    every request completes, memory never exceeds the card, and nothing is left queued or in flight."""
    async with rig(tmp_path, vllm_env={"VLLM_STANDIN_TOKENS_PER_S": "200"}) as r:
        jobs = [r.chat(tokens=8, stream=i % 2 == 0) for i in range(10)]
        jobs += [r.image() for _ in range(3)] + [r.speech(f"sentence number {i}") for i in range(5)]
        results = await asyncio.wait_for(asyncio.gather(*jobs), timeout=90)
        assert len(results) == 18 and all(results[i] for i in range(10))
        assert all(len(audio) > 44 for audio in results[13:])  # a WAV header and samples
        models_now = lambda: r.app.residency.snapshot()["models"].values()  # type: ignore[attr-defined]  # noqa: E731
        await until(lambda: all(m["in_flight"] == 0 for m in models_now()), "the last RequestDone to reach the core")
        assert all(m["queued"] == 0 for m in models_now())
        assert r.peak <= BUDGET, f"fake GPU peaked at {r.peak / GIB:.1f} GiB"
        snap = r.app.residency.snapshot()
        assert snap["vram_used_bytes"] <= snap["vram_budget_bytes"]  # type: ignore[operator]


async def test_request_in_flight_is_never_evicted(tmp_path: Path) -> None:
    async with rig(tmp_path, vllm_env={"VLLM_STANDIN_TOKENS_PER_S": "20"}) as r:
        await r.chat()
        long_chat = asyncio.ensure_future(r.chat(tokens=60, stream=True))  # about 3 s of streaming
        await until(lambda: r.app.residency.snapshot()["models"]["chat"]["in_flight"] > 0,  # type: ignore[index]
                    "the long chat to be in flight")
        img = asyncio.ensure_future(r.image())  # max_wait is 2 s: the switch must still wait
        text = await long_chat
        assert text.rstrip().endswith("data: [DONE]") and '"finish_reason":"length"' in text.replace(" ", "")
        await img
        sleep_at = r.actions.index(("sleep", "chat"))
        assert r.actions[sleep_at + 1] == ("start", "img")
        assert r.peak <= BUDGET


async def test_release_not_verified_in_time_escalates_to_stop(tmp_path: Path) -> None:
    gate = tmp_path / "never"
    async with rig(tmp_path, comfy_env={"COMFYUI_STANDIN_FREE_GATE_FILE": str(gate)},
                   release_deadline_s=1.0) as r:
        await r.image()
        await r.chat()  # ComfyUI's /free answers 200 but its memory never drops: stop it
        assert ("stop", "img") in r.actions
        assert r.state("comfyui") == "stopped"
        assert r.peak <= BUDGET
        await r.image()  # and it comes back with a cold start
        assert r.actions.count(("start", "img")) == 2


async def test_crash_during_a_swap_leaves_the_scheduler_consistent(tmp_path: Path) -> None:
    async with rig(tmp_path, vllm_env={"VLLM_STANDIN_WAKE_S": "2"}) as r:
        await r.chat()
        await r.image()
        waking = asyncio.ensure_future(r.chat())
        await until(lambda: ("wake", "chat") in r.actions, "the wake to begin")
        pid = r.app.engines["vllm"].process.pid
        assert pid is not None
        os.killpg(pid, signal.SIGKILL)  # the engine dies in the middle of its wake-up
        with contextlib.suppress(Exception):
            await waking  # that request may fail; the next ones must not
        await r.chat()
        await r.image()
        models_now = lambda: r.app.residency.snapshot()["models"].values()  # type: ignore[attr-defined]  # noqa: E731
        await until(lambda: all(m["in_flight"] == 0 for m in models_now()), "the last RequestDone to reach the core")
        snap = r.app.residency.snapshot()
        assert snap["vram_used_bytes"] <= snap["vram_budget_bytes"]  # type: ignore[operator]
        models = snap["models"]
        assert isinstance(models, dict)
        assert {models["chat"]["tier"], models["img"]["tier"]} <= {"vram", "host", "disk"}
        assert all(m["queued"] == 0 and m["in_flight"] == 0 for m in models.values())
        assert r.peak <= BUDGET


async def test_a_crash_of_a_half_awake_vllm_leaves_its_waiter_to_a_cold_start(tmp_path: Path) -> None:
    """vLLM dies with its weights prefetched and its KV cache still asleep: the core forgets its host
    copy and its prefetched weights, and the waiting chat is served after a cold start."""
    vllm_env = {"VLLM_STANDIN_WEIGHTS_FRACTION": "0.8"}
    async with rig(tmp_path, chat_gib=21, vllm_env=vllm_env, chat_config={"weights_gb": 16.8}) as r:
        await r.chat()
        models = lambda: r.app.residency.snapshot()["models"]  # type: ignore[no-any-return]  # noqa: E731
        async with r.app.residency.lease("voice"):
            chat = asyncio.ensure_future(r.chat())
            await until(lambda: models()["chat"]["prefetched_bytes"] > 0 and models()["chat"]["phase"] == "steady",
                        "the chat's weights to be back")
            pid = r.app.engines["vllm"].process.pid
            assert pid is not None
            os.killpg(pid, signal.SIGKILL)
            await until(lambda: models()["chat"]["prefetched_bytes"] == 0, "the core to count the crash")
            assert models()["chat"]["tier"] == "disk" and models()["chat"]["queued"] == 1
        await asyncio.wait_for(chat, 60.0)
        assert ("start", "chat") in r.actions[r.actions.index(("prefetch", "chat")):]
        snap = r.app.residency.snapshot()
        assert snap["vram_used_bytes"] <= snap["vram_budget_bytes"]  # type: ignore[operator]
        assert r.peak <= BUDGET


async def test_gpu_model_on_a_box_without_gpu_says_so(tmp_path: Path) -> None:
    from appliance.residency import CannotFitError

    doc: dict[str, Any] = {"server": {"state_dir": str(tmp_path / "state")},
                           "gpu": {"probe": "declared", "declared_total_gb": 0},
                           "engines": {"vllm": vllm_engine(free_port())},
                           "models": {"chat": {"engine": "vllm", "modality": "text", "vram_gb": 20}}}
    app = Appliance(parse_config(doc, "test"), host="127.0.0.1", port=free_port())
    await app.startup()
    try:
        try:
            async with app.residency.lease("chat"):
                raise AssertionError("a 20 GiB model cannot be leased without a GPU")
        except CannotFitError as exc:
            assert "no NVIDIA GPU" in str(exc) and "20.0 GiB" in str(exc) and exc.retry_after > 0
        assert app.engines["vllm"].state.value == "stopped"  # nothing was started
    finally:
        await app.shutdown()


async def test_scheduler_settings_reach_the_core(tmp_path: Path) -> None:
    async def settings(scheduler: dict[str, Any]) -> tuple[Any, set[str]]:
        doc: dict[str, Any] = {"server": {"state_dir": str(tmp_path / "state")},
                               "gpu": {"probe": "declared", "declared_total_gb": 24},
                               "scheduler": scheduler,
                               "engines": {"vllm": vllm_engine(free_port()), "comfyui": comfyui_engine(free_port()),
                                           "txt": {"kind": "worker", "worker": "text", "model_path": "tiny",
                                                   "device": "cuda", "port": free_port()}},
                               "models": {"chat": {"engine": "vllm", "modality": "text", "vram_gb": 20},
                                          "img": {"engine": "comfyui", "modality": "image", "vram_gb": 15},
                                          "small": {"engine": "txt", "modality": "text", "vram_gb": 1}}}
        app = Appliance(parse_config(doc, "test"), host="127.0.0.1", port=free_port())
        await app.shutdown()
        waits.update({mid: slot.profile.max_wait_s for mid, slot in app.residency.core.ledger.slots.items()})
        return app.residency.core.settings, app.residency._preemptible

    waits: dict[str, float] = {}
    default, preemptible = await settings({})
    assert default.one_engine_at_a_time and not default.preemption and preemptible == set()
    assert waits == {"chat": 60.0, "img": 30.0, "small": 60.0}  # per kind, as benchmarked
    tuned, preemptible = await settings({"turn_taking": False, "preemption": True})
    assert not tuned.one_engine_at_a_time and tuned.preemption
    # text models on vLLM and on the text worker (both continue a final assistant message);
    # image jobs always run to the end
    assert preemptible == {"chat", "small"}
    assert waits == {"chat": 60.0, "img": 15.0, "small": 60.0}  # no drain to wait for: the image may switch sooner
    await settings({"max_wait_s": 5.0})
    assert waits == {"chat": 5.0, "img": 5.0, "small": 5.0}
