"""`appliance router`: the fleet's front door (docs/fleet.md, "The router").

Router mode of the same package: no GPU, no engines. It reads the box registry from the shared store,
turns it into HAProxy's routing state (a map from model id to a backend, and which box slots each
backend may use), pushes changes through HAProxy's runtime API (no reload for residency changes),
supervises the haproxy process and serves its own small API and fleet page on loopback.

Modules: `plan` (pure: registry rows -> desired routing), `haproxy_config` (pure: the config text from
the templates in packaging/haproxy/), `commands` (pure: the runtime-API commands between two plans),
`runtime` (the runtime-API client), `process` (the haproxy process), `service` (the sync loop, the
one owner of the current plan), `api` (the HTTP app), `cli` (the command line).
It must not import the daemon's engines, scheduler or GPU code.
"""
