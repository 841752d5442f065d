"""The metrics endpoints: `GET /metrics` (the appliance's own, rendered at scrape time) and
`GET /metrics/engines/NAME` (a vLLM engine's own /metrics, relayed: engines bind loopback, so this
is the only way a Prometheus elsewhere can reach them).

Authentication is decided before this runs (gateway.front). It must not render metrics itself
(appliance.metrics does) nor reach any engine but a configured vLLM one.
"""

from __future__ import annotations

import aiohttp

from ..app import Appliance
from ..metrics import CONTENT_TYPE, MetricsExporter
from ..supervisor.states import ProcessState
from .errors import MethodNotAllowed, NotFound, Unavailable, UpstreamFailed
from .exchange import Exchange

ENGINE_PREFIX = "/metrics/engines/"
ENGINE_TIMEOUT_S = 10.0


class MetricsEndpoint:
    def __init__(self, appliance: Appliance, exporter: MetricsExporter) -> None:
        self.app = appliance
        self.exporter = exporter

    async def serve(self, ex: Exchange, path: str) -> None:
        """Raises ApiError for the caller to report."""
        if ex.scope["method"] not in ("GET", "HEAD"):
            raise MethodNotAllowed("metrics are read with GET")
        if path == "/metrics":
            await ex.respond(200, self.exporter.render(), CONTENT_TYPE)
            return
        if not path.startswith(ENGINE_PREFIX) or not self.app.config.metrics.engine_metrics:
            raise NotFound(f"no route GET {path}")
        await self._engine(ex, path[len(ENGINE_PREFIX):])

    async def _engine(self, ex: Exchange, name: str) -> None:
        eng = self.app.engines.get(name)
        if eng is None or eng.kind != "vllm":
            vllm = ", ".join(n for n, e in self.app.engines.items() if e.kind == "vllm") or "none"
            raise NotFound(f"no vLLM engine named {name!r} (vLLM engines: {vllm})")
        if eng.state is not ProcessState.READY:
            raise Unavailable(f"engine {name} is {eng.state.value}: its metrics exist only while it runs",
                              code="engine_not_running", retry_after=30)
        try:
            async with eng.session.get(eng.base_url + "/metrics",
                                       timeout=aiohttp.ClientTimeout(total=ENGINE_TIMEOUT_S)) as resp:
                body = await resp.read()
                ctype = resp.headers.get("content-type", CONTENT_TYPE.decode())
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamFailed(f"engine {name} did not answer /metrics: {exc!r}") from exc
        if status != 200:
            raise UpstreamFailed(f"engine {name} answered /metrics with HTTP {status}")
        await ex.respond(200, body, ctype.encode("latin-1"))
