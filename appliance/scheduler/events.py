"""Events fed to the residency core, and the actions it returns.

Owns: the vocabulary between the pure core and whoever drives it (the daemon's
residency loop, the simulator, tests). Every event carries `now`, the time in seconds
on the driver's monotonic clock; the core never reads a clock. Every action names the
model it concerns; request-level actions carry the request id the driver maps to a
waiting caller.

Must not: contain behaviour. These are plain frozen values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from appliance.scheduler.types import Request, SwapCosts

# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class RequestArrived:
    now: float
    request: Request


@dataclass(frozen=True, slots=True)
class RequestDone:
    """A dispatched request finished (successfully or not) and left the engine."""

    now: float
    request_id: str


@dataclass(frozen=True, slots=True)
class RequestCancelled:
    """The client went away, while waiting or while running (the driver aborts the engine call)."""

    now: float
    request_id: str


@dataclass(frozen=True, slots=True)
class EngineReady:
    """A Start or Wake completed: the model is in VRAM and answers its readiness probe."""

    now: float
    model: str


@dataclass(frozen=True, slots=True)
class EngineExited:
    """The engine process died without being asked to (crash, OOM kill)."""

    now: float
    model: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ReleaseDone:
    """A Sleep, Unload or Stop is verified: the GPU probe shows the memory dropped.

    held_bytes is what the engine still holds on the GPU afterwards (CUDA context of a
    sleeping engine), measured; None when unknown.
    """

    now: float
    model: str
    held_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class Prefetched:
    """A Prefetch completed: the sleeping model's weights are back in VRAM (not yet servable)."""

    now: float
    model: str


class ActionKind(StrEnum):
    START = "start"
    WAKE = "wake"
    PREFETCH = "prefetch"
    SLEEP = "sleep"
    UNLOAD = "unload"
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class ActionFailed:
    """A Start, Wake, Prefetch, Sleep, Unload or Stop failed or missed its deadline.

    After a failed Start, Wake or Prefetch the driver has stopped the engine, unless
    `engine_untouched`: the driver declined the action before reaching the engine (a Prefetch
    that the GPU's measured free memory could not hold), so the engine is as it was.
    """

    now: float
    model: str
    action: ActionKind
    detail: str = ""
    engine_untouched: bool = False


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One reading of the GPU probe: totals and the bytes each model's processes hold."""

    now: float
    total_bytes: int
    free_bytes: int
    used_by_model: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CostsMeasured:
    """The driver measured `model`'s transitions: these costs replace its estimates (what
    GreedyDual weighs as the way back, what a restore prices, what Retry-After adds)."""

    now: float
    model: str
    costs: SwapCosts


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed; the driver sends one at `core.next_deadline()` (and may send more)."""

    now: float


@dataclass(frozen=True, slots=True)
class OperatorPin:
    """An operator pinned (or unpinned) the model: a pinned model is loaded and never evicted."""

    now: float
    model: str
    pinned: bool


@dataclass(frozen=True, slots=True)
class OperatorRelease:
    """An operator asked to release the model from VRAM now (honoured when it is resident, idle, unpinned)."""

    now: float
    model: str


Event = (
    RequestArrived
    | RequestDone
    | RequestCancelled
    | EngineReady
    | Prefetched
    | EngineExited
    | ReleaseDone
    | ActionFailed
    | GpuSample
    | CostsMeasured
    | OperatorPin
    | OperatorRelease
    | Tick
)

# -------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Start:
    """Bring the model into VRAM from disk: start the engine, or load into a running one."""

    model: str


@dataclass(frozen=True, slots=True)
class Wake:
    """Bring the model into VRAM from host RAM (vLLM /wake_up, worker /load)."""

    model: str


@dataclass(frozen=True, slots=True)
class Prefetch:
    """Bring a sleeping model's weights back into VRAM without the rest (vLLM
    /wake_up?tags=weights), while the model it does not fit beside still works; the Wake
    that follows only allocates the rest (the KV cache)."""

    model: str


@dataclass(frozen=True, slots=True)
class Sleep:
    """Move the model's weights to host RAM, keeping the process (vLLM /sleep?level=1)."""

    model: str


@dataclass(frozen=True, slots=True)
class Unload:
    """Drop the weights from VRAM, keeping the process (vLLM level 2, ComfyUI /free)."""

    model: str


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop the engine process (SIGTERM the group, then SIGKILL)."""

    model: str


@dataclass(frozen=True, slots=True)
class ForceStop:
    """Stop the engine process although requests are still in it: a victim's drain passed its
    deadline (`PolicySettings.drain_deadline_s`) with work that cannot be resumed. The core has
    forgotten `abandoned`: the driver fails them to their clients (stopping the engine breaks
    their connections), and any later RequestDone for them is ignored. Answered, like a Stop, by
    ReleaseDone once the process is gone."""

    model: str
    abandoned: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Hand the request to the model's engine.

    resume: a preempted stream continues (re-prefill prompt plus tokens already sent).
    """

    model: str
    request_id: str
    resume: bool = False


@dataclass(frozen=True, slots=True)
class Reject:
    """Answer the request with an error: 429 queue full, 503 cannot fit or engine failing, 409 a
    resident-only request for a model that is not resident."""

    model: str
    request_id: str
    status: int
    retry_after_s: float
    reason: str


@dataclass(frozen=True, slots=True)
class Preempt:
    """Abort a running LLM stream; it is re-queued and later dispatched with resume=True."""

    model: str
    request_id: str


Action = Start | Wake | Prefetch | Sleep | Unload | Stop | ForceStop | Dispatch | Reject | Preempt
ReleaseAction = Sleep | Unload | Stop
