"""Fault test (issue 13 item 2): a real `appliance serve` with a vLLM stand-in scheduled on a fake
GPU; the engine's process is killed with SIGKILL, as a user would, in every state: ready and idle,
mid-request, sleeping (its model slept to host RAM), starting, and then often enough inside the
restart window to go fatal.

Checked throughout: the daemon never logs an illegal transition or a traceback; after every kill the
engine settles in a state consistent with its process (never READY without one); every request is
answered with a documented status (docs/api.md): 200, 502 for the request the kill cut, or 503 with
Retry-After. A fatal engine says why in /api/status and heals after `restart.fatal_retry_s`.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from daemon_harness import Daemon, alive, free_port, group_members, kill_groups, vllm_engine, wait_for

from appliance.supervisor.states import ProcessState

GIB = 1 << 30
MAX_FAILURES = 5
COOL_DOWN_S = 4.0


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    fake = tmp_path / "fakegpu"
    doc: dict[str, Any] = {
        "server": {"load_deadline_s": 30.0},
        "gpu": {"probe": "fake", "fake_dir": str(fake), "declared_total_gb": 24, "reserve_gb": 1.5,
                "host_ram_budget_gb": 64, "sample_interval_s": 0.2},
        "engines": {"vllm": vllm_engine(
            free_port(),
            env={"VLLM_STANDIN_FOOTPRINT_BYTES": str(20 * GIB), "VLLM_STANDIN_TOKENS_PER_S": "20",
                 "VLLM_STANDIN_START_DELAY_S": "1.0"},
            restart={"max_failures": MAX_FAILURES, "window_s": 300, "backoff_initial_s": 0.2,
                     "backoff_max_s": 0.5, "fatal_retry_s": COOL_DOWN_S})},
        "models": {"chat": {"engine": "vllm", "modality": "text", "vram_gb": 20, "keep_alive_s": 1.0}},
    }
    d = Daemon(tmp_path, doc)
    d.start()
    try:
        yield d
    finally:
        status = d.get("/api/status")
        pgids = {e["pid"] for e in status["engines"] if e["pid"]} if status else set()
        d.stop()
        d.kill()
        kill_groups(pgids)


class Answers:
    """Every request's status and headers, for the documented-status check at the end."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, dict[str, str], dict[str, Any]]] = []

    def chat(self, d: Daemon, step: str, tokens: int = 4) -> tuple[int, dict[str, str], dict[str, Any]]:
        body = {"model": "chat", "messages": [{"role": "user", "content": "hello"}], "max_tokens": tokens}
        req = urllib.request.Request(d.url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                answer = (r.status, {k.lower(): v for k, v in r.headers.items()}, json.loads(r.read()))
        except urllib.error.HTTPError as e:
            answer = (e.code, {k.lower(): v for k, v in e.headers.items()}, json.loads(e.read()))
        self.seen.append((step, *answer))
        return answer


def kill_engine(d: Daemon) -> int:
    """SIGKILL the engine program itself (not its guard), as `kill -9` by a user; returns the pgid."""
    pgid = d.engine("vllm")["pid"]
    assert pgid, d.engine("vllm")
    members = group_members(pgid) - {pgid}
    assert members, f"no engine process under the guard {pgid}"
    for pid in members:
        os.kill(pid, signal.SIGKILL)
    return int(pgid)


def settled(d: Daemon, killed: int) -> dict[str, Any]:
    """Wait until the supervisor has noticed the kill: the engine is in a state that matches its
    process (READY only with a live process; BACKOFF, STOPPED and FATAL with none)."""
    found: dict[str, Any] = {}

    def consistent() -> bool:
        found.update(d.engine("vllm"))
        if found["pid"] == killed:
            return False
        if found["state"] in ("backoff", "stopped", "fatal"):
            return found["pid"] is None
        return found["state"] in ("ready", "starting") and bool(found["pid"]) and alive(found["pid"])

    wait_for(consistent, 10, f"the engine to settle after the kill of {killed}")
    return found


def tier(d: Daemon) -> str:
    return str(d.get("/api/status")["residency"]["models"]["chat"]["tier"])


def test_killing_an_engine_in_every_state_never_breaks_the_daemon(daemon: Daemon) -> None:
    d, answers = daemon, Answers()
    assert answers.chat(d, "cold start")[0] == 200

    # 1. ready and idle
    settled(d, kill_engine(d))
    assert answers.chat(d, "after a kill while ready")[0] == 200

    # 2. mid-request: 60 tokens at 20/s keep the request in flight for 3 s
    cut: list[tuple[int, dict[str, str], dict[str, Any]]] = []
    t = threading.Thread(target=lambda: cut.append(answers.chat(d, "cut mid-request", tokens=60)))
    t.start()
    wait_for(lambda: d.get("/api/status")["residency"]["models"]["chat"]["in_flight"] == 1, 10, "in flight")
    settled(d, kill_engine(d))
    t.join(60)
    status, _, body = cut[0]
    assert status == 502 and body["error"]["code"] == "engine_failed", body
    assert "Error" not in body["error"]["message"], body  # no exception text
    assert answers.chat(d, "after a kill mid-request")[0] == 200

    # 3. sleeping: keep_alive_s = 1 slept the idle model to host RAM, the process stays up
    wait_for(lambda: tier(d) == "host", 15, "chat slept to host RAM")
    assert d.engine("vllm")["state"] == "ready"
    settled(d, kill_engine(d))
    wait_for(lambda: tier(d) == "disk", 10, "the core to drop the lost host copy")
    assert answers.chat(d, "after a kill while sleeping")[0] == 200

    # 4. starting: the next request starts the engine (1 s of loading); kill it while it loads
    settled(d, kill_engine(d))  # the 4th failure: backoff, then stopped until needed
    wait_for(lambda: d.engine("vllm")["state"] == "stopped", 10, "stopped after the backoff")
    late: list[tuple[int, dict[str, str], dict[str, Any]]] = []
    t = threading.Thread(target=lambda: late.append(answers.chat(d, "kill while starting")))
    t.start()
    wait_for(lambda: (e := d.engine("vllm"))["state"] == "starting" and bool(e["pid"])
             and len(group_members(e["pid"])) > 1, 10, "the engine starting")
    starting = kill_engine(d)  # the 5th failure in the window: fatal
    t.join(60)
    fatal = settled(d, starting)
    assert fatal["state"] == "fatal" and fatal["pid"] is None, fatal
    assert f"{MAX_FAILURES} failures within 300s" in fatal["last_error"], fatal
    assert 0 < fatal["retry_in_s"] <= COOL_DOWN_S, fatal
    assert late[0][0] == 503, late  # the request waiting for that start is answered at once

    # 5. fatal: requests get 503 with Retry-After and a message saying why
    status, headers, body = answers.chat(d, "while fatal")
    assert status == 503 and 1 <= int(headers["retry-after"]) <= COOL_DOWN_S + 1, (status, headers, body)
    assert "fatal" in body["error"]["message"] and "retried automatically" in body["error"]["message"], body

    # 6. the cool-down ends: stopped (a scheduled engine starts on demand), and the next request is served
    wait_for(lambda: d.engine("vllm")["state"] == "stopped", COOL_DOWN_S + 10, "the fatal cool-down to end")
    assert answers.chat(d, "after the cool-down")[0] == 200

    log = d.log.read_text(errors="replace")
    assert "illegal transition" not in log.lower() and "Traceback" not in log, log[-4000:]
    for step, status, headers, body in answers.seen:
        assert status in (200, 502, 503), (step, status, body)
        if status == 503:
            assert "retry-after" in headers and body["error"]["code"] == "model_unavailable", (step, headers, body)
        if status == 502:
            assert step == "cut mid-request", (step, body)


def test_status_table_says_when_a_fatal_or_backoff_engine_is_retried() -> None:
    from appliance.cli import engine_state_text

    assert engine_state_text({"state": "fatal", "retry_in_s": 593.4}) == "fatal (retry in 593s)"
    assert engine_state_text({"state": "fatal", "retry_in_s": None}) == "fatal (until started by hand)"
    assert engine_state_text({"state": "backoff", "retry_in_s": 0.4}) == "backoff (retry in 0s)"
    assert engine_state_text({"state": "ready", "retry_in_s": 0.0}) == "ready"


class _FakeProcess:
    def retry_in(self) -> float | None:
        return 3.0


class _FakeEngine:
    """What DirectResidency touches of an Engine: a CPU worker that is fatal, or dies during /load."""

    name = "text"
    base_url = "http://127.0.0.1:1"
    process = _FakeProcess()
    adapter = SimpleNamespace(missing_weights=lambda: False)  # the weights are there: the failure is the engine

    def __init__(self, failure: Exception, on: str) -> None:
        self.failure, self.on = failure, on
        self.state = ProcessState.BACKOFF

    async def ensure_ready(self, timeout_s: float | None = None) -> None:
        if self.on == "ready":
            raise self.failure

    async def activate(self) -> None:
        raise self.failure


async def test_cpu_model_of_a_fatal_engine_is_503_with_the_cool_down_as_retry_after() -> None:
    """Regression: DirectResidency answered with the machine's next backoff delay, and a ControlError
    from `/load` (the worker died after its probe) escaped as a 500 carrying its text."""
    from appliance.engines.base import ControlError
    from appliance.residency import DirectResidency, ModelUnavailable
    from appliance.supervisor.process import EngineUnavailable

    fatal = _FakeEngine(EngineUnavailable("engine text is fatal (…); it is retried automatically in 42s", 42.0),
                        "ready")
    with pytest.raises(ModelUnavailable) as err:
        async with DirectResidency({"text": fatal}, {"tiny": "text"}).lease("tiny"):  # type: ignore[dict-item]
            pass
    assert err.value.retry_after == 42.0 and "fatal" in str(err.value)

    dying = _FakeEngine(ControlError("text: POST /load failed: ClientConnectorError(secret)"), "activate")
    with pytest.raises(ModelUnavailable) as err:
        async with DirectResidency({"text": dying}, {"tiny": "text"}).lease("tiny"):  # type: ignore[dict-item]
            pass
    assert "secret" not in str(err.value) and "ClientConnectorError" not in str(err.value)
    assert err.value.retry_after == 3.0 and "engine text is backoff" in str(err.value)


async def test_a_crash_reaches_the_scheduler_even_when_the_event_bus_drops_everything(tmp_path: Path) -> None:
    """Regression (issue 13 item 5): crashes reached the residency manager over the EventBus, which
    drops a slow subscriber's oldest events; a lost one left the core believing the model resident.
    Here the bus delivers nothing at all, and the crash must still be seen."""
    from test_residency_integration import rig, until

    async with rig(tmp_path) as r:
        await r.chat()
        r.app.bus.publish = lambda event: None  # type: ignore[method-assign]
        eng = r.app.engines["vllm"]
        pgid = eng.process.pid
        assert pgid is not None and r.app.residency.tier("chat") == "vram"
        for pid in group_members(pgid) - {pgid}:
            os.kill(pid, signal.SIGKILL)
        await until(lambda: r.app.residency.tier("chat") == "disk", "the core to drop the crashed model")
        assert eng.state in (ProcessState.BACKOFF, ProcessState.STOPPED)
        await r.chat()  # restarted by the residency manager, on demand
        assert eng.state is ProcessState.READY and r.app.residency.tier("chat") == "vram"
