"""The shipped defaults that the configuration and the scheduler's simulator share.

Owns: each number that the configuration's defaults (`appliance/config.py`, and so the shipped
`config.toml`) and the simulator's calibration (`appliance/sim/calibration.py`) must agree on,
defined once, so that `bench/scheduler.py` measures the box a user gets.

Must not: import anything, read files, or hold anything but constants.
"""

from __future__ import annotations

HOST_RAM_BUDGET_GB = 32.0
"""`gpu.host_ram_budget_gb`: host RAM for slept (or offloaded) weights, read as GiB."""

VRAM_RESERVE_GB = 1.5
"""`gpu.reserve_gb`: VRAM kept free for CUDA contexts and fragmentation, in GiB."""

MAX_TOKENS_CAP = 4096
"""`models.NAME.max_tokens_cap`: an LLM answer's length cap (it bounds how long a drain can take)."""

DRAIN_DEADLINE_S = 300.0
"""`scheduler.drain_deadline_s`: how long a switch's victims may keep draining past the waiting
model's max_wait before their resumable streams are preempted and, if work is left, their engine is
stopped. Longer than any answer the cap allows (4,096 tokens at 20 tokens/s in a full batch is
205 s), so only a hung or runaway request reaches it."""
