"""Residency scheduler: decides what lives in VRAM, what sleeps in host RAM, what is stopped.

Owns: the pure decision core (`ResidencyCore`), its event and action vocabulary, the
memory model, the policy functions and the vLLM sizing helper. The asyncio loop that
executes actions (`loop.py`) lives here too but is the only impure module.

Must not: import the loop from the pure modules; nothing here but `loop.py` does I/O.
"""

from appliance.scheduler.core import ResidencyCore
from appliance.scheduler.events import (
    Action,
    ActionFailed,
    ActionKind,
    CostsMeasured,
    Dispatch,
    EngineExited,
    EngineReady,
    Event,
    ForceStop,
    GpuSample,
    Preempt,
    Prefetch,
    Prefetched,
    Reject,
    ReleaseDone,
    RequestArrived,
    RequestCancelled,
    RequestDone,
    Sleep,
    Start,
    Stop,
    Tick,
    Unload,
    Wake,
)
from appliance.scheduler.memory import Footprints, FootprintStore, InMemoryFootprintStore, MemoryBudget
from appliance.scheduler.policy import PolicySettings
from appliance.scheduler.sizing import VllmSizing, size_vllm
from appliance.scheduler.snapshot import CoreSnapshot, SlotView
from appliance.scheduler.types import GB, ModelKind, ModelProfile, Request, SwapCosts, Tier

__all__ = [
    "GB",
    "Action",
    "ActionFailed",
    "ActionKind",
    "CoreSnapshot",
    "CostsMeasured",
    "Dispatch",
    "EngineExited",
    "EngineReady",
    "Event",
    "FootprintStore",
    "Footprints",
    "ForceStop",
    "GpuSample",
    "InMemoryFootprintStore",
    "MemoryBudget",
    "ModelKind",
    "ModelProfile",
    "PolicySettings",
    "Preempt",
    "Prefetch",
    "Prefetched",
    "Reject",
    "ReleaseDone",
    "Request",
    "RequestArrived",
    "RequestCancelled",
    "RequestDone",
    "ResidencyCore",
    "Sleep",
    "SlotView",
    "Start",
    "Stop",
    "SwapCosts",
    "Tick",
    "Tier",
    "Unload",
    "VllmSizing",
    "Wake",
    "size_vllm",
]
