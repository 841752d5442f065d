"""This box as one of several behind `appliance router` (docs/fleet.md).

Owns the box API's version (`API_VERSION`: bumped on an incompatible change to the endpoints the
router relies on: /health/*, /v1/residency, /api/drain, the X-Route-* and X-Model headers) and the
fleet's pieces on the box side: the box's identity (`identity`), its heartbeat into the registry
(`heartbeat`), re-queueing dead boxes' jobs (`orphans`), joining and leaving (`join`, `cli`), and the
residency summary (`summary`).
It must not route requests: that is `appliance router`'s.
"""

from __future__ import annotations

API_VERSION = 1
