"""The benchmark's workloads W1, W2, W3s and W4, generated from fixed seeds.

Owns: request streams as `RequestSpec`s (each request's own GPU work at batch 1 alone,
its token counts, and follow-up
requests that a client sends after it completes), and the load arithmetic: rho is the
offered GPU work per second from the mean service times, ignoring swaps.

- W1: Poisson arrivals, chat 2 : image 1 : speech 3.
- W2: Gamma inter-arrival gaps with coefficient of variation 2 or 4, the same mix, images
  arriving in bursts of 4 variants.
- W3s: voice-assistant sessions (Poisson) of 2 to 5 turns; each turn a chat whose short
  reply (median 200 characters) is spoken with p = 0.8; the next turn follows playback
  and a think time. Images are 10% of all requests, Poisson.
- W4: strict alternation LLM, image, LLM, image (Poisson arrival times).

Must not: know about schedulers or the simulator's state.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from appliance.sim.calibration import Calibration

HOUR = 3600.0
PROMPT_CAP_TOKENS = 4096
SPEECH_CHARS_CAP = 2000
THINK_MEAN_S = 10.0
W3S_IMAGE_SHARE = 0.10
W3S_SPEECH_P = 0.8
W3S_TURNS = (2, 5)


@dataclass(slots=True)
class RequestSpec:
    """One request; `arrival` is absolute for a root and the delay after its parent otherwise."""

    id: str
    model: str
    arrival: float
    work_s: float
    prompt_tokens: int = 0
    output_tokens: int = 0
    follow: list[RequestSpec] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    rho: float
    seed: int
    roots: tuple[RequestSpec, ...]
    horizon_s: float
    warmup_s: float

    def all_specs(self) -> list[RequestSpec]:
        out: list[RequestSpec] = []
        stack = list(self.roots)
        while stack:
            spec = stack.pop()
            out.append(spec)
            stack.extend(spec.follow)
        return out


def lognormal_capped_mean(median: float, sigma: float, cap: float) -> float:
    """E[min(X, cap)] for X lognormal with the given median and log-sigma."""
    mu = math.log(median)
    phi = _normal_cdf
    body = math.exp(mu + sigma * sigma / 2) * phi((math.log(cap) - mu - sigma * sigma) / sigma)
    return body + cap * (1.0 - phi((math.log(cap) - mu) / sigma))


def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


class _Maker:
    """Draws requests from one seeded stream (common random numbers across policies)."""

    def __init__(self, cal: Calibration, rng: random.Random) -> None:
        self.cal = cal
        self.rng = rng
        self.count = 0

    def _id(self) -> str:
        self.count += 1
        return str(self.count)

    def chat(self, at: float, output_tokens: int | None = None, prompt_sigma: float | None = None) -> RequestSpec:
        llm = self.cal.llm
        sigma = llm.prompt_sigma if prompt_sigma is None else prompt_sigma
        prompt = min(int(self.rng.lognormvariate(math.log(llm.prompt_median), sigma)) + 1, PROMPT_CAP_TOKENS)
        if output_tokens is None:
            drawn = self.rng.lognormvariate(math.log(llm.output_median), llm.output_sigma)
            output_tokens = int(drawn) + 1
        output = min(output_tokens, llm.max_tokens_cap)
        work = prompt / llm.prefill_tps + output / llm.decode_tps
        return RequestSpec(self._id(), "llm", at, work, prompt, output)

    def image(self, at: float) -> RequestSpec:
        img = self.cal.image
        work = img.seconds * self.rng.uniform(1.0 - img.jitter, 1.0 + img.jitter)
        return RequestSpec(self._id(), "image", at, work)

    def speech(self, at: float, chars: float | None = None) -> RequestSpec:
        sp = self.cal.speech
        if chars is None:
            chars = self.rng.lognormvariate(math.log(sp.chars_median), sp.chars_sigma)
        chars = min(chars, SPEECH_CHARS_CAP)
        work = sp.real_time_factor * chars / sp.chars_per_audio_s
        return RequestSpec(self._id(), "speech", at, work)


def mean_service_s(cal: Calibration) -> dict[str, float]:
    """Mean batch-1 service time per class for W1/W2/W4 requests."""
    llm, sp = cal.llm, cal.speech
    prompt = lognormal_capped_mean(llm.prompt_median, llm.prompt_sigma, PROMPT_CAP_TOKENS)
    output = lognormal_capped_mean(llm.output_median, llm.output_sigma, llm.max_tokens_cap)
    chars = lognormal_capped_mean(sp.chars_median, sp.chars_sigma, SPEECH_CHARS_CAP)
    return {
        "llm": prompt / llm.prefill_tps + output / llm.decode_tps,
        "image": cal.image.seconds,
        "speech": sp.real_time_factor * chars / sp.chars_per_audio_s,
    }


W1_MIX = {"llm": 2.0, "image": 1.0, "speech": 3.0}


def w1(cal: Calibration, rho: float, seed: int, horizon_s: float = 8 * HOUR, warmup_s: float = 0.5 * HOUR) -> Workload:
    means = mean_service_s(cal)
    total = sum(W1_MIX.values())
    work_per_request = sum(W1_MIX[c] / total * means[c] for c in W1_MIX)
    rate = rho / work_per_request
    rng = random.Random(f"W1/{rho}/{seed}")
    maker = _Maker(cal, rng)
    classes, weights = list(W1_MIX), list(W1_MIX.values())
    roots = [_make(maker, rng.choices(classes, weights)[0], t)
             for t in _arrivals(lambda: rng.expovariate(rate), horizon_s)]
    return Workload("W1", rho, seed, tuple(roots), horizon_s, warmup_s)


def w2(
    cal: Calibration, rho: float, cv: float, seed: int, horizon_s: float = 8 * HOUR, warmup_s: float = 0.5 * HOUR
) -> Workload:
    """Gamma gaps (shape 1/cv^2) between arrival epochs; an image epoch brings 4 images."""
    means = mean_service_s(cal)
    burst = 4
    epoch_mix = {"llm": W1_MIX["llm"], "image": W1_MIX["image"] / burst, "speech": W1_MIX["speech"]}
    total = sum(epoch_mix.values())
    work_per_epoch = sum(epoch_mix[c] / total * means[c] * (burst if c == "image" else 1) for c in epoch_mix)
    rate = rho / work_per_epoch
    shape = 1.0 / (cv * cv)
    scale = 1.0 / (rate * shape)
    rng = random.Random(f"W2/{cv}/{rho}/{seed}")
    maker = _Maker(cal, rng)
    roots: list[RequestSpec] = []
    classes, weights = list(epoch_mix), list(epoch_mix.values())
    for t in _arrivals(lambda: rng.gammavariate(shape, scale), horizon_s):
        cls = rng.choices(classes, weights)[0]
        for _ in range(burst if cls == "image" else 1):
            roots.append(_make(maker, cls, t))
    return Workload(f"W2cv{cv:g}", rho, seed, tuple(roots), horizon_s, warmup_s)


def w3s(cal: Calibration, rho: float, seed: int, horizon_s: float = 8 * HOUR, warmup_s: float = 0.5 * HOUR) -> Workload:
    sp, llm = cal.speech, cal.llm
    chars_mean = lognormal_capped_mean(sp.chars_median, sp.chars_sigma, SPEECH_CHARS_CAP)
    prompt_mean = lognormal_capped_mean(llm.prompt_median, W3S_PROMPT_SIGMA, PROMPT_CAP_TOKENS)
    chat_mean = prompt_mean / llm.prefill_tps + chars_mean / llm.chars_per_token / llm.decode_tps
    speech_mean = sp.real_time_factor * chars_mean / sp.chars_per_audio_s
    turns_mean = (W3S_TURNS[0] + W3S_TURNS[1]) / 2
    requests_per_session = turns_mean * (1 + W3S_SPEECH_P)
    image_per_session = requests_per_session * W3S_IMAGE_SHARE / (1 - W3S_IMAGE_SHARE)
    work_per_session = turns_mean * (chat_mean + W3S_SPEECH_P * speech_mean) + image_per_session * cal.image.seconds
    session_rate = rho / work_per_session
    image_rate = session_rate * image_per_session
    rng = random.Random(f"W3s/{rho}/{seed}")
    maker = _Maker(cal, rng)
    roots = [_session(maker, rng, t) for t in _arrivals(lambda: rng.expovariate(session_rate), horizon_s)]
    roots += [maker.image(t) for t in _arrivals(lambda: rng.expovariate(image_rate), horizon_s)]
    roots.sort(key=lambda s: s.arrival)
    return Workload("W3s", rho, seed, tuple(roots), horizon_s, warmup_s)


W3S_PROMPT_SIGMA = 0.6


def _session(maker: _Maker, rng: random.Random, start: float) -> RequestSpec:
    """A chain: chat -> (speech of the reply) -> next chat after playback and thinking."""
    sp, llm = maker.cal.speech, maker.cal.llm
    turns = rng.randint(*W3S_TURNS)
    first: RequestSpec | None = None
    tail: RequestSpec | None = None
    delay = start
    for _ in range(turns):
        chars = min(rng.lognormvariate(math.log(sp.chars_median), sp.chars_sigma), SPEECH_CHARS_CAP)
        chat = maker.chat(delay, output_tokens=int(chars / llm.chars_per_token) + 1, prompt_sigma=W3S_PROMPT_SIGMA)
        if tail is None:
            first = chat
        else:
            tail.follow.append(chat)
        tail = chat
        think = rng.expovariate(1.0 / THINK_MEAN_S)
        if rng.random() < W3S_SPEECH_P:
            speech = maker.speech(0.0, chars)
            chat.follow.append(speech)
            tail = speech
            delay = chars / sp.chars_per_audio_s + think
        else:
            delay = think
    assert first is not None
    return first


def w4(cal: Calibration, rho: float, seed: int, horizon_s: float = 8 * HOUR, warmup_s: float = 0.5 * HOUR) -> Workload:
    means = mean_service_s(cal)
    rate = rho / ((means["llm"] + means["image"]) / 2)
    rng = random.Random(f"W4/{rho}/{seed}")
    maker = _Maker(cal, rng)
    roots = [_make(maker, "llm" if n % 2 == 0 else "image", t)
             for n, t in enumerate(_arrivals(lambda: rng.expovariate(rate), horizon_s))]
    return Workload("W4", rho, seed, tuple(roots), horizon_s, warmup_s)


def _arrivals(gap: Callable[[], float], horizon_s: float) -> Iterator[float]:
    """Arrival times before the horizon, each `gap()` after the last (drawn lazily, so draws the
    caller makes per arrival keep their place in the random stream)."""
    t = gap()
    while t < horizon_s:
        yield t
        t += gap()


def _make(maker: _Maker, cls: str, at: float) -> RequestSpec:
    if cls == "llm":
        return maker.chat(at)
    if cls == "image":
        return maker.image(at)
    return maker.speech(at)


def build(
    cal: Calibration, name: str, rho: float, seed: int, horizon_s: float = 8 * HOUR, warmup_s: float = 0.5 * HOUR
) -> Workload:
    """A workload by its benchmark name: W1, W2cv2, W2cv4, W3s or W4."""
    if name == "W1":
        return w1(cal, rho, seed, horizon_s, warmup_s)
    if name.startswith("W2cv"):
        return w2(cal, rho, float(name[4:]), seed, horizon_s, warmup_s)
    if name == "W3s":
        return w3s(cal, rho, seed, horizon_s, warmup_s)
    if name == "W4":
        return w4(cal, rho, seed, horizon_s, warmup_s)
    raise ValueError(f"unknown workload {name!r}")
