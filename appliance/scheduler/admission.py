"""Admission of arriving requests: queue limits, 429 versus 503, a resident-only request for a
model that is not resident (409), and Retry-After estimates.

Owns: the rules that answer a request at once instead of queueing it, and the
Retry-After arithmetic (what is queued ahead of it, divided by the model's concurrency,
plus the swap it would need). The answer's length is not the core's business: the gateway
caps `max_tokens` at the model's `max_tokens_cap` before it asks for a lease.

Must not: change any state; the core applies the outcome.
"""

from __future__ import annotations

from appliance.scheduler.events import Reject
from appliance.scheduler.policy import PolicySettings
from appliance.scheduler.state import ModelSlot
from appliance.scheduler.types import Request, Tier

CANNOT_FIT_RETRY_S = 300.0
"""A model larger than the budget left beside pinned models will not fit soon."""
NOT_DOWNLOADED_RETRY_S = 60.0
MIN_RETRY_S = 1.0
MAX_RETRY_S = 600.0


def reject(request: Request, status: int, retry_after_s: float, reason: str) -> Reject:
    retry = min(max(retry_after_s, MIN_RETRY_S), MAX_RETRY_S)
    return Reject(request.model, request.id, status, round(retry, 1), reason)


def admit(
    request: Request, slot: ModelSlot | None, now: float, fits_ever: bool, settings: PolicySettings
) -> Reject | None:
    """None to queue the request, else the rejection to answer it with."""
    if slot is None:
        return reject(request, 404, MAX_RETRY_S, "unknown model")
    if request.resident_only and not slot.servable:
        return reject(request, 409, queue_eta_s(slot), "model not resident")
    if slot.tier is Tier.ABSENT:
        return reject(request, 503, NOT_DOWNLOADED_RETRY_S, "model not downloaded")
    if not fits_ever:
        return reject(request, 503, CANNOT_FIT_RETRY_S, "cannot fit beside pinned models")
    if slot.failures >= settings.max_start_failures and slot.failed_until > now:
        return reject(request, 503, slot.failed_until - now, "model failed to start")
    if len(slot.queue) >= slot.profile.queue_limit:
        return reject(request, 429, queue_eta_s(slot), "queue full")
    return None


def queue_eta_s(slot: ModelSlot) -> float:
    """Seconds until the queue as it stands would have drained through the engine."""
    ahead = len(slot.queue) + len(slot.in_flight)
    eta = ahead * slot.service_s / slot.profile.concurrency
    if slot.tier is not Tier.VRAM:
        costs = slot.profile.costs
        eta += costs.wake_s if slot.tier is Tier.HOST else costs.cold_start_s
    return eta

