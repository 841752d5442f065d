#!/usr/bin/env python3
"""GPU check: how fast a worker wakes compared with the raw pinned copy, and what an offload frees.

Run it on a machine with an NVIDIA GPU, from the repository root:

    python bench/gpu_swap.py [--size-gb 3.5] [--cycles 3] [--json-out FILE] [--strict]

What it does, in about a minute and always under three:
1. Raw bandwidth: copies a pinned host buffer of the model's size to the GPU a few times (median GB/s).
2. Builds its own model, no downloads: a random-weight Llama of about --size-gb in bfloat16 with a
   tokenizer trained on the spot, saved with save_pretrained (the text worker's format).
3. Serves it with the real text worker (`python -m services.text --device cuda`), cold-loads it, runs
   one completion, then offloads and wakes it --cycles times through POST /offload and POST /load.
   The wake time is the worker's own measurement (the weight copy and rebinding, no HTTP).
4. Prints wake GB/s as a ratio of the raw bandwidth (target >= 0.7), and the worker process's GPU
   memory from NVML: after prepare (the CUDA context), loaded, and after each offload (target: within
   300 MiB of the context).

Without transformers or aiohttp it measures in-process instead, through the same `ModelResidence`
code the workers use. Without CUDA it says so and exits 2 (`--device cpu` runs the logic as a smoke
test; its numbers mean nothing). Exit 0 unless something failed; with --strict a missed target is 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MIB, GIB = 1 << 20, 1 << 30
RATIO_TARGET = 0.7
MEMORY_SLACK = 300 * MIB
DEADLINE_S = 170.0
STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", flush=True)


def remaining() -> float:
    left = DEADLINE_S - (time.monotonic() - STARTED)
    if left <= 0:
        raise TimeoutError(f"gpu_swap ran past its {DEADLINE_S:.0f} s budget")
    return left


# --- GPU memory as NVML sees it -----------------------------------------------------------------


class GpuMemory:
    """Per-process and device-wide used memory: pynvml when installed, else nvidia-smi."""

    def __init__(self, index: int) -> None:
        self.index = index
        self._nvml: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception:
            self._nvml = None
        self.available = self._nvml is not None or shutil.which("nvidia-smi") is not None

    def by_pid(self, pid: int) -> int | None:
        if self._nvml is not None:
            try:
                for p in self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle):
                    if int(p.pid) == pid and isinstance(p.usedGpuMemory, int):
                        return int(p.usedGpuMemory)
            except Exception:
                return None
            return None
        if shutil.which("nvidia-smi") is None:
            return None
        out = subprocess.run(
            [
                "nvidia-smi",
                "-i",
                str(self.index),
                "--query-compute-apps=pid,used_memory",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
        for line in out.splitlines():
            fields = [f.strip() for f in line.split(",")]
            if len(fields) == 2 and fields[0] == str(pid) and fields[1].isdigit():
                return int(fields[1]) * MIB
        return None

    def device_used(self) -> int | None:
        if self._nvml is not None:
            return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)
        if shutil.which("nvidia-smi") is None:
            return None
        out = subprocess.run(
            ["nvidia-smi", "-i", str(self.index), "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
        return int(out.split()[0]) * MIB if out.split() and out.split()[0].isdigit() else None

    def of(self, pid: int) -> tuple[int | None, str]:
        """The process's usage, or the device's when NVML cannot see the process (containers)."""
        used = self.by_pid(pid)
        return (used, "process") if used is not None else (self.device_used(), "device")


# --- step 1: raw pinned bandwidth ---------------------------------------------------------------


def raw_bandwidth(torch: Any, nbytes: int, device: Any, repeats: int = 5) -> dict[str, float]:
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=device.type == "cuda")
    host.fill_(7)
    target = torch.empty(nbytes, dtype=torch.uint8, device=device)
    target.copy_(host, non_blocking=True)  # warm-up
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    sync(device)
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        target.copy_(host, non_blocking=True)
        sync(device)
        seconds.append(time.perf_counter() - t0)
    del host, target
    if device.type == "cuda":
        torch.cuda.empty_cache()
    median = statistics.median(seconds)
    return {
        "bytes": nbytes,
        "median_s": median,
        "gbps": nbytes / median / 1e9,
        "best_gbps": nbytes / min(seconds) / 1e9,
    }


# --- step 2: a model in the text worker's format ------------------------------------------------


def build_model(directory: Path, size_bytes: int) -> dict[str, Any]:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = ["the appliance swaps models between host memory and the graphics card"] * 50
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<unk>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.save_pretrained(directory)
    hidden, inter, heads, kv_heads = 2048, 8192, 16, 8
    per_layer = 2 * hidden * hidden + 2 * hidden * (hidden // heads * kv_heads) + 3 * hidden * inter
    layers = max(1, round(size_bytes / 2 / per_layer))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.empty(param.shape, dtype=torch.float32).uniform_(-0.02, 0.02, generator=generator))
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(directory)
    return {"layers": layers, "params": params, "bytes": params * 2}


# --- step 3: the worker -------------------------------------------------------------------------


def http(method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 120.0) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=min(timeout, remaining())) as response:
        return json.loads(response.read())


def poll(what: str, check: Any, deadline_s: float, interval_s: float = 0.1) -> Any:
    end = time.monotonic() + min(deadline_s, remaining())
    while time.monotonic() < end:
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_worker_mode(
    args: argparse.Namespace, raw: dict[str, float], memory: GpuMemory, workdir: Path
) -> dict[str, Any]:
    say(f"building a ~{args.size_gb:.1f} GB random-weight Llama in the text worker's format")
    model = build_model(workdir / "model", int(args.size_gb * 1e9))
    say(f"model: {model['params'] / 1e9:.2f}B params, {model['layers']} layers, {model['bytes'] / 1e9:.2f} GB bf16")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = workdir / "worker.log"
    argv = [
        sys.executable,
        "-m",
        "services.text",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model-id",
        "swap-bench",
        "--model-path",
        str(workdir / "model"),
        "--device",
        args.device,
        "--dtype",
        "bfloat16",
        "--offload-strategy",
        "arena",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        poll("the worker's /health", lambda: http("GET", base + "/health", timeout=2)["status"] == "ok", 60)
        device = poll(
            "the worker's device",
            lambda: (d := http("GET", base + "/stats")["device"]).startswith(("cuda:", "cpu")) and d,
            90,
        )  # prepare() has imported torch and created the CUDA context
        context, source = memory.of(proc.pid)
        say(f"worker pid {proc.pid} on {device}; GPU memory before load ({source}): {_mib(context)}")
        cold = http("POST", base + "/load", timeout=remaining())
        say(f"cold load from disk: {cold['seconds']:.2f} s")
        completion = http(
            "POST", base + "/v1/completions", {"prompt": "the appliance", "max_tokens": 8, "temperature": 0}
        )
        loaded, _ = memory.of(proc.pid)
        say(f"completion ok ({completion['usage']['completion_tokens']} tokens); GPU memory loaded: {_mib(loaded)}")
        arena_bytes = int(http("GET", base + "/stats")["host_bytes"])
        cycles = []
        for i in range(args.cycles):
            off = http("POST", base + "/offload")
            after, _ = memory.of(proc.pid)
            if after is not None and context is not None and after - context > MEMORY_SLACK:
                # NVML reports frees at once; allow the allocator a moment before calling it a miss.
                settle = time.monotonic() + 2
                while time.monotonic() < settle and after is not None and after - context > MEMORY_SLACK:
                    time.sleep(0.1)
                    after, _ = memory.of(proc.pid)
            stats = http("GET", base + "/stats")
            wake = http("POST", base + "/load")
            gbps = arena_bytes / wake["seconds"] / 1e9
            cycles.append(
                {
                    "offload_s": off["seconds"],
                    "wake_s": wake["seconds"],
                    "wake_gbps": gbps,
                    "ratio": gbps / raw["gbps"],
                    "gpu_after_offload": after,
                    "worker_reserved_after_offload": stats["gpu_bytes"],
                }
            )
            say(
                f"cycle {i + 1}: offload {off['seconds'] * 1e3:.1f} ms, GPU memory after {_mib(after)}; "
                f"wake {wake['seconds'] * 1e3:.1f} ms = {gbps:.1f} GB/s = {gbps / raw['gbps']:.2f} of raw"
            )
        again = http("POST", base + "/v1/completions", {"prompt": "the appliance", "max_tokens": 8, "temperature": 0})
        same = again["choices"][0]["text"] == completion["choices"][0]["text"]
        say("greedy completion after the wakes: " + ("identical" if same else "DIFFERENT from the cold-loaded one"))
        return {
            "same_output_after_wake": same,
            "mode": "worker",
            "model": model,
            "arena_bytes": arena_bytes,
            "cold_load_s": cold["seconds"],
            "memory_source": source,
            "gpu_context": context,
            "gpu_loaded": loaded,
            "cycles": cycles,
        }
    except BaseException:
        sys.stderr.write(log_path.read_text(errors="replace")[-4000:])
        raise
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def run_inprocess_mode(
    args: argparse.Namespace, raw: dict[str, float], memory: GpuMemory, context: int | None, torch: Any, device: Any
) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from services.weights import ModelResidence

    width = 4096
    layers = max(1, round(args.size_gb * 1e9 / (width * width * 2)))
    model = torch.nn.Sequential(
        *(torch.nn.Linear(width, width, bias=False, dtype=torch.bfloat16) for _ in range(layers))
    )
    model.requires_grad_(False)
    say(f"in-process model: {layers} x Linear({width}, {width}) bf16 through services.weights.ModelResidence")
    t0 = time.perf_counter()
    residence = ModelResidence([model], device, "arena")
    cold = time.perf_counter() - t0
    probe = torch.ones(1, width, dtype=torch.bfloat16, device=device)
    reference = model(probe).float().sum().item()
    loaded, source = memory.of(os.getpid())
    arena_bytes = residence.memory().host_bytes
    cycles = []
    for i in range(args.cycles):
        t0 = time.perf_counter()
        residence.offload()
        off = time.perf_counter() - t0
        after, _ = memory.of(os.getpid())
        t0 = time.perf_counter()
        residence.wake()
        wake = time.perf_counter() - t0
        gbps = arena_bytes / wake / 1e9
        cycles.append(
            {
                "offload_s": off,
                "wake_s": wake,
                "wake_gbps": gbps,
                "ratio": gbps / raw["gbps"],
                "gpu_after_offload": after,
            }
        )
        say(
            f"cycle {i + 1}: offload {off * 1e3:.1f} ms, GPU memory after {_mib(after)}; wake {wake * 1e3:.1f} ms "
            f"= {gbps:.1f} GB/s = {gbps / raw['gbps']:.2f} of raw"
        )
    same = model(probe).float().sum().item() == reference
    say("forward pass after the wakes: " + ("identical" if same else "DIFFERENT from before the offloads"))
    return {
        "same_output_after_wake": same,
        "mode": "inprocess",
        "arena_bytes": arena_bytes,
        "cold_load_s": cold,
        "memory_source": source,
        "gpu_context": context,
        "gpu_loaded": loaded,
        "cycles": cycles,
    }


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / MIB:,.0f} MiB"


def verdicts(result: dict[str, Any]) -> dict[str, Any]:
    ratios = [c["ratio"] for c in result["cycles"]]
    ratio = statistics.median(ratios)
    context = result["gpu_context"]
    afters = [c["gpu_after_offload"] for c in result["cycles"]]
    excess = None if context is None or None in afters else max(afters) - context
    return {
        "wake_ratio": ratio,
        "wake_ratio_ok": ratio >= RATIO_TARGET,
        "offload_excess_bytes": excess,
        "offload_memory_ok": None if excess is None else excess <= MEMORY_SLACK,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gb", type=float, default=3.5, help="model size in GB (bf16)")
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a smoke test")
    parser.add_argument("--mode", choices=("auto", "worker", "inprocess"), default="auto")
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print("gpu_swap: torch is not installed; run this where the workers run", file=sys.stderr)
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "gpu_swap: no CUDA device (torch.cuda.is_available() is False). Run this on a machine with an "
            "NVIDIA GPU, or pass --device cpu for a smoke test whose numbers mean nothing.",
            file=sys.stderr,
        )
        return 2
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
        torch.cuda.init()
        props = torch.cuda.get_device_properties(device)
        say(f"{props.name}, {props.total_memory / GIB:.1f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}")
    memory = GpuMemory(device.index or 0) if device.type == "cuda" else GpuMemory(-1)
    own_context, _ = memory.of(os.getpid()) if device.type == "cuda" else (None, "")
    worker_ready = all(importlib.util.find_spec(m) for m in ("aiohttp", "transformers", "tokenizers"))
    mode = args.mode if args.mode != "auto" else ("worker" if worker_ready else "inprocess")
    raw = raw_bandwidth(torch, int(args.size_gb * 1e9), device)
    say(
        f"raw pinned host-to-device copy: {raw['bytes'] / 1e9:.2f} GB, median {raw['median_s'] * 1e3:.1f} ms "
        f"= {raw['gbps']:.1f} GB/s (best {raw['best_gbps']:.1f})"
    )
    with tempfile.TemporaryDirectory(prefix="gpu-swap-") as tmp:
        if mode == "worker":
            result = run_worker_mode(args, raw, memory, Path(tmp))
        else:
            result = run_inprocess_mode(args, raw, memory, own_context, torch, device)
    result.update({"raw": raw, "device": str(device), **verdicts(result)})
    ratio_line = f"wake / raw bandwidth: {result['wake_ratio']:.3f} (target >= {RATIO_TARGET}): "
    say(ratio_line + ("PASS" if result["wake_ratio_ok"] else "MISS"))
    if result["offload_memory_ok"] is None:
        say("GPU memory after offload: not measurable here (no NVML / nvidia-smi, or a CPU run)")
    else:
        say(
            f"GPU memory after offload ({result['memory_source']}): {_mib(result['offload_excess_bytes'])} above "
            f"the CUDA context of {_mib(result['gpu_context'])} (target <= 300 MiB): "
            + ("PASS" if result["offload_memory_ok"] else "MISS")
        )
    if device.type != "cuda":
        say("CPU smoke run: the numbers above say nothing about a GPU")
    say(f"done in {time.monotonic() - STARTED:.0f} s")
    print(json.dumps(result, indent=1, default=str))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(result, indent=1, default=str))
    missed = result["wake_ratio_ok"] is False or result["offload_memory_ok"] is False
    return 1 if args.strict and missed and device.type == "cuda" else 0


if __name__ == "__main__":
    sys.exit(main())
