"""The peers' policies behave as their source does (llama-swap fifo.go, Ollama sched.go)."""

from __future__ import annotations

from appliance.scheduler import (
    Dispatch,
    EngineReady,
    ReleaseDone,
    Request,
    RequestArrived,
    RequestDone,
    Sleep,
    Start,
    Stop,
    Tick,
    Unload,
    Wake,
)
from appliance.sim.baselines import AllResident, LlamaSwapFifo, OllamaLike
from appliance.sim.calibration import Calibration
from appliance.sim.policies import prewarmed_in_host

GB = 1_000_000_000
SIZES = {"llm": int(21.7 * GB), "image": int(14.8 * GB), "speech": int(3.4 * GB)}
WEIGHTS = {"llm": int(19.3 * GB), "image": int(14.8 * GB), "speech": int(1.9 * GB)}


def arrive(rid: str, model: str, t: float) -> RequestArrived:
    return RequestArrived(t, Request(rid, model, t))


def test_llama_swap_serves_the_ready_model_first_and_cold_starts_one_model_at_a_time() -> None:
    b1 = LlamaSwapFifo(["llm", "image"])
    assert b1.handle(arrive("a1", "llm", 0.0)) == [Start("llm")]
    assert b1.handle(arrive("b1", "image", 1.0)) == []  # queued: the llm swap is in flight
    assert b1.handle(EngineReady(90.0, "llm")) == [Dispatch("llm", "a1")]
    assert b1.handle(arrive("a2", "llm", 91.0)) == [Dispatch("llm", "a2")]  # fast path overtakes b1
    assert b1.handle(RequestDone(95.0, "a1")) == []  # a2 still in flight: no swap
    assert b1.handle(RequestDone(99.0, "a2")) == [Stop("llm")]
    assert b1.handle(ReleaseDone(102.0, "llm")) == [Start("image")]
    assert b1.handle(arrive("b2", "image", 103.0)) == []  # joins the swap in flight
    assert b1.handle(EngineReady(120.0, "image")) == [Dispatch("image", "b1"), Dispatch("image", "b2")]
    assert b1.next_deadline() is None  # llama-swap's ttl defaults to 0: never unloads on idle


def test_ollama_blocks_the_whole_queue_behind_a_load() -> None:
    b3 = OllamaLike(SIZES, WEIGHTS, int(22.5 * GB), 40 * GB, sleep=True, in_host=frozenset(SIZES))
    assert b3.handle(arrive("s1", "speech", 0.0)) == [Wake("speech")]
    b3.handle(EngineReady(0.2, "speech"))
    b3.handle(RequestDone(5.0, "s1"))
    assert b3.handle(arrive("c1", "llm", 6.0)) == [Sleep("speech")]  # does not fit beside: unload the idle runner
    assert b3.handle(arrive("s2", "speech", 6.01)) == []  # waits behind c1's load
    assert b3.handle(ReleaseDone(6.05, "speech")) == [Wake("llm")]
    # c1 runs; s2 is now the head, does not fit beside the busy LLM, and waits for it to finish.
    assert b3.handle(EngineReady(7.2, "llm")) == [Dispatch("llm", "c1")]
    assert b3.handle(RequestDone(20.0, "c1")) == [Sleep("llm")]
    assert b3.handle(ReleaseDone(20.05, "llm")) == [Wake("speech")]
    assert b3.handle(EngineReady(20.3, "speech")) == [Dispatch("speech", "s2")]


def test_b3_with_host_ram_full_unloads_instead_of_stopping() -> None:
    """B3 has our mechanism: with no host room for the LLM's copy it keeps the process and loads
    from disk next time, as the daemon would; a Stop would cost it a 90 s cold start that neither
    B2 (Ollama reloads from disk) nor our policy ever pays."""
    b3 = OllamaLike(SIZES, WEIGHTS, int(22.5 * GB), 34 * GB, sleep=True, in_host=frozenset({"image", "speech"}))
    assert b3.handle(arrive("c1", "llm", 0.0)) == [Start("llm")]
    b3.handle(EngineReady(5.0, "llm"))
    b3.handle(RequestDone(10.0, "c1"))
    assert b3.handle(arrive("i1", "image", 11.0)) == [Unload("llm")]  # 14.8 + 1.9 + 19.3 GB > 34 GB


def test_runs_begin_with_only_what_the_host_budget_holds_asleep() -> None:
    """The shipped 32 GiB hold the LLM's and the image model's copies (34.1 GB), not XTTS's too."""
    assert prewarmed_in_host(Calibration()) == ["llm", "image"]


def test_ollama_head_of_line_blocking_holds_back_a_loaded_model() -> None:
    b2 = OllamaLike(SIZES, WEIGHTS, int(22.5 * GB), 40 * GB, sleep=False)
    b2.handle(arrive("i1", "image", 0.0))
    b2.handle(EngineReady(4.0, "image"))  # image runner loaded and busy with i1
    assert b2.handle(arrive("c1", "llm", 5.0)) == []  # must wait for i1 to finish (refcount)
    # speech would fit beside the image, but the queue is blocked behind c1
    assert b2.handle(arrive("s1", "speech", 6.0)) == []
    assert b2.handle(RequestDone(10.0, "i1")) == [Stop("image")]  # B2 unloads by stopping
    assert b2.handle(ReleaseDone(11.0, "image")) == [Start("llm")]  # and loads from disk


def test_ollama_evicts_idle_runners_first_then_least_recently_used() -> None:
    sizes = {"a": 10 * GB, "b": 10 * GB, "c": 10 * GB}
    b2 = OllamaLike(sizes, sizes, 20 * GB, 40 * GB, sleep=False)
    for rid, model, t in (("a1", "a", 0.0), ("b1", "b", 10.0)):
        b2.handle(arrive(rid, model, t))
        b2.handle(EngineReady(t + 1, model))
    b2.handle(RequestDone(12.0, "a1"))
    b2.handle(RequestDone(13.0, "b1"))  # both idle; a used least recently
    assert b2.handle(arrive("c1", "c", 14.0)) == [Stop("a")]


def test_ollama_keep_alive_is_five_minutes() -> None:
    b3 = OllamaLike(SIZES, WEIGHTS, int(22.5 * GB), 40 * GB, sleep=True, in_host=frozenset(SIZES))
    b3.handle(arrive("s1", "speech", 0.0))
    b3.handle(EngineReady(0.2, "speech"))
    b3.handle(RequestDone(5.0, "s1"))
    assert b3.next_deadline() == 305.0
    assert b3.handle(Tick(305.0)) == [Sleep("speech")]


def test_all_resident_dispatches_on_arrival() -> None:
    assert AllResident().handle(arrive("x", "llm", 0.0)) == [Dispatch("llm", "x")]
