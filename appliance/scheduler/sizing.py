"""Size vLLM to what is left beside co-resident models, instead of its 0.9 default.

Owns: the arithmetic from (GPU total, bytes kept for co-residents, a safety reserve,
weights, KV bytes per token, CUDA context and activation overhead) to vLLM's
`--gpu-memory-utilization` (the fraction of the *whole* GPU the vLLM instance may
take: weights, activations, KV cache and its own context) and `--max-model-len`.

Must not: probe the GPU or read configuration; the caller passes measured or
catalog numbers and turns the result into command-line flags.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

KV_BLOCK_TOKENS = 16
"""vLLM allocates KV in blocks of 16 tokens by default; lengths are rounded down to a block."""


@dataclass(frozen=True, slots=True)
class VllmSizing:
    gpu_memory_utilization: float
    max_model_len: int
    kv_cache_bytes: int
    kv_cache_tokens: int

    def flags(self) -> list[str]:
        return [
            "--gpu-memory-utilization",
            f"{self.gpu_memory_utilization:.3f}",
            "--max-model-len",
            str(self.max_model_len),
        ]


def size_vllm(
    *,
    gpu_total_bytes: int,
    coresident_bytes: int,
    reserve_bytes: int,
    weights_bytes: int,
    kv_bytes_per_token: int,
    overhead_bytes: int,
    model_max_len: int | None = None,
    min_full_sequences: int = 1,
    min_model_len: int = 2048,
) -> VllmSizing:
    """Fraction and max length that leave `coresident_bytes` plus `reserve_bytes` free.

    The fraction is rounded down to three decimals so vLLM never takes more than the
    space it was given. `overhead_bytes` covers the CUDA context, CUDA graphs and the
    activation peak vLLM profiles at start. The max length is what the KV cache left over
    holds for `min_full_sequences` sequences at once, capped at the model's own limit and
    rounded down to a KV block. Raises ValueError when less than `min_model_len` fits.
    """
    if min(gpu_total_bytes, weights_bytes, kv_bytes_per_token) <= 0 or min_full_sequences < 1:
        raise ValueError("GPU total, weights, KV bytes per token and sequences must be positive")
    if min(coresident_bytes, reserve_bytes, overhead_bytes) < 0:
        raise ValueError("co-resident, reserve and overhead bytes must not be negative")
    allowed = gpu_total_bytes - coresident_bytes - reserve_bytes
    fraction = math.floor(allowed / gpu_total_bytes * 1000) / 1000
    granted = int(fraction * gpu_total_bytes)
    kv_bytes = granted - weights_bytes - overhead_bytes
    kv_tokens = kv_bytes // kv_bytes_per_token if kv_bytes > 0 else 0
    per_sequence = kv_tokens // min_full_sequences
    if model_max_len is not None:
        per_sequence = min(per_sequence, model_max_len)
    max_len = per_sequence // KV_BLOCK_TOKENS * KV_BLOCK_TOKENS
    if max_len < min_model_len:
        raise ValueError(
            f"vLLM does not fit: {max(kv_bytes, 0)} bytes left for KV cache hold {kv_tokens} tokens, "
            f"below the minimum length {min_model_len} x {min_full_sequences} sequence(s)"
        )
    return VllmSizing(
        gpu_memory_utilization=fraction,
        max_model_len=max_len,
        kv_cache_bytes=kv_bytes,
        kv_cache_tokens=kv_tokens,
    )
