"""What one engine lifecycle `Transition` from the supervisor means to the residency manager.

Owns the rule, and only the rule (pure; the manager passes what it asked for itself):
- a process that was serving (READY) or being stopped is gone, and the manager did not stop it
  (a crash, an OOM kill, an operator's stop): its models' residency is lost -> `EngineExited`;
- a READY the manager did not ask for (an operator started a scheduled engine): park it, since the
  core believes its models are on disk;
- FATAL: the engine's waiting requests are answered at once (503 with the cool-down as
  Retry-After) instead of waiting for a start that the supervisor refuses.
Must not: hold state, do I/O or decide residency (the core does).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..supervisor.states import ProcessState, Transition


@dataclass(frozen=True, slots=True)
class Reaction:
    exited: bool = False  # post EngineExited for each of the engine's models
    park: bool = False  # release (or stop) the engine until the core asks for it
    fail_waiting: bool = False  # answer the engine's queued requests with 503 now


def react(t: Transition, *, started_by_us: bool, stopped_by_us: bool) -> Reaction:
    """`started_by_us`: the manager is starting this engine (its READY is expected);
    `stopped_by_us`: the manager is stopping it (its STOPPED is expected)."""
    exited = t.process_lost and not (t.new is ProcessState.STOPPED and stopped_by_us)
    park = t.new is ProcessState.READY and not started_by_us
    return Reaction(exited=exited, park=park, fail_waiting=t.new is ProcessState.FATAL)
