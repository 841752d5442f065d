"""Several appliance boxes as one fleet behind `appliance router` (docs/fleet.md).

Owns: the box side of the fleet and `API_VERSION`, the box API's version (the endpoints and headers
the router relies on: /health/*, /v1/residency, /api/drain, X-Route-*, X-Model), bumped on an
incompatible change to them, so a router can keep routing to boxes of an older but compatible version
during a rolling upgrade. Pieces: the box's identity (`identity`), its registry heartbeat and the
dead boxes' job sweep (`heartbeat`), the residency summary the router routes by (`summary`), the
router's token (`token`), the advertised URL (`advertise`), joining and leaving (`join`, `cli`).
It must not import anything heavy at module level: the daemon imports it at start.
"""

API_VERSION = 1
