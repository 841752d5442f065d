"""Prompt queue, executor and model memory of the ComfyUI stand-in (§3.2, §3.3).

Owns: the priority queue of prompts (ComfyUI's ``PromptQueue``: heap by number, running set,
history, flags set by ``/free``), the single worker that executes one prompt at a time, the node
output cache (identical nodes are not re-run, as with ComfyUI's classic cache), the messages sent
to WebSocket clients, and the fake-GPU memory: models load lazily on the first sampling and stay
until ``/free`` is acted on by the worker, between prompts, after a delay.
Must not: parse HTTP; it publishes messages through the ``send`` callback it is given.
"""

from __future__ import annotations

import asyncio
import copy
import heapq
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from comfyui_args import ComfyConfig
from comfyui_nodes import NodeDef
from comfyui_png import encode_png, seeded_rgb_rows
from standin_common import GIB, FakeGpuReport, Knobs

SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
MAXIMUM_HISTORY_SIZE = 10000
Send = Callable[[str, dict[str, object], "str | None"], None]


@dataclass(frozen=True)
class ComfyKnobs:
    start_delay_s: float
    ready_file: str | None
    crash_after: int
    hang: bool
    footprint_bytes: int
    residual_fraction: float
    gpu_total_bytes: int
    image_s: float
    load_s: float
    free_delay_s: float
    free_gate_file: str | None
    fail_text: str | None
    no_clip_checkpoints: tuple[str, ...]
    step_log: str | None = None

    @classmethod
    def from_env(cls) -> ComfyKnobs:
        k = Knobs("COMFYUI_STANDIN")
        return cls(
            start_delay_s=k.float("START_DELAY_S", 0.0),
            ready_file=k.str("READY_FILE"),
            crash_after=k.int("CRASH_AFTER", 0),
            hang=k.flag("HANG"),
            footprint_bytes=k.int("FOOTPRINT_BYTES", 10 * GIB),
            residual_fraction=k.float("RESIDUAL_FRACTION", 0.05),
            gpu_total_bytes=k.int("GPU_TOTAL_BYTES", 24 * GIB),
            image_s=k.float("IMAGE_S", 0.1),
            load_s=k.float("LOAD_S", 0.0),
            free_delay_s=k.float("FREE_DELAY_S", 0.5),
            free_gate_file=k.str("FREE_GATE_FILE"),
            fail_text=k.str("FAIL_TEXT"),
            no_clip_checkpoints=tuple(
                n.strip()
                for n in (k.str("NO_CLIP_CHECKPOINTS", "sd3.5_large_turbo.safetensors") or "").split(",")
                if n.strip()
            ),
            step_log=k.str("STEP_LOG"),
        )


class Memory:
    """GPU memory of the process: the CUDA context always, the models once loaded (None with --cpu)."""

    def __init__(self, knobs: ComfyKnobs, cpu: bool) -> None:
        self.report = None if cpu else FakeGpuReport("comfyui")
        self.residual = 0 if cpu else int(knobs.footprint_bytes * knobs.residual_fraction)
        self.footprint = 0 if cpu else knobs.footprint_bytes
        self.loaded = False
        self.used = 0

    def _set(self, used: int) -> None:
        self.used = used
        if self.report is not None:
            self.report.set(used)

    def start(self) -> None:
        self._set(self.residual)

    def load(self) -> None:
        self.loaded = True
        self._set(self.footprint)

    def unload(self) -> None:
        self.loaded = False
        self._set(self.residual)

    def close(self) -> None:
        if self.report is not None:
            self.report.remove()


