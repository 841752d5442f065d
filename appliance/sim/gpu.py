"""The simulated GPU and its engines: who computes how fast at each moment.

Owns: the running jobs of every engine and their remaining work (in seconds of GPU at
batch 1 alone). Co-resident engines that are busy at the same time share the one GPU's
compute equally (time slicing); an LLM engine batches its streams continuously, each
stream progressing at batch ** (exponent - 1) of its batch-1 speed, and admits streams
while their tokens fit the KV cache (the rest wait inside the engine, as in vLLM). Image
and speech engines run one job at a time and queue the rest inside the engine.

Must not: decide residency. It runs what the simulator dispatches and reports when jobs end.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from appliance.sim.calibration import Calibration

EPSILON = 1e-9


@dataclass(slots=True)
class Job:
    rid: str
    model: str
    prefill_left: float
    decode_left: float
    prompt_tokens: int
    output_tokens: int
    kv_tokens: int
    started: float = 0.0

    @property
    def remaining(self) -> float:
        return self.prefill_left + self.decode_left


@dataclass(slots=True)
class Engine:
    model: str
    is_llm: bool
    concurrency: int
    kv_budget: int
    running: list[Job] = field(default_factory=list)
    waiting: deque[Job] = field(default_factory=deque)
    kv_used: int = 0

    def has_jobs(self) -> bool:
        return bool(self.running) or bool(self.waiting)


class Gpu:
    def __init__(self, cal: Calibration, time_sliced: bool) -> None:
        self.cal = cal
        self.time_sliced = time_sliced
        self.exponent = cal.llm.batch_exponent
        self.engines = {
            m.id: Engine(m.id, m.kind.value == "llm", m.concurrency, cal.llm.kv_tokens) for m in cal.models
        }
        self.mark = 0.0
        self.version = 0
        self._rates: dict[str, float] = {}

    # --------------------------------------------------------------- progress

    def _recompute_rates(self) -> None:
        busy = [e for e in self.engines.values() if e.running]
        share = 1.0 / len(busy) if (self.time_sliced and busy) else 1.0
        self._rates = {}
        for e in busy:
            if e.is_llm:
                self._rates[e.model] = share * len(e.running) ** (self.exponent - 1.0)
            else:
                self._rates[e.model] = share
        self.version += 1

    def advance(self, now: float) -> None:
        dt = now - self.mark
        self.mark = now
        if dt <= 0:
            return
        for model, rate in self._rates.items():
            step = rate * dt
            for job in self.engines[model].running:
                take = min(job.prefill_left, step)
                job.prefill_left -= take
                job.decode_left -= step - take

    def next_completion(self) -> float | None:
        best: float | None = None
        for model, rate in self._rates.items():
            for job in self.engines[model].running:
                t = self.mark + max(job.remaining, 0.0) / rate
                if best is None or t < best:
                    best = t
        return best

    # ----------------------------------------------------------------- changes

    def submit(self, job: Job, now: float) -> None:
        self.advance(now)
        engine = self.engines[job.model]
        engine.waiting.append(job)
        self._admit(engine, now)
        self._recompute_rates()

    def _admit(self, engine: Engine, now: float) -> None:
        while engine.waiting and len(engine.running) < engine.concurrency:
            job = engine.waiting[0]
            if engine.is_llm and engine.running and engine.kv_used + job.kv_tokens > engine.kv_budget:
                break
            engine.waiting.popleft()
            engine.kv_used += job.kv_tokens
            job.started = now
            engine.running.append(job)

    def complete_due(self, now: float) -> list[Job]:
        """Jobs whose work is done at `now` (after advancing), removed from their engines."""
        self.advance(now)
        done: list[Job] = []
        for model in list(self._rates):
            engine = self.engines[model]
            finished = [j for j in engine.running if j.remaining <= EPSILON * max(1.0, now)]
            if not finished:
                continue
            for job in finished:
                engine.running.remove(job)
                engine.kv_used -= job.kv_tokens
                done.append(job)
            self._admit(engine, now)
        if done:
            self._recompute_rates()
        return done

    def abandon(self, model: str, rid: str, now: float) -> None:
        """Drop a running or engine-queued job without finishing it (its engine is being stopped)."""
        engine = self.engines[model]
        self._take(engine, rid, now)
        self._admit(engine, now)
        self._recompute_rates()

    def _take(self, engine: Engine, rid: str, now: float) -> Job:
        """Remove job `rid`, running (its KV cache freed) or queued in the engine, after advancing to `now`."""
        self.advance(now)
        job = next((j for j in engine.running if j.rid == rid), None)
        if job is not None:
            engine.running.remove(job)
            engine.kv_used -= job.kv_tokens
            return job
        job = next(j for j in engine.waiting if j.rid == rid)
        engine.waiting.remove(job)
        return job

    def preempt(self, model: str, rid: str, now: float) -> Job:
        """Abort a running or engine-queued stream; returns it rebuilt for resumption.

        The resumed stream re-prefills its prompt plus the tokens already sent, which the
        KV offload (LMCache) and prefix cache make `resume_prefill_speedup` times cheaper.
        """
        engine = self.engines[model]
        job = self._take(engine, rid, now)
        llm = self.cal.llm
        decode_total = job.output_tokens / llm.decode_tps
        sent = int(max(decode_total - job.decode_left, 0.0) * llm.decode_tps)
        resumed = Job(
            rid=job.rid,
            model=job.model,
            prefill_left=(job.prompt_tokens + sent) / (llm.prefill_tps * llm.resume_prefill_speedup),
            decode_left=max(job.decode_left, 0.0),
            prompt_tokens=job.prompt_tokens,
            output_tokens=job.output_tokens,
            kv_tokens=job.kv_tokens,
        )
        self._admit(engine, now)
        self._recompute_rates()
        return resumed
