"""Engine state of the vLLM stand-in: GPU memory, sleep mode, in-flight requests, knobs.

Owns: what the engine holds on the (fake) GPU and where the weights are, the sleep/wake/reload
state machine of contracts §1.5, abort of in-flight requests, the crash counter, and the
EngineCore grandchild when that knob is on. Must not: parse HTTP or build response bodies.

Memory model: footprint F = residual R (CUDA context, allocator, graphs: kept while asleep)
+ weights W + KV cache K. Level 1 moves W to host RAM and drops K; level 2 drops both. Waking the
``weights`` tag brings W back; after a level-2 sleep the weights are garbage until
``collective_rpc reload_weights``, and the stand-in refuses to generate until then.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass

from standin_common import GIB, FakeGpuReport, Knobs
from vllm_args import ServeConfig
from vllm_text import ApiError

TAGS = ("weights", "kv_cache")
ENGINE_CORE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "engine_core.py")


@dataclass(frozen=True)
class VllmKnobs:
    start_delay_s: float
    ready_file: str | None
    crash_after: int
    hang: bool
    footprint_bytes: int
    residual_fraction: float
    weights_fraction: float
    sleep_s: float
    wake_s: float
    reload_s: float
    tokens_per_s: float
    ttft_s: float
    engine_core: bool
    api_server_bytes: int
    orphan_linger_s: float
    version: str

    @classmethod
    def from_env(cls, config: ServeConfig) -> VllmKnobs:
        k = Knobs("VLLM_STANDIN")
        total = k.int("GPU_TOTAL_BYTES", 24 * GIB)
        return cls(
            start_delay_s=k.float("START_DELAY_S", 0.0),
            ready_file=k.str("READY_FILE"),
            crash_after=k.int("CRASH_AFTER", 0),
            hang=k.flag("HANG"),
            # vLLM takes --gpu-memory-utilization of the whole GPU, whatever the model needs.
            footprint_bytes=k.int("FOOTPRINT_BYTES", int(total * config.gpu_memory_utilization)),
            residual_fraction=k.float("RESIDUAL_FRACTION", 0.05),
            weights_fraction=k.float("WEIGHTS_FRACTION", 0.45),
            sleep_s=k.float("SLEEP_S", 0.0),
            wake_s=k.float("WAKE_S", 0.0),
            reload_s=k.float("RELOAD_S", 0.0),
            tokens_per_s=k.float("TOKENS_PER_S", 0.0),
            ttft_s=k.float("TTFT_S", 0.0),
            engine_core=k.flag("ENGINE_CORE"),
            api_server_bytes=k.int("API_SERVER_BYTES", 0),
            orphan_linger_s=k.float("ORPHAN_LINGER_S", 30.0),
            version=k.str("VERSION", "0.11.0") or "0.11.0",
        )


class MemorySink:
    """Where engine memory is reported: this process's fake-GPU file, or the EngineCore grandchild."""

    def __init__(self, knobs: VllmKnobs) -> None:
        self.used = 0
        self._core: subprocess.Popen[bytes] | None = None
        self._own: FakeGpuReport | None = None
        if knobs.engine_core:
            # Same process group as us (no new session): only a group kill reaches it.
            self._core = subprocess.Popen(
                [sys.executable, ENGINE_CORE_SCRIPT, "vllm-enginecore", str(knobs.orphan_linger_s)],
                stdin=subprocess.PIPE,
                close_fds=True,
            )
            if knobs.api_server_bytes > 0:
                FakeGpuReport("vllm-apiserver").set(knobs.api_server_bytes)
        else:
            self._own = FakeGpuReport("vllm")

    @property
    def engine_core_pid(self) -> int | None:
        return None if self._core is None else self._core.pid

    def set(self, used: int) -> None:
        self.used = used
        if self._own is not None:
            self._own.set(used)
        elif self._core is not None and self._core.stdin is not None:
            self._core.stdin.write(b"%d\n" % used)
            self._core.stdin.flush()

    def close(self) -> None:
        """Clean exit: our own file goes; the EngineCore only sees its pipe close (and lingers)."""
        if self._own is not None:
            self._own.remove()
        FakeGpuReport("vllm-apiserver").remove()
        if self._core is not None and self._core.stdin is not None:
            self._core.stdin.close()


class InFlight:
    """One running generation request; sleep aborts it by setting ``aborted``."""

    __slots__ = ("aborted", "emitted", "wakeup")

    def __init__(self) -> None:
        self.aborted = False
        self.emitted = 0  # token steps produced so far (each sequence emits one token per step)
        self.wakeup = asyncio.Event()

    def abort(self) -> None:
        self.aborted = True
        self.wakeup.set()


