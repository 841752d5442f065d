"""vLLM sized to what co-resident models leave, instead of the 0.9 default."""

from __future__ import annotations

import pytest

from appliance.scheduler import GB, size_vllm

GIB = 1 << 30
KV = 262_144  # Qwen2.5-32B: 64 layers x 8 KV heads x 128 x 2 x 2 bytes


def test_alone_on_a_24_gib_card() -> None:
    s = size_vllm(gpu_total_bytes=24 * GIB, coresident_bytes=0, reserve_bytes=int(1.5 * GIB),
                  weights_bytes=int(19.3 * GB), kv_bytes_per_token=KV, overhead_bytes=GIB)
    assert s.gpu_memory_utilization == pytest.approx(0.937, abs=1e-3)
    assert s.gpu_memory_utilization * 24 * GIB <= 24 * GIB - 1.5 * GIB
    assert s.kv_cache_bytes == int(s.gpu_memory_utilization * 24 * GIB) - int(19.3 * GB) - GIB
    assert s.max_model_len == s.kv_cache_tokens // 16 * 16
    assert s.flags()[:2] == ["--gpu-memory-utilization", f"{s.gpu_memory_utilization:.3f}"]


def test_beside_a_co_resident_model_the_fraction_and_length_shrink() -> None:
    alone = size_vllm(gpu_total_bytes=24 * GIB, coresident_bytes=0, reserve_bytes=GIB,
                      weights_bytes=8 * GIB, kv_bytes_per_token=KV, overhead_bytes=GIB)
    shared = size_vllm(gpu_total_bytes=24 * GIB, coresident_bytes=int(3.4 * GB), reserve_bytes=GIB,
                       weights_bytes=8 * GIB, kv_bytes_per_token=KV, overhead_bytes=GIB)
    assert shared.gpu_memory_utilization < alone.gpu_memory_utilization < 0.97
    assert shared.max_model_len < alone.max_model_len
    left = 24 * GIB - shared.gpu_memory_utilization * 24 * GIB
    assert left >= 3.4 * GB + GIB


def test_length_capped_by_model_and_by_concurrent_sequences() -> None:
    s = size_vllm(gpu_total_bytes=24 * GIB, coresident_bytes=0, reserve_bytes=GIB, weights_bytes=8 * GIB,
                  kv_bytes_per_token=KV, overhead_bytes=GIB, model_max_len=32_768)
    assert s.max_model_len == 32_768
    four = size_vllm(gpu_total_bytes=24 * GIB, coresident_bytes=0, reserve_bytes=GIB, weights_bytes=8 * GIB,
                     kv_bytes_per_token=KV, overhead_bytes=GIB, min_full_sequences=4)
    assert four.max_model_len == four.kv_cache_tokens // 4 // 16 * 16


def test_llm_beside_xtts_does_not_fit_with_a_useful_context() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        size_vllm(gpu_total_bytes=24 * GIB, coresident_bytes=int(3.4 * GB), reserve_bytes=int(1.5 * GIB),
                  weights_bytes=int(19.3 * GB), kv_bytes_per_token=KV, overhead_bytes=GIB)


def test_nonsense_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        size_vllm(gpu_total_bytes=0, coresident_bytes=0, reserve_bytes=0, weights_bytes=1,
                  kv_bytes_per_token=1, overhead_bytes=0)