class PromptQueue:
    """Items are lists ``[number, prompt_id, prompt, extra_data, outputs_to_execute]``."""

    def __init__(self, on_update: Callable[[], None]) -> None:
        self._heap: list[tuple[float, int, list[object]]] = []
        self._seq = 0
        self.running: dict[int, list[object]] = {}
        self.history: dict[str, dict[str, object]] = {}
        self.flags: dict[str, bool] = {}
        self._task_counter = 0
        self._wake = asyncio.Event()
        self._on_update = on_update

    def put(self, item: list[object]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (float(item[0]), self._seq, item))  # type: ignore[arg-type]
        self._on_update()
        self._wake.set()

    async def get(self) -> tuple[list[object], int] | None:
        """Next item, or None when flags were set while the queue was empty."""
        while not self._heap:
            if self.flags:
                return None
            self._wake.clear()
            await self._wake.wait()
        item = heapq.heappop(self._heap)[2]
        task_id = self._task_counter
        self._task_counter += 1
        self.running[task_id] = copy.deepcopy(item)
        self._on_update()
        return item, task_id

    def task_done(self, task_id: int, result: dict[str, object], status: dict[str, object]) -> None:
        item = self.running.pop(task_id)
        if len(self.history) > MAXIMUM_HISTORY_SIZE:
            self.history.pop(next(iter(self.history)))
        extra = item[3]
        for key in SENSITIVE_EXTRA_DATA_KEYS:
            extra.pop(key, None)  # type: ignore[attr-defined]
        self.history[str(item[1])] = {"prompt": item, "outputs": {}, "status": status, **result}
        self._on_update()

    def pending(self) -> list[list[object]]:
        return [entry[2] for entry in self._heap]

    def remaining(self) -> int:
        return len(self._heap) + len(self.running)

    def wipe(self) -> None:
        self._heap = []
        self._on_update()

    def delete(self, prompt_id: object) -> bool:
        for i, entry in enumerate(self._heap):
            if entry[2][1] == prompt_id:
                self._heap.pop(i)
                heapq.heapify(self._heap)
                self._on_update()
                return True
        return False

    def set_flag(self, name: str, value: bool) -> None:
        self.flags[name] = value
        self._wake.set()

    def take_flags(self) -> dict[str, bool]:
        flags, self.flags = self.flags, {}
        return flags

    def get_history(
        self, prompt_id: str | None = None, max_items: int | None = None, offset: int = -1
    ) -> dict[str, object]:
        if prompt_id is not None:
            entry = self.history.get(prompt_id)
            return {} if entry is None else {prompt_id: copy.deepcopy(entry)}
        out: dict[str, object] = {}
        if offset < 0 and max_items is not None:
            offset = len(self.history) - max_items
        for i, (key, entry) in enumerate(self.history.items()):
            if i >= offset:
                out[key] = entry
                if max_items is not None and len(out) >= max_items:
                    break
        return out


class Interrupted(Exception):
    pass


class NodeFailure(Exception):
    def __init__(self, node_id: str, exc: BaseException, inputs: dict[str, object]) -> None:
        super().__init__(str(exc))
        self.node_id = node_id
        self.exc = exc
        self.inputs = inputs


def _save_path(prefix: str, output_dir: str, width: int, height: int) -> tuple[str, str, int, str]:
    """ComfyUI's folder_paths.get_save_image_path: (folder, filename, counter, subfolder)."""
    if "%" in prefix:
        now = time.localtime()
        for key, value in (
            ("%width%", width),
            ("%height%", height),
            ("%year%", now.tm_year),
            ("%month%", f"{now.tm_mon:02}"),
            ("%day%", f"{now.tm_mday:02}"),
            ("%hour%", f"{now.tm_hour:02}"),
            ("%minute%", f"{now.tm_min:02}"),
            ("%second%", f"{now.tm_sec:02}"),
        ):
            prefix = prefix.replace(key, str(value))
    subfolder = os.path.dirname(os.path.normpath(prefix))
    filename = os.path.basename(os.path.normpath(prefix))
    folder = os.path.join(output_dir, subfolder)
    if os.path.commonpath((output_dir, os.path.abspath(folder))) != output_dir:
        raise Exception("**** ERROR: Saving image outside the output folder is not allowed.")
    os.makedirs(folder, exist_ok=True)
    counters = []
    for name in os.listdir(folder):
        head = name[: len(filename) + 1]
        if head[-1:] == "_" and os.path.normcase(head[:-1]) == os.path.normcase(filename):
            try:
                counters.append(int(name[len(filename) + 1 :].split("_")[0]))
            except ValueError:
                counters.append(0)
    counter = max(counters) + 1 if counters else 1
    return folder, filename, counter, subfolder