class Engine:
    def __init__(self, config: ServeConfig, knobs: VllmKnobs, sink: MemorySink) -> None:
        self.config = config
        self.knobs = knobs
        self.sink = sink
        footprint = knobs.footprint_bytes
        self.residual = int(footprint * knobs.residual_fraction)
        self.weights = int(footprint * knobs.weights_fraction)
        self.kv = max(0, footprint - self.residual - self.weights)
        self.weights_where = "gpu"  # gpu | host | discarded
        self.asleep: set[str] = set()
        self.paused = False  # level 0: scheduling paused, memory kept
        self.sleep_level: int | None = None
        self.needs_reload = False
        self.inflight: set[InFlight] = set()
        self.idle = asyncio.Event()  # set while nothing is in flight (sleep mode=wait waits on it)
        self.idle.set()
        self.waiting = 0
        self.slots = asyncio.Semaphore(config.max_num_seqs)
        self.generation_requests = 0
        self.prefix_cache: set[int] = set()

    def report_memory(self) -> None:
        used = self.residual
        if "weights" not in self.asleep:
            used += self.weights
        if "kv_cache" not in self.asleep:
            used += self.kv
        self.sink.set(used)

    @property
    def is_sleeping(self) -> bool:
        return bool(self.asleep) or self.paused

    def check_can_generate(self) -> None:
        if self.is_sleeping:
            raise ApiError(503, "ServiceUnavailableError", "Engine is sleeping. Call /wake_up to resume.")
        if self.needs_reload:
            raise ApiError(
                500,
                "InternalServerError",
                "Model weights were discarded by sleep level 2 and have not been reloaded; "
                'call POST /collective_rpc {"method":"reload_weights"} after /wake_up.',
            )

    async def sleep(self, level: int, tags: list[str], mode: str) -> None:
        if not self.config.enable_sleep_mode:
            raise ApiError(
                500,
                "InternalServerError",
                "Sleep mode is not enabled. Start the server with --enable-sleep-mode.",
            )
        if level not in (0, 1, 2):
            raise ApiError(400, "BadRequestError", f"Invalid sleep level {level}; expected 0, 1 or 2.", "level")
        if mode not in ("abort", "wait"):
            raise ApiError(400, "BadRequestError", f"Invalid sleep mode {mode!r}; expected abort or wait.", "mode")
        if mode == "abort":
            for req in list(self.inflight):
                req.abort()
        else:
            await self.idle.wait()
        if self.knobs.sleep_s > 0:
            await asyncio.sleep(self.knobs.sleep_s)
        if level == 0:
            self.paused = True
            return
        if self.asleep and set(self.asleep) != set(TAGS):
            # Half awake (only some tags woken): vLLM's CuMemAllocator.sleep() unmaps every
            # allocation, including the ones still asleep, and fails in the CUDA driver.
            raise ApiError(500, "InternalServerError",
                           f"Cannot sleep while partly awake ({sorted(self.asleep)} still asleep); "
                           "wake everything first.")
        for tag in tags or TAGS:
            if tag == "weights":
                if level == 2:
                    self.weights_where = "discarded"
                elif self.weights_where == "gpu":
                    self.weights_where = "host"
            self.asleep.add(tag)
        self.sleep_level = max(level, self.sleep_level or 0)
        self.report_memory()

    async def wake_up(self, tags: list[str]) -> None:
        to_wake = [t for t in (tags or TAGS) if t in self.asleep]
        if to_wake and self.knobs.wake_s > 0:
            await asyncio.sleep(self.knobs.wake_s)
        for tag in to_wake:
            if tag == "weights":
                if self.weights_where == "discarded":
                    self.needs_reload = True
                self.weights_where = "gpu"
            self.asleep.discard(tag)
        if not tags:
            self.paused = False
        if not self.asleep:
            self.sleep_level = None
        self.report_memory()

    async def collective_rpc(self, method: str) -> list[object]:
        if method != "reload_weights":
            raise ApiError(500, "InternalServerError", f"AttributeError: 'Worker' object has no attribute '{method}'")
        if "weights" in self.asleep:
            raise ApiError(
                500,
                "InternalServerError",
                "Cannot reload weights while they are asleep; call /wake_up first.",
            )
        if self.knobs.reload_s > 0:
            await asyncio.sleep(self.knobs.reload_s)
        self.needs_reload = False
        return [None] * self.config.tensor_parallel_size  # one result per worker

    def begin(self, handle: InFlight) -> None:
        self.inflight.add(handle)
        self.idle.clear()

    def end(self, handle: InFlight) -> None:
        self.inflight.discard(handle)
        if not self.inflight:
            self.idle.set()

    def kv_usage(self) -> float:
        if "kv_cache" in self.asleep or not self.inflight:
            return 0.0
        return min(1.0, len(self.inflight) / self.config.max_num_seqs)

    def prefix_lookup(self, key: int, tokens: int) -> int:
        """Prefix-cache accounting: a prompt seen before counts as a full hit."""
        if not self.config.enable_prefix_caching:
            return 0
        if key in self.prefix_cache:
            return tokens
        if len(self.prefix_cache) > 10_000:
            self.prefix_cache.clear()
        self.prefix_cache.add(key)
        return 0
