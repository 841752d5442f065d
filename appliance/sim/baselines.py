"""The peers' scheduling policies, rebuilt over the same events and actions as the core.

Owns three baselines and the reference policy, each a pure scheduler (events in,
actions out) that the simulator drives exactly like `ResidencyCore`:

- `LlamaSwapFifo` (B1): llama-swap's default FIFO scheduler with one model at a time
  (the `swap` group): a request for the ready model is served at once (fast path, so
  A B C A B C runs as A A B B C C); any other request queues; a swap is started only when
  the models it would stop have nothing in flight, stops them, then starts the target
  from scratch; requests for a model being swapped in join that swap. No TTL (llama-swap
  defaults to 0 = never). Its per-model concurrencyLimit (429 past 10) is modelled as
  queueing in the engine instead, so that every request's latency is measured.
- `OllamaLike` (B2, and B3 with `sleep=True`): Ollama's scheduler loop. One global FIFO
  of pending requests; the head is sent to its runner at once when that runner is
  loaded (the runner queues beyond its parallel slots); otherwise the loop blocks, which
  also holds back requests for already loaded models (ollama#5724): it loads the model
  if it fits beside what is loaded, else picks a runner to unload (idle ones first, then
  least recently used), waits for that runner's requests to finish, unloads it, and
  tries again. One load at a time. keep_alive 5 min after a runner goes idle. B2 unloads
  by stopping and loads from disk; B3 sleeps to host RAM (while it has room) and wakes,
  and with host RAM full unloads keeping the process (a load from disk, not a cold start),
  as the daemon's mechanism does.
- `AllResident` (LBps, LB2): every model resident from the start, every request
  dispatched on arrival; with a time-sliced GPU this is one GPU with free swaps, with
  separate GPUs it is a GPU per model.

Must not: be tuned to look worse than the peers are: these follow the peers' own source
(llama-swap internal/router/scheduler/fifo.go, Ollama server/sched.go).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from appliance.scheduler.events import (
    Action,
    Dispatch,
    EngineReady,
    Event,
    ReleaseDone,
    RequestArrived,
    RequestDone,
    Sleep,
    Start,
    Stop,
    Unload,
    Wake,
)
from appliance.scheduler.types import Request


class AllResident:
    """Reference policy: every model always resident; requests go straight to their engine."""

    def handle(self, event: Event) -> list[Action]:
        if isinstance(event, RequestArrived):
            return [Dispatch(event.request.model, event.request.id)]
        return []

    def next_deadline(self) -> float | None:
        return None


@dataclass(slots=True)
class _Runner:
    state: str = "none"  # none | loading | ready | unloading
    refcount: int = 0
    last_used: float = 0.0
    in_host: bool = False


class OllamaLike:
    def __init__(
        self,
        sizes: dict[str, int],
        weights: dict[str, int],
        vram_budget: int,
        host_budget: int,
        *,
        sleep: bool,
        keep_alive_s: float = 300.0,
        in_host: frozenset[str] = frozenset(),
    ) -> None:
        self.sizes = sizes
        self.weights = weights
        self.budget = vram_budget
        self.host_budget = host_budget
        self.sleep = sleep
        self.keep_alive_s = keep_alive_s
        self.runners = {m: _Runner(in_host=m in in_host) for m in sizes}
        self.pending: deque[Request] = deque()
        self.model_of: dict[str, str] = {}
        self.now = 0.0

    def handle(self, event: Event) -> list[Action]:
        self.now = max(self.now, event.now)
        out: list[Action] = []
        match event:
            case RequestArrived(request=r):
                self.pending.append(r)
            case RequestDone(request_id=rid):
                model = self.model_of.pop(rid, None)
                if model is not None:
                    runner = self.runners[model]
                    runner.refcount -= 1
                    runner.last_used = self.now
            case EngineReady(model=m):
                self.runners[m].state = "ready"
                self.runners[m].last_used = self.now
            case ReleaseDone(model=m):
                self.runners[m].state = "none"
        self._expire(out)
        self._pump(out)
        return out

    def next_deadline(self) -> float | None:
        times = [
            r.last_used + self.keep_alive_s
            for r in self.runners.values()
            if r.state == "ready" and r.refcount == 0 and r.last_used + self.keep_alive_s > self.now
        ]
        return min(times) if times else None

    def _expire(self, out: list[Action]) -> None:
        for model, r in self.runners.items():
            if r.state == "ready" and r.refcount == 0 and self.now - r.last_used >= self.keep_alive_s:
                self._unload(model, out)

    def _pump(self, out: list[Action]) -> None:
        while self.pending:
            request = self.pending[0]
            runner = self.runners[request.model]
            if runner.state == "ready":
                self.pending.popleft()
                runner.refcount += 1
                runner.last_used = self.now
                self.model_of[request.id] = request.model
                out.append(Dispatch(request.model, request.id))
                continue
            if runner.state != "none" or any(r.state in ("loading", "unloading") for r in self.runners.values()):
                return  # blocked: a load or unload is under way
            loaded = sum(self.sizes[m] for m, r in self.runners.items() if r.state == "ready")
            if loaded + self.sizes[request.model] <= self.budget:
                self._load(request.model, out)
                return
            ready = [m for m, r in self.runners.items() if r.state == "ready"]
            if not ready:
                return
            victim = min(ready, key=lambda m: (self.runners[m].refcount > 0, self.runners[m].last_used))
            if self.runners[victim].refcount == 0:
                self._unload(victim, out)
            return  # wait for the victim's requests to finish, or for the unload

    def _load(self, model: str, out: list[Action]) -> None:
        runner = self.runners[model]
        runner.state = "loading"
        if self.sleep and runner.in_host:
            runner.in_host = False
            out.append(Wake(model))
        else:
            out.append(Start(model))

    def _unload(self, model: str, out: list[Action]) -> None:
        runner = self.runners[model]
        runner.state = "unloading"
        in_host = sum(self.weights[m] for m, r in self.runners.items() if r.in_host)
        if self.sleep and in_host + self.weights[model] <= self.host_budget:
            runner.in_host = True
            out.append(Sleep(model))
        elif self.sleep:  # host RAM is full: our mechanism's next step keeps the process (a load from disk)
            out.append(Unload(model))
        else:
            out.append(Stop(model))


@dataclass(slots=True)
class _Swap:
    evict: tuple[str, ...]
    waiters: list[Request] = field(default_factory=list)
    starting: bool = False


class LlamaSwapFifo:
    """llama-swap's FIFO scheduler over an exclusive group: one model at a time."""

    def __init__(self, models: list[str]) -> None:
        self.proc = dict.fromkeys(models, "stopped")  # stopped | starting | ready | stopping
        self.in_flight = dict.fromkeys(models, 0)
        self.queue: list[Request] = []
        self.active: dict[str, _Swap] = {}
        self.model_of: dict[str, str] = {}

    def handle(self, event: Event) -> list[Action]:
        out: list[Action] = []
        match event:
            case RequestArrived(request=r):
                if not self._decide(r, out):
                    self.queue.append(r)
            case RequestDone(request_id=rid):
                model = self.model_of.pop(rid, None)
                if model is not None:
                    self.in_flight[model] -= 1
                    if self.in_flight[model] <= 0:
                        self._drain_queue(out)
            case ReleaseDone(model=m):
                self.proc[m] = "stopped"
                for target, swap in self.active.items():
                    if not swap.starting and all(self.proc[e] == "stopped" for e in swap.evict):
                        swap.starting = True
                        self.proc[target] = "starting"
                        out.append(Start(target))
            case EngineReady(model=m):
                self.proc[m] = "ready"
                waiters = self.active.pop(m).waiters if m in self.active else []
                for waiter in waiters:
                    self._grant(waiter, out)
                self._drain_queue(out)
        return out

    def next_deadline(self) -> float | None:
        return None

    def _decide(self, r: Request, out: list[Action]) -> bool:
        """The fifo.go decision tree; False means "queue it"."""
        model = r.model
        if model in self.active:
            self.active[model].waiters.append(r)
            return True
        running = {m for m, s in self.proc.items() if s != "stopped"} | (set(self.active) - {model})
        evict = tuple(sorted(running - {model}))
        collides = any(
            target in evict or model in swap.evict or set(evict) & set(swap.evict)
            for target, swap in self.active.items()
            if target != model
        )
        if self.proc[model] == "ready" and not evict and not collides:
            self._grant(r, out)
            return True
        if collides or any(self.in_flight[e] > 0 for e in evict):
            return False
        swap = _Swap(evict, [r])
        self.active[model] = swap
        stopping = [e for e in evict if self.proc[e] in ("ready", "starting")]
        for e in stopping:
            self.proc[e] = "stopping"
            out.append(Stop(e))
        if all(self.proc[e] == "stopped" for e in evict):
            swap.starting = True
            self.proc[model] = "starting"
            out.append(Start(model))
        return True

    def _grant(self, r: Request, out: list[Action]) -> None:
        self.in_flight[r.model] += 1
        self.model_of[r.id] = r.model
        out.append(Dispatch(r.model, r.id))

    def _drain_queue(self, out: list[Action]) -> None:
        pending, self.queue = self.queue, []
        for r in pending:
            if not self._decide(r, out):
                self.queue.append(r)
