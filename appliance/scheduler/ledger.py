"""The core's books: every model's slot and the bytes each holds in VRAM and host RAM.

Owns: the slots (one `ModelSlot` per model), the measured footprints, the budgets (the
VRAM budget shrinks by foreign usage the GPU probe reports) and the arithmetic over them:
what is used, what is free, what will be free once releases under way finish, and
whether a model can ever fit beside the pinned ones. Accounting is conservative: a
model counts in VRAM from the moment its Start/Wake is issued until its release is
verified (ReleaseDone), and a sleeping model's host copy counts from its Sleep.

Must not: decide anything or emit actions; the core does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from appliance.scheduler.history import ServiceHistory
from appliance.scheduler.memory import Footprints, MemoryBudget
from appliance.scheduler.snapshot import CoreSnapshot, SlotView
from appliance.scheduler.state import ModelSlot, Phase
from appliance.scheduler.types import ModelProfile, Tier


class Ledger:
    def __init__(
        self,
        profiles: Iterable[ModelProfile],
        budget: MemoryBudget,
        measured: Mapping[str, int] | None,
        tiers: Mapping[str, Tier] | None,
    ) -> None:
        profile_list = list(profiles)
        self.budget = budget
        self.footprints = Footprints(profile_list, measured)
        self.foreign_bytes = 0
        self.slots: dict[str, ModelSlot] = {}
        for p in profile_list:
            if p.id in self.slots:
                raise ValueError(f"model {p.id} configured twice")
            tier = (tiers or {}).get(p.id, Tier.DISK if p.downloaded else Tier.ABSENT)
            slot = ModelSlot(profile=p, tier=tier, engine_up=tier in (Tier.VRAM, Tier.HOST))
            slot.service_s = p.typical_service_s
            slot.history = ServiceHistory(p.typical_service_s)
            self.slots[p.id] = slot

    def footprint(self, slot: ModelSlot) -> int:
        return self.footprints.of(slot.id)

    @staticmethod
    def process(slot: ModelSlot) -> str:
        """The engine process serving the model (models sharing one name it in their profile)."""
        return slot.profile.engine or "\0" + slot.id

    def held_by_process(self) -> dict[str, int]:
        """VRAM held by engine processes none of whose models is in VRAM (a slept engine's CUDA
        context, plus the weights a Prefetch brought back), counted once per process; a process
        that serves a model in VRAM holds nothing extra (that model's measured footprint includes
        the context)."""
        live = {self.process(s) for s in self.slots.values() if s.in_vram}
        held: dict[str, int] = {}
        for s in self.slots.values():
            bytes_held = s.held_bytes + s.prefetched_bytes
            if s.engine_up and not s.in_vram and bytes_held > 0:
                p = self.process(s)
                if p not in live:
                    held[p] = max(held.get(p, 0), bytes_held)
        return held

    def activation_bytes(self, slot: ModelSlot) -> int:
        """What bringing the model into VRAM adds: its footprint less what its sleeping engine
        process already holds there (the CUDA context a slept vLLM or ComfyUI keeps, and weights
        a Prefetch brought back)."""
        held = self.held_by_process().get(self.process(slot), 0) if not slot.in_vram else 0
        return max(0, self.footprints.of(slot.id) - held)

    def release_frees(self, slot: ModelSlot, stopping: bool = False) -> int:
        """What releasing a resident model frees: its footprint less what its engine kept after
        its last release (a stop frees everything)."""
        return self.footprints.of(slot.id) - (0 if stopping else min(slot.held_bytes, self.footprints.of(slot.id)))

    def vram_budget(self) -> int:
        return self.budget.vram_bytes - self.foreign_bytes

    def vram_used(self) -> int:
        used = sum(self.footprints.of(s.id) for s in self.slots.values() if s.in_vram)
        return used + sum(self.held_by_process().values())

    def vram_free(self) -> int:
        return self.vram_budget() - self.vram_used()

    def leaving_vram(self) -> int:
        """Bytes of releases issued but not yet verified: free soon."""
        return sum(
            self.release_frees(s, s.stopping)
            for s in self.slots.values()
            if s.tier is Tier.VRAM and s.phase is Phase.RELEASING
        )

    def host_used(self) -> int:
        used = 0
        for s in self.slots.values():
            releasing = s.phase is Phase.RELEASING
            if (s.tier is Tier.HOST and not releasing) or (releasing and s.release_to is Tier.HOST):
                used += s.profile.host_bytes
        return used

    def host_free(self) -> int:
        return self.budget.host_bytes - self.host_used()

    def fits_ever(self, slot: ModelSlot) -> bool:
        """Whether the model fits in the VRAM budget beside every other pinned model."""
        pinned = sum(self.footprints.of(s.id) for s in self.slots.values() if s.profile.pinned and s is not slot)
        return self.footprints.of(slot.id) <= self.vram_budget() - pinned

    def snapshot(self, now: float, plan_target: str | None) -> CoreSnapshot:
        views = {
            s.id: SlotView(
                tier=s.tier,
                phase=s.phase.value,
                engine_up=s.engine_up,
                draining=s.draining,
                queued=len(s.queue),
                in_flight=len(s.in_flight),
                footprint_bytes=self.footprints.of(s.id),
                prefetched_bytes=s.prefetched_bytes,
                oldest_arrival=s.queue[0].arrival if s.queue else None,
            )
            for s in self.slots.values()
        }
        return CoreSnapshot(
            now=now,
            models=views,
            vram_used_bytes=self.vram_used(),
            vram_budget_bytes=self.vram_budget(),
            host_used_bytes=self.host_used(),
            host_budget_bytes=self.budget.host_bytes,
            plan_target=plan_target,
        )
