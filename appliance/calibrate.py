"""`appliance calibration`: the simulator's calibration table from what a running box measured.

A pure function of the daemon's `/api/status` and `/api/usage` answers (the CLI fetches them) and
the model chosen for each simulated role (llm, image, speech), plus a TOML renderer whose output
`python bench/scheduler.py --calibration FILE` reads (`appliance.sim.calibration.load_calibration`):
- the card: `vram_total_bytes` and `vram_reserve_bytes` (total less the residency budget), and
  `host_budget_bytes` (the box's `gpu.host_ram_budget_gb`);
- per role, from the residency snapshot: `vram_bytes` (a measured footprint only), `size_bytes`
  (what a wake moves: the host copy), and from the measured transition medians `release_s`,
  `cold_start_s`, `wake_fixed_s` (the wake less the copy at the simulator's host bandwidth) and
  `load_fixed_s` (the load less the read at its disk bandwidth);
- service times, from the usage records of successful requests: `image.seconds` (median GPU time
  per image), `speech.real_time_factor` (GPU seconds per second of audio, summed) and
  `llm.decode_tps` (median tokens per GPU second of answers of at least 32 tokens: requests that
  shared a batch make it an underestimate of batch-1 speed).

Must not: invent figures. What the box has not measured is left out (the simulator keeps its
default) and named in the header, so a reader knows which numbers are the box's own.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .sim.calibration import Calibration

ROLES = {"llm": "text", "image": "image", "speech": "speech"}
MIN_DECODE_TOKENS = 32


@dataclass
class Measured:
    table: dict[str, Any] = field(default_factory=dict)  # the calibration file's structure
    missing: list[str] = field(default_factory=list)  # what keeps the simulator's default


def pick_roles(status: Mapping[str, Any], records: Sequence[Mapping[str, Any]],
               chosen: Mapping[str, str | None]) -> dict[str, str]:
    """The model standing for each role: the one given, else the GPU-scheduled model of that
    modality with the most requests recorded (ties: configuration order)."""
    scheduled = status.get("residency", {}).get("models", {})
    modality = {m["id"]: m.get("modality") for m in status.get("models", []) if isinstance(m, dict)}
    counts: dict[str, int] = {}
    for r in records:
        counts[str(r.get("model"))] = counts.get(str(r.get("model")), 0) + 1
    roles: dict[str, str] = {}
    for role, mod in ROLES.items():
        given = chosen.get(role)
        if given:
            if given not in scheduled:
                raise ValueError(f"--{role} {given}: not a model the GPU scheduler serves "
                                 f"(it serves: {', '.join(scheduled) or 'none'})")
            roles[role] = given
            continue
        candidates = [mid for mid in scheduled if modality.get(mid) == mod]
        if candidates:
            roles[role] = max(candidates, key=lambda mid: (counts.get(mid, 0), -candidates.index(mid)))
    return roles


def measure(status: Mapping[str, Any], records: Sequence[Mapping[str, Any]], roles: Mapping[str, str]) -> Measured:
    base = Calibration()
    out = Measured()
    residency = status.get("residency", {})
    total = int(status.get("gpu", {}).get("total_bytes") or 0)
    budget = int(residency.get("vram_budget_bytes") or 0)
    if total > 0 and 0 < budget <= total:
        out.table["vram_total_bytes"] = total
        out.table["vram_reserve_bytes"] = total - budget
    else:
        out.missing.append("the card (no GPU measured)")
    host = int(residency.get("host_budget_bytes") or 0)
    if host > 0:
        out.table["host_budget_bytes"] = host  # the box's gpu.host_ram_budget_gb: what it may sleep
    models: dict[str, dict[str, Any]] = {}
    for role in ROLES:
        mid = roles.get(role)
        if mid is None:
            out.missing.append(f"{role}: no model of that kind")
            continue
        view = residency.get("models", {}).get(mid, {})
        entry: dict[str, Any] = {}
        size = int(view.get("host_bytes") or 0)
        if size > 0:
            entry["size_bytes"] = size
        else:
            size = base.model(role).size_bytes
        if view.get("measured") and view.get("footprint_bytes"):
            entry["vram_bytes"] = int(view["footprint_bytes"])
        else:
            out.missing.append(f"{role} ({mid}): footprint not measured yet")
        times = view.get("transitions_s") or {}
        for transition, key, moved in (("release", "release_s", 0.0), ("start", "cold_start_s", 0.0),
                                       ("wake", "wake_fixed_s", size / base.host_bandwidth),
                                       ("load", "load_fixed_s", size / base.disk_bandwidth)):
            seconds = times.get(transition)
            if isinstance(seconds, int | float):
                entry[key] = round(max(0.0, float(seconds) - moved), 4)
            else:
                out.missing.append(f"{role} ({mid}): no {transition} measured")
        if entry:
            models[role] = entry
    if models:
        out.table["models"] = models
    ok = [r for r in records if r.get("status") == 200 and float(r.get("gpu_s") or 0) > 0]
    _services(out, [r for r in ok if r.get("model") == roles.get("llm")],
              [r for r in ok if r.get("model") == roles.get("image")],
              [r for r in ok if r.get("model") == roles.get("speech")])
    return out


def _services(out: Measured, llm: list[Mapping[str, Any]], image: list[Mapping[str, Any]],
              speech: list[Mapping[str, Any]]) -> None:
    rates = [int(r["tokens_out"]) / float(r["gpu_s"]) for r in llm
             if r.get("tokens_exact", True) and int(r.get("tokens_out") or 0) >= MIN_DECODE_TOKENS]
    if rates:
        out.table["llm"] = {"decode_tps": round(statistics.median(rates), 2)}
    else:
        out.missing.append(f"llm: no answer of {MIN_DECODE_TOKENS}+ tokens recorded (decode speed)")
    per_image = [float(r["gpu_s"]) / int(r["images"]) for r in image if int(r.get("images") or 0) > 0]
    if per_image:
        out.table["image"] = {"seconds": round(statistics.median(per_image), 3)}
    else:
        out.missing.append("image: no image recorded (seconds per image)")
    timed = [r for r in speech if float(r.get("audio_s") or 0) > 0]  # a format whose length was not read: skipped
    audio = sum(float(r["audio_s"]) for r in timed)
    if audio > 0:
        out.table["speech"] = {"real_time_factor": round(sum(float(r["gpu_s"]) for r in timed) / audio, 4)}
    else:
        out.missing.append("speech: no audio recorded (real-time factor)")


def render_toml(m: Measured, header: Sequence[str]) -> str:
    lines = [f"# {h}" for h in header]
    if m.missing:
        lines.append("# Not measured (the simulator keeps its defaults):")
        lines += [f"#   {x}" for x in m.missing]
    lines.append("")
    for key, value in m.table.items():
        if not isinstance(value, dict):
            lines.append(f"{key} = {_value(value)}")
    for section in ("llm", "image", "speech"):
        if section in m.table:
            lines += ["", f"[{section}]"] + [f"{k} = {_value(v)}" for k, v in m.table[section].items()]
    for role, entry in m.table.get("models", {}).items():
        lines += ["", f"[models.{role}]"] + [f"{k} = {_value(v)}" for k, v in entry.items()]
    return "\n".join(lines) + "\n"


def _value(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TypeError(f"not a number: {v!r}")
    return str(v)