class Executor:
    def __init__(
        self, config: ComfyConfig, knobs: ComfyKnobs, memory: Memory, send: Send, defs: Callable[[], dict[str, NodeDef]]
    ) -> None:
        self.config = config
        self.knobs = knobs
        self.memory = memory
        self.send = send
        self.defs = defs
        self.cache: dict[str, tuple[object, tuple[object, ...], dict[str, object] | None]] = {}
        self.interrupt = asyncio.Event()
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.prompts_started = 0

    # --- messages (execution.py add_message and send_sync) ---------------------------------------
    def _add_message(
        self, messages: list[list[object]], event: str, data: dict[str, object], broadcast: bool = False
    ) -> None:
        data = {**data, "timestamp": int(time.time() * 1000)}
        messages.append([event, data])
        if self.client_id is not None or broadcast:
            self.send(event, data, self.client_id)

    async def _pause(self, seconds: float) -> None:
        if seconds > 0:
            try:
                await asyncio.wait_for(self.interrupt.wait(), seconds)
            except TimeoutError:
                return
        if self.interrupt.is_set():
            raise Interrupted()

    # --- one prompt ---------------------------------------------------------------------------------
    async def execute(
        self, prompt: dict[str, dict[str, object]], prompt_id: str, extra: dict[str, object], outputs: list[str]
    ) -> tuple[bool, dict[str, object], list[list[object]]]:
        self.interrupt.clear()
        self.prompts_started += 1
        crash = self.prompts_started == self.knobs.crash_after
        client = extra.get("client_id")
        self.client_id = client if isinstance(client, str) else None
        messages: list[list[object]] = []
        self._add_message(messages, "execution_start", {"prompt_id": prompt_id})
        defs = self.defs()
        order = self._order(prompt, outputs, defs)
        signatures: dict[str, object] = {}
        for node_id in order:
            signatures[node_id] = self._signature(prompt, node_id, signatures)
        cache = {} if self.config.cache_none else self.cache
        current_outputs = list(cache)
        cached = [n for n in prompt if n in cache and cache[n][0] == signatures.get(n)]
        self._add_message(messages, "execution_cached", {"nodes": cached, "prompt_id": prompt_id})
        results: dict[str, tuple[object, tuple[object, ...], dict[str, object] | None]] = {n: cache[n] for n in cached}
        executed: list[str] = []
        success = True
        try:
            for node_id in order:
                if node_id in results:
                    ui = results[node_id][2]
                    if ui is not None:
                        self.send(
                            "executed",
                            {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": prompt_id},
                            self.client_id,
                        )
                    continue
                self.last_node_id = node_id
                self.send(
                    "executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id}, self.client_id
                )
                inputs = self._resolve(prompt[node_id], results)
                try:
                    out, ui = await self._run(
                        str(prompt[node_id]["class_type"]), node_id, prompt_id, inputs, prompt, extra, crash
                    )
                except Interrupted:
                    raise
                except Exception as exc:
                    raise NodeFailure(node_id, exc, inputs) from exc
                results[node_id] = (signatures[node_id], out, ui)
                executed.append(node_id)
                if ui is not None:
                    self.send(
                        "executed",
                        {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": prompt_id},
                        self.client_id,
                    )
            if crash:
                _crash_now()
            self._add_message(messages, "execution_success", {"prompt_id": prompt_id})
        except Interrupted:
            success = False
            node_id = self.last_node_id or ""
            self._add_message(
                messages,
                "execution_interrupted",
                {
                    "prompt_id": prompt_id,
                    "node_id": node_id,
                    "node_type": prompt.get(node_id, {}).get("class_type"),
                    "executed": executed,
                },
                broadcast=True,
            )
        except NodeFailure as failure:
            success = False
            error = failure.exc
            kind = type(error)
            self._add_message(
                messages,
                "execution_error",
                {
                    "prompt_id": prompt_id,
                    "node_id": failure.node_id,
                    "node_type": prompt[failure.node_id]["class_type"],
                    "executed": executed,
                    "exception_message": str(error),
                    "exception_type": kind.__qualname__
                    if kind.__module__ == "builtins"
                    else f"{kind.__module__}.{kind.__qualname__}",
                    "traceback": traceback.format_tb(error.__traceback__),
                    "current_inputs": {k: [repr(v)] for k, v in failure.inputs.items()},
                    "current_outputs": current_outputs,
                },
            )
        self.last_node_id = None
        if not self.config.cache_none:
            self.cache = {n: v for n, v in results.items() if n in prompt}
        ui_outputs = {n: v[2] for n, v in results.items() if v[2] is not None}
        meta = {n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n} for n in ui_outputs}
        return success, {"outputs": ui_outputs, "meta": meta}, messages

    @staticmethod
    def _order(prompt: dict[str, dict[str, object]], outputs: list[str], defs: dict[str, NodeDef]) -> list[str]:
        order: list[str] = []
        seen: set[str] = set()

        def visit(node_id: str) -> None:
            if node_id in seen:
                return
            seen.add(node_id)
            inputs = prompt[node_id]["inputs"]
            spec = defs[str(prompt[node_id]["class_type"])]
            for name in spec.required:
                value = inputs.get(name)  # type: ignore[attr-defined]
                if isinstance(value, list):
                    visit(value[0])
            order.append(node_id)

        for out in outputs:
            visit(out)
        return order

    @staticmethod
    def _signature(prompt: dict[str, dict[str, object]], node_id: str, known: dict[str, object]) -> object:
        node = prompt[node_id]
        parts: list[object] = [node["class_type"]]
        for name, value in sorted(node["inputs"].items()):  # type: ignore[attr-defined]
            if isinstance(value, list):
                parts.append((name, known[value[0]], value[1]))
            else:
                parts.append((name, json.dumps(value, sort_keys=True)))
        return tuple(parts)

    @staticmethod
    def _resolve(
        node: dict[str, object], results: dict[str, tuple[object, tuple[object, ...], dict[str, object] | None]]
    ) -> dict[str, object]:
        resolved = {}
        for name, value in node["inputs"].items():  # type: ignore[attr-defined]
            resolved[name] = results[value[0]][1][value[1]] if isinstance(value, list) else value
        return resolved

    # --- node implementations -----------------------------------------------------------------------
    async def _run(
        self,
        class_type: str,
        node_id: str,
        prompt_id: str,
        inp: dict[str, object],
        prompt: dict[str, dict[str, object]],
        extra: dict[str, object],
        crash: bool,
    ) -> tuple[tuple[object, ...], dict[str, object] | None]:
        if class_type == "CheckpointLoaderSimple":
            name = inp["ckpt_name"]
            has_clip = name not in self.knobs.no_clip_checkpoints
            return ({"model": name}, {"clip": name if has_clip else None}, {"vae": name}), None
        if class_type == "TripleCLIPLoader":
            return ({"clip": [inp["clip_name1"], inp["clip_name2"], inp["clip_name3"]]},), None
        if class_type in ("EmptyLatentImage", "EmptySD3LatentImage"):
            return ({"width": inp["width"], "height": inp["height"], "batch": inp["batch_size"], "seed": 0},), None
        if class_type == "CLIPTextEncode":
            clip = inp["clip"]
            if not isinstance(clip, dict) or clip.get("clip") is None:
                raise RuntimeError(
                    "ERROR: clip input is invalid: None\n\nIf the clip is from a checkpoint loader "
                    "node your checkpoint does not contain a valid clip or text encoder model."
                )
            return ({"text": inp["text"]},), None
        if class_type == "KSampler":
            return await self._sample(node_id, prompt_id, inp, crash), None
        if class_type == "VAEDecode":
            return (dict(inp["samples"]),), None  # type: ignore[call-overload]
        if class_type in ("SaveImage", "PreviewImage"):
            return (), await self._save(class_type, inp, prompt, extra)
        raise RuntimeError(f"node class {class_type} has no implementation in the stand-in")

    async def _sample(self, node_id: str, prompt_id: str, inp: dict[str, object], crash: bool) -> tuple[object]:
        if not self.memory.loaded:
            await self._pause(self.knobs.load_s)  # lazy model load on first use
            self.memory.load()
        fail = self.knobs.fail_text
        texts = [str(inp[k].get("text", "")) for k in ("positive", "negative")]  # type: ignore[attr-defined]
        if fail and any(fail in t for t in texts):
            raise RuntimeError(f"stand-in injected failure: prompt text contains {fail!r}")
        latent = dict(inp["latent_image"])  # type: ignore[call-overload]
        steps = int(inp["steps"])  # type: ignore[call-overload]
        per_step = self.knobs.image_s * int(latent["batch"]) / steps
        for step in range(1, steps + 1):
            if crash and step == max(1, steps // 2):
                _crash_now()
            await self._pause(per_step)
            if self.knobs.step_log:  # what tests count: the sampling steps this engine really ran
                _append_line(self.knobs.step_log, f"{prompt_id} {step}")
            self.send(
                "progress", {"value": step, "max": steps, "prompt_id": prompt_id, "node": node_id}, self.client_id
            )
        latent["seed"] = inp["seed"]
        return (latent,)

    async def _save(
        self, class_type: str, inp: dict[str, object], prompt: dict[str, dict[str, object]], extra: dict[str, object]
    ) -> dict[str, object]:
        image = inp["images"]
        assert isinstance(image, dict)
        width, height, batch, seed = (int(image[k]) for k in ("width", "height", "batch", "seed"))
        if class_type == "SaveImage":
            base, kind, prefix = self.config.output_dir, "output", str(inp.get("filename_prefix", "ComfyUI"))
        else:
            suffix = "".join(chr(ord("a") + (seed + i) % 26) for i in range(5))
            base, kind, prefix = self.config.temp_dir, "temp", f"ComfyUI_temp_{suffix}"
        text: dict[str, str] = {}
        if not self.config.disable_metadata:
            text["prompt"] = json.dumps(prompt)
            pnginfo = extra.get("extra_pnginfo")
            if isinstance(pnginfo, dict):
                text.update({k: json.dumps(v) for k, v in pnginfo.items()})

        def write() -> list[dict[str, object]]:
            folder, filename, counter, subfolder = _save_path(prefix, base, width, height)
            images: list[dict[str, object]] = []
            for index in range(batch):
                name = f"{filename.replace('%batch_num%', str(index))}_{counter:05}_.png"
                data = encode_png(width, height, seeded_rgb_rows(width, height, seed, index), text)
                with open(os.path.join(folder, name), "wb") as fh:
                    fh.write(data)
                images.append({"filename": name, "subfolder": subfolder, "type": kind})
                counter += 1
            return images

        return {"images": await asyncio.to_thread(write)}

    def reset_cache(self) -> None:
        self.cache = {}


def _append_line(path: str, line: str) -> None:
    with open(path, "a") as out:
        out.write(line + "\n")


def _crash_now() -> None:
    sys.stderr.write("stand-in: COMFYUI_STANDIN_CRASH_AFTER reached, exiting with status 1\n")
    sys.stderr.flush()
    os._exit(1)


async def worker_loop(
    queue: PromptQueue, executor: Executor, memory: Memory, knobs: ComfyKnobs, config: ComfyConfig, send: Send
) -> None:
    """main.py prompt_worker: one prompt at a time, then act on the /free flags."""
    while True:
        got = await queue.get()
        if got is not None:
            item, task_id = got
            prompt_id = str(item[1])
            try:
                success, result, messages = await executor.execute(
                    item[2],  # type: ignore[arg-type]
                    prompt_id,
                    item[3],  # type: ignore[arg-type]
                    item[4],  # type: ignore[arg-type]
                )
            except Exception:  # a stand-in bug must show up, not silently stop the queue
                traceback.print_exc()
                success, result = False, {"outputs": {}, "meta": {}}
                messages = [["execution_error", {"prompt_id": prompt_id, "exception_message": "stand-in bug"}]]
            queue.task_done(
                task_id,
                result,
                {"status_str": "success" if success else "error", "completed": success, "messages": messages},
            )
            if executor.client_id is not None:
                send("executing", {"node": None, "prompt_id": prompt_id}, executor.client_id)
            if config.disable_smart_memory and memory.loaded:
                await _unload(memory, knobs)
        flags = queue.take_flags()
        free_memory = flags.get("free_memory", False)
        if flags.get("unload_models", free_memory) and memory.loaded:
            await _unload(memory, knobs)
        if free_memory:
            executor.reset_cache()


async def _unload(memory: Memory, knobs: ComfyKnobs) -> None:
    """unload_all_models: slow, and only observable once done (the /free reply came long before)."""
    if knobs.free_delay_s > 0:
        await asyncio.sleep(knobs.free_delay_s)
    gate = knobs.free_gate_file
    # Polling the file system: nothing signals a file appearing.
    while gate is not None and not await asyncio.to_thread(os.path.exists, gate):  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    memory.unload()
