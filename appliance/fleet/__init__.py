"""Several appliance boxes as one fleet behind `appliance router` (docs/fleet.md).

Owns: the box side of the fleet (the registry heartbeat, the residency summary the router routes by,
drain, the router's token) and the router mode. `API_VERSION` is the box API's version (the
endpoints and headers the router relies on): bumped on an incompatible change to them, so a router
can keep routing to boxes of an older but compatible version during a rolling upgrade.
It must not import anything heavy at module level: the daemon imports it at start.
"""

API_VERSION = 1
