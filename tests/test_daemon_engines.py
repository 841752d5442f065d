"""The daemon supervising real stand-in engines: readiness, crash restarts with backoff, fatal,
SIGKILL after the grace period, and no engine surviving the daemon's own death."""

from __future__ import annotations

import http.client
import json
import os
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import (
    PY,
    Daemon,
    alive,
    comfyui_engine,
    free_port,
    group_members,
    kill_groups,
    parent_of,
    vllm_engine,
    wait_for,
)

from appliance.supervisor.launcher import PidFile


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    pgids: set[int] = set()
    for d in started:
        status = d.get("/api/status")
        if status:
            pgids |= {e["pid"] for e in status["engines"] if e["pid"]}
        d.stop()
        d.kill()
    kill_groups(pgids)


def chat(port: int, stream: bool = False) -> bytes:
    body = {
        "model": "vllm",
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 4,
        "stream": stream,
    }
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return bytes(r.read())


def test_both_standins_start_from_config_and_are_ready_only_after_their_probes(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    vport, cport = free_port(), free_port()
    d = Daemon(
        tmp_path,
        {
            "engines": {
                "vllm": vllm_engine(vport, autostart=True, env={"VLLM_STANDIN_START_DELAY_S": "2"}),
                "comfyui": comfyui_engine(cport, autostart=True),
            },
        },
    )
    daemons.append(d)
    d.start()
    starting = d.wait_engine("vllm", lambda e: e["state"] in ("starting", "ready"), 10, "spawned")
    assert starting["state"] == "starting" and starting["pid"]
    # while the probe fails, vLLM's port is bound but not serving: a connection is refused
    with pytest.raises(OSError):
        chat(vport)
    d.wait_engine("vllm", lambda e: e["state"] == "ready", 20, "ready")
    d.wait_engine("comfyui", lambda e: e["state"] == "ready", 20, "ready")
    assert b"chat.completion" in chat(vport)
    logs = d.get("/api/engines/vllm/logs?tail=50")
    assert any("Starting vLLM server" in line for line in logs["lines"])


def test_crashed_engine_restarts_with_backoff(tmp_path: Path, daemons: list[Daemon]) -> None:
    vport = free_port()
    d = Daemon(
        tmp_path,
        {
            "engines": {
                "vllm": vllm_engine(
                    vport,
                    autostart=True,
                    env={"VLLM_STANDIN_CRASH_AFTER": "1"},
                    restart={"backoff_initial_s": 0.5, "max_failures": 5},
                )
            }
        },
    )
    daemons.append(d)
    d.start()
    first = d.wait_engine("vllm", lambda e: e["state"] == "ready", 20, "ready")
    with pytest.raises((OSError, http.client.HTTPException)):
        chat(vport, stream=True)  # the stand-in dies in the middle of this request
    again = d.wait_engine("vllm", lambda e: e["state"] == "ready" and e["restarts"] >= 1, 20, "restarted")
    assert again["pid"] != first["pid"] and not alive(first["pid"])
    assert "exited unexpectedly" in again["last_error"]
    log = d.get("/api/engines/vllm/logs?tail=200")["lines"]
    assert any("exited with" in line for line in log)


def test_engine_that_keeps_crashing_goes_fatal(tmp_path: Path, daemons: list[Daemon]) -> None:
    port = free_port()
    crasher = {
        "kind": "vllm",
        "model": "m",
        "port": port,
        "autostart": True,
        "command": [PY, "-c", "import sys; print('boom'); sys.exit(3)"],
        "restart": {"max_failures": 3, "backoff_initial_s": 0.1, "window_s": 60},
    }
    d = Daemon(tmp_path, {"engines": {"vllm": crasher}})
    daemons.append(d)
    d.start()
    fatal = d.wait_engine("vllm", lambda e: e["state"] == "fatal", 20, "fatal")
    assert fatal["restarts"] == 2 and "3 failures within 60s" in fatal["last_error"]
    assert "exited during start with code 3" in fatal["last_error"]
    assert any("boom" in line for line in d.get("/api/engines/vllm/logs?tail=50")["lines"])


def test_missing_executable_is_fatal_with_a_clear_error(tmp_path: Path, daemons: list[Daemon]) -> None:
    d = Daemon(
        tmp_path,
        {
            "engines": {
                "vllm": {
                    "kind": "vllm",
                    "model": "m",
                    "port": free_port(),
                    "autostart": True,
                    "command": ["/nonexistent/vllm"],
                }
            }
        },
    )
    daemons.append(d)
    d.start()
    fatal = d.wait_engine("vllm", lambda e: e["state"] == "fatal", 10, "fatal")
    assert "executable '/nonexistent/vllm' not found" in fatal["last_error"]


def test_hung_engine_is_killed_after_the_grace_period(tmp_path: Path, daemons: list[Daemon]) -> None:
    vport = free_port()
    d = Daemon(
        tmp_path,
        {"engines": {"vllm": vllm_engine(vport, autostart=True, stop_grace_s=1.0, env={"VLLM_STANDIN_HANG": "1"})}},
    )
    daemons.append(d)
    d.start()
    # The hang knob: the stand-in accepts connections and never answers, even its health probe,
    # and ignores SIGTERM.
    ready = d.wait_engine("vllm", lambda e: e["state"] == "starting" and len(group_members(e["pid"])) >= 2,
                          20, "spawned")
    wait_for(lambda: any("startup complete" in line for line in d.get("/api/engines/vllm/logs")["lines"]),
             20, "the stand-in to be serving (its signal handlers installed)")
    members = group_members(ready["pid"])
    status, body = d.post("/api/engines/vllm/stop")
    assert status == 200 and body["state"] == "stopped"
    assert not any(alive(p) for p in members)
    log = d.get("/api/engines/vllm/logs?tail=20")["lines"]
    assert any(f"process {ready['pid']} exited with -9" in line for line in log), log


def test_sigkill_of_the_daemon_leaves_no_engine_process(tmp_path: Path, daemons: list[Daemon]) -> None:
    vport, cport = free_port(), free_port()
    d = Daemon(
        tmp_path,
        {
            "engines": {
                "vllm": vllm_engine(vport, autostart=True, env={"VLLM_STANDIN_ENGINE_CORE": "1"}),
                "comfyui": comfyui_engine(cport, autostart=True),
            }
        },
    )
    daemons.append(d)
    d.start()
    v = d.wait_engine("vllm", lambda e: e["state"] == "ready", 20, "ready")
    c = d.wait_engine("comfyui", lambda e: e["state"] == "ready", 20, "ready")
    pids = group_members(v["pid"]) | group_members(c["pid"])
    assert len(group_members(v["pid"])) >= 3  # guard, api server, EngineCore grandchild
    d.kill()
    wait_for(lambda: not any(alive(p) for p in pids), 10, f"engine processes {pids} to die")


def test_restart_after_a_crash_reaps_leftover_engines(tmp_path: Path, daemons: list[Daemon]) -> None:
    vport = free_port()
    doc = {"engines": {"vllm": vllm_engine(vport, autostart=True, env={"VLLM_STANDIN_ENGINE_CORE": "1"})}}
    d = Daemon(tmp_path, doc)
    daemons.append(d)
    d.start()
    v = d.wait_engine("vllm", lambda e: e["state"] == "ready", 20, "ready")
    members = group_members(v["pid"])
    # A crash that takes the guards with it (an OOM kill of the whole cgroup slice, say): the guard
    # is frozen so it cannot act on the daemon's death, then both die; the engine's own processes
    # survive as orphans and the pid file still names their group.
    os.kill(v["pid"], signal.SIGSTOP)
    d.kill()
    os.kill(v["pid"], signal.SIGKILL)
    leftovers = {p for p in members if p != v["pid"]}
    try:
        wait_for(lambda: not alive(v["pid"]), 5, "guard gone")
        assert leftovers and all(alive(p) for p in leftovers)
        assert json.loads(PidFile(d.state / "run" / "engines.json").path.read_text())["vllm"]["pgid"] == v["pid"]
        d2 = Daemon(tmp_path, doc)
        daemons.append(d2)
        d2.start()
        wait_for(lambda: not any(alive(p) for p in leftovers), 10, f"leftovers {leftovers} reaped")
        assert "reaped: vllm: killed leftover process group" in d2.log.read_text()
    finally:
        kill_groups({v["pid"]})  # whatever happened above, no orphan outlives the test


def test_engine_orphaned_by_a_killed_guard_is_killed_by_the_daemon(tmp_path: Path, daemons: list[Daemon]) -> None:
    vport = free_port()
    d = Daemon(tmp_path, {"engines": {"vllm": vllm_engine(vport, autostart=True,
                                                          env={"VLLM_STANDIN_ENGINE_CORE": "1"})}})
    daemons.append(d)
    d.start()
    v = d.wait_engine("vllm", lambda e: e["state"] == "ready", 20, "ready")
    guard = v["pid"]

    def tree() -> tuple[set[int], set[int]]:
        """The guard's children and grandchildren in its group (the engine and its EngineCore)."""
        members = group_members(guard) - {guard}
        children = {p for p in members if parent_of(p) == guard}
        return children, {p for p in members if parent_of(p) in children}

    # Something must be there to orphan, or the wait below passes vacuously: the engine (the
    # guard's child) and the EngineCore it spawned (a grandchild no one but the group reaches).
    wait_for(lambda: all(tree()), 10, "the engine and its EngineCore under the guard")
    children, grandchildren = tree()
    orphans = children | grandchildren
    assert children and grandchildren and all(alive(p) for p in orphans)
    os.kill(guard, signal.SIGKILL)  # the guard dies; its engine and EngineCore would linger
    wait_for(lambda: not any(alive(p) for p in orphans), 10, f"orphans {orphans} killed")
    d.wait_engine("vllm", lambda e: e["state"] == "ready" and e["pid"] != v["pid"], 30, "restarted")


@pytest.mark.parametrize("device", ["cpu", "cuda"])  # a CPU model (direct lease) and a GPU-scheduled one
def test_a_model_whose_weights_were_never_pulled_is_a_503_naming_the_pull_command(
        tmp_path: Path, daemons: list[Daemon], device: str) -> None:
    """Regression: the written CPU configuration names models that `appliance pull` has not fetched yet; a
    chat then started the worker, failed its load deep in transformers and answered "could not be loaded:
    engine text is ready". Now the 503 says what to do, and no engine is started for nothing."""
    d = Daemon(tmp_path, {
        "engines": {"text": {"kind": "worker", "worker": "text", "device": device, "port": free_port(),
                             "model_path": str(tmp_path / "models" / "never-pulled")}},
        "models": {"chat": {"engine": "text", "modality": "text", "catalog": "qwen2.5-0.5b-instruct"}},
    })
    daemons.append(d)
    d.start()
    status, body = d.post("/v1/chat/completions", {"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 503 and body["error"]["code"] == "model_unavailable", body
    assert "`appliance pull qwen2.5-0.5b-instruct`" in body["error"]["message"]
    assert str(tmp_path) not in body["error"]["message"]  # no server path in a client's answer
    assert d.engine("text")["state"] == "stopped"
