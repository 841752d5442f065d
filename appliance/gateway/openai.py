"""The OpenAI-compatible /v1 routes: models, chat and text completions, embeddings, images, speech,
transcriptions and translations (multipart uploads, checked by gateway.transcribe).

Each handler reads the body (size-limited), checks only what the gateway relies on (gateway.validation),
resolves the model from the configuration, takes a lease from the residency manager, and sends the
request to the model's engine: proxied as is to vLLM and the own workers (gateway.proxy), or run as a
ComfyUI workflow (gateway.comfy). While a streaming request waits for its model, the client gets SSE
comments every `server.keepalive_interval_s`; a non-streaming one simply waits, up to
`server.load_deadline_s`. Every finished request is reported to the usage sink (when it named a
model), to the `TrafficMeter` the metrics read, and in one access log line (`appliance.access`).
It must not decide residency (the lease does) nor build error bodies (gateway.errors does).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..app import Appliance
from ..config import ModelConfig
from ..engines.vllm import VllmAdapter
from ..fleet.drain import DRAIN_RETRY_AFTER_S
from ..logsetup import MODEL
from ..residency import Lease
from ..traffic import TrafficMeter
from ..usage import UsageSink
from . import gather, proxy, resume, routing, transcribe, validation
from .audio import CONTENT_TYPES, duration_s
from .comfy import ComfyClient
from .errors import (
    ApiError,
    EngineError,
    EngineUnreachable,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    Unavailable,
    UpstreamFailed,
    internal_error,
)
from .exchange import ClientGone, Exchange, KeepAlive
from .images import ImageStore
from .keys import ApiKey
from .leasing import Call, on_engine
from .upstream import UpstreamPools
from .workflows import WorkflowError, WorkflowLibrary

log = logging.getLogger("appliance.gateway")
access = logging.getLogger("appliance.access")

IMAGE_ALIASES = ("dall-e", "gpt-image")  # OpenAI's names: clients send them by default
SPEECH_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")


Handler = Callable[[Exchange, Call], Awaitable[None]]


class OpenAIRoutes:
    def __init__(self, appliance: Appliance, usage: UsageSink, images: ImageStore) -> None:
        self.app = appliance
        self.config = appliance.config
        self.max_body = appliance.config.server.max_body_bytes
        self.keepalive_s = appliance.config.server.keepalive_interval_s
        self.usage = usage
        self.images = images
        self.pools = UpstreamPools()  # the data path's keep-alive connections, one pool per engine
        self.workflows = WorkflowLibrary()
        self.background: set[asyncio.Task[None]] = set()  # clean-ups that outlive their request
        self.routes: dict[str, tuple[str, Handler]] = {
            "/v1/chat/completions": ("POST", self.chat),
            "/v1/completions": ("POST", self.completions),
            "/v1/embeddings": ("POST", self.embeddings),
            "/v1/images/generations": ("POST", self.image_generations),
            "/v1/audio/speech": ("POST", self.speech),
            "/v1/audio/transcriptions": ("POST", self.transcriptions),
            "/v1/audio/translations": ("POST", self.translations),
            "/v1/models": ("GET", self.list_models),
        }
        # metrics.enabled = false: nothing reads it, so nothing is recorded either
        self.traffic = TrafficMeter(self.routes, self.config.models) if self.config.metrics.enabled else None

    # -- dispatch --------------------------------------------------------------------------------
    async def handle(self, ex: Exchange, key: ApiKey | None) -> None:
        path: str = ex.scope["path"]
        call = Call(path, key.id if key is not None else None)
        try:
            await self._dispatch(ex, call, path)
        except ApiError as err:
            call.error = err.code or err.type
            await ex.fail(err)
        except ClientGone:
            call.error = "client_disconnected"
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not ex.disconnected or task is None:
                raise
            task.uncancel()  # our own cancellation for a client that went away: nothing left to send
            call.error = "client_disconnected"
        except Exception:  # a bug: the envelope with a request id; the exception's text goes to the log only
            call.error = "internal_error"
            await ex.fail(internal_error(log, path))
        finally:
            ex.close()
            rec = call.record(ex.status or 499)
            if call.model:
                self.usage.record(rec)
            if self.traffic is not None:
                self.traffic.observe(rec, call.ttft_s)
            if access.isEnabledFor(logging.INFO):
                access.info("%s %s %d %.3fs wait %.3fs%s", ex.scope["method"], call.route[:64], rec.status,
                            rec.wall_s, rec.wait_s, f" error {rec.error}" if rec.error else "")

    async def _dispatch(self, ex: Exchange, call: Call, path: str) -> None:
        method: str = ex.scope["method"]
        route = self.routes.get(path)
        if route is None:
            if method in ("GET", "HEAD") and path.startswith("/v1/models/"):
                return await self.retrieve_model(ex, path[len("/v1/models/"):])
            raise NotFound(f"no route {method} {path}")
        if method != route[0] and not (method == "HEAD" and route[0] == "GET"):
            raise MethodNotAllowed(f"{path} accepts {route[0]}, not {method}")
        if not self.app.accepting:
            raise Unavailable(self.app.refusal(), retry_after=DRAIN_RETRY_AFTER_S)
        await route[1](ex, call)

    # -- models ----------------------------------------------------------------------------------
    def _card(self, mid: str, m: ModelConfig) -> dict[str, Any]:
        engine = self.config.engines[m.engine]
        wait = self.app.residency.wait_estimate(mid)
        card = {"id": mid, "object": "model", "created": int(self.app.started_at), "owned_by": "appliance",
                "modality": m.modality, "engine": m.engine, "engine_kind": engine.kind,
                "tier": self.app.residency.tier(mid), "queued": wait.queued, "expected_load_s": round(wait.load_s, 1)}
        if m.modality == "speech":
            card["voices"] = sorted(m.voices)
        return card

    async def list_models(self, ex: Exchange, call: Call) -> None:
        data = [self._card(mid, m) for mid, m in self.config.models.items()]
        await ex.respond(200, json.dumps({"object": "list", "data": data}).encode())

    async def retrieve_model(self, ex: Exchange, mid: str) -> None:
        m = self.config.models.get(mid)
        if m is None:
            raise ModelNotFound(f"model {mid!r} does not exist", param="model")
        await ex.respond(200, json.dumps(self._card(mid, m)).encode())

    def _model(self, name: str, modality: str, route: str) -> ModelConfig:
        m = self.config.models.get(name)
        if m is None:
            known = ", ".join(k for k, v in self.config.models.items() if v.modality == modality) or "none"
            raise ModelNotFound(f"model {name!r} does not exist (available {modality} models: {known})",
                                param="model")
        if m.modality != modality:
            raise InvalidRequest(f"model {name!r} is a {m.modality} model; {route} serves {modality} models",
                                 param="model", code="model_not_supported")
        MODEL.set(name)  # a configured id: safe to put in every log line of this request
        return m

    def _context_tokens(self, m: ModelConfig) -> int | None:
        """A vLLM model's context length when the daemon set or sized it (the appliance's text worker
        checks its own, as it knows its model's)."""
        engine = self.app.engines.get(m.engine)
        adapter = engine.adapter if engine is not None else None
        if not isinstance(adapter, VllmAdapter):
            return None
        configured = adapter.vcfg.max_model_len
        return configured if isinstance(configured, int) else adapter.max_model_len

    def _default(self, name: str | None, modality: str, aliases: tuple[str, ...]) -> str | None:
        """The first configured model of `modality` when `name` is missing or one of OpenAI's names."""
        if name is not None and (name in self.config.models or not name.startswith(aliases)):
            return name
        return next((k for k, v in self.config.models.items() if v.modality == modality), name)

    def model_for(self, name: str | None, modality: str, route: str, aliases: tuple[str, ...] = ()) -> str:
        """The configured model a request for `route` names (OpenAI's default names, `aliases`, mean the
        first model of `modality`), checked to exist and to serve `modality`: what a queued job runs."""
        resolved = self._default(name, modality, aliases) if aliases else name
        if not resolved:
            raise ModelNotFound(f"no {modality} model is configured", param="model")
        self._model(resolved, modality, route)
        return resolved

    @staticmethod
    def base_url(ex: Exchange) -> str:
        """scheme://host the client used (behind a proxy: its X-Forwarded headers)."""
        return OpenAIRoutes._base_url(ex)

    # -- text ------------------------------------------------------------------------------------
    async def chat(self, ex: Exchange, call: Call) -> None:
        await self._generate(ex, call, validation.check_chat)

    async def completions(self, ex: Exchange, call: Call) -> None:
        await self._generate(ex, call, validation.check_completion)

    async def _generate(self, ex: Exchange, call: Call,
                        check: Callable[[dict[str, Any]], validation.Generation]) -> None:
        raw = await ex.read_body(self.max_body)
        body = validation.parse_body(raw)
        if routing.apply_model_header(body, ex.header(b"x-model")):
            raw = json.dumps(body).encode()
        name = validation.model_name(body) or ""
        call.model = name  # recorded even if the request is rejected below
        m = self._model(name, "text", call.route)
        gen = check(body)
        validation.check_prompt_length(body, self._context_tokens(m))
        # The model's cap bounds every generation, and so how long a drain before a swap can take:
        # clamp a larger max_tokens, and set it where the client left it open.
        if gen.max_tokens is None:
            body["max_tokens"] = m.max_tokens_cap
            raw = json.dumps(body).encode()
        elif gen.max_tokens_field and gen.max_tokens > m.max_tokens_cap:
            body[gen.max_tokens_field] = m.max_tokens_cap  # the request still runs, shorter
            raw = json.dumps(body).encode()
        ex.watch_disconnect()
        preemption = self.app.config.scheduler.preemption
        if gen.stream:
            resumable = preemption and resume.can_resume(call.route, body)
            await self._stream(ex, call, name, raw, body if resumable else None)
            return
        if preemption and resume.can_resume(call.route, body, whole=True):
            await self._whole_from_stream(ex, call, name, raw, body)
            return
        status, data, ctype = await on_engine(self.app, name, call, lambda lease: proxy.post(
            proxy.upstream(self.pools, lease), call.route, raw))
        if status == 200:
            call.tokens_in, call.tokens_out = proxy.find_usage(data) or (None, None)
        await ex.respond(status, data, ctype)

    async def _stream(self, ex: Exchange, call: Call, name: str, raw: bytes,
                      resumable: dict[str, Any] | None = None) -> None:
        """Relay a stream; `resumable` (the parsed body) when it may be preempted and resumed."""
        meter = proxy.StreamMeter()
        residency = self.app.residency
        keepalive = KeepAlive(ex, lambda: residency.wait_estimate(name).comment(name), self.keepalive_s)
        stitch = resume.StreamStitch(resumable, call.route) if resumable is not None else None

        async def relay(lease: Lease) -> int:
            await keepalive.stop()
            try:
                if stitch is not None and lease.preemption is not None:
                    return await resume.relay_resumable(ex, self.pools, lease, stitch.request(), meter, stitch,
                                                        keepalive)
                return await proxy.relay_stream(ex, proxy.upstream(self.pools, lease), call.route, raw, meter)
            except EngineUnreachable:
                keepalive.start()  # nothing was sent upstream; keep the client company until the retry
                raise

        keepalive.start()
        try:
            await on_engine(self.app, name, call, relay, preemptible=stitch is not None)
        finally:
            await keepalive.stop()
            if meter.first_at is not None:
                call.ttft_s = meter.first_at - call.started
            if meter.usage is not None:
                call.tokens_in, call.tokens_out = meter.usage
            else:
                call.tokens_out, call.tokens_exact = meter.chunks, False

    async def _whole_from_stream(self, ex: Exchange, call: Call, name: str, raw: bytes, body: dict[str, Any]) -> None:
        """A non-streamed chat or completion that may be preempted: the engine streams it (resumed
        after any preemption) and the client gets the one answer built from that stream (`gather`).
        A lease that turns out not preemptible is served as usual."""
        stitch = resume.StreamStitch({**body, "stream": True, "stream_options": {"include_usage": True}}, call.route)

        async def relay(lease: Lease) -> tuple[int, bytes, bytes]:
            if lease.preemption is None:
                return await proxy.post(proxy.upstream(self.pools, lease), call.route, raw)
            sink = gather.Gathered()
            keepalive = KeepAlive(sink, "", self.keepalive_s)  # nobody to keep company: the client waits for JSON
            status = await resume.relay_resumable(sink, self.pools, lease, stitch.request(), proxy.StreamMeter(),
                                                  stitch, keepalive)
            return sink.answer(status)

        status, data, ctype = await on_engine(self.app, name, call, relay, preemptible=True)
        if status == 200:
            call.tokens_in, call.tokens_out = stitch.usage or proxy.find_usage(data) or (None, None)
        await ex.respond(status, data, ctype)

    # -- embeddings ------------------------------------------------------------------------------
    async def embeddings(self, ex: Exchange, call: Call) -> None:
        raw = await ex.read_body(self.max_body)
        body = validation.parse_body(raw)
        if routing.apply_model_header(body, ex.header(b"x-model")):
            raw = json.dumps(body).encode()
        name = validation.model_name(body) or ""
        call.model = name  # recorded even if the request is rejected below
        self._model(name, "embedding", call.route)
        validation.check_embeddings(body)
        ex.watch_disconnect()
        status, data, ctype = await on_engine(self.app, name, call, lambda lease: proxy.post(
            proxy.upstream(self.pools, lease), call.route, raw))
        if status == 200:
            call.tokens_in = (proxy.find_usage(data) or (None, None))[0]
            call.tokens_out = 0
        await ex.respond(status, data, ctype)

    # -- speech ----------------------------------------------------------------------------------
    async def speech(self, ex: Exchange, call: Call) -> None:
        raw = await ex.read_body(self.max_body)
        body = validation.parse_body(raw)
        if routing.apply_model_header(body, ex.header(b"x-model")):
            raw = json.dumps(body).encode()
        name = self._default(validation.model_name(body), "speech", SPEECH_ALIASES) or ""
        call.model = name  # recorded even if the request is rejected below
        self._model(name, "speech", call.route)
        req = validation.check_speech(body)
        if name != body.get("model"):
            body["model"] = name
            raw = json.dumps(body).encode()
        ex.watch_disconnect()
        content_type = CONTENT_TYPES[req.response_format].encode()
        status, audio = await on_engine(self.app, name, call, lambda lease: proxy.relay_raw(
            ex, proxy.upstream(self.pools, lease), call.route, raw, content_type))
        if status == 200:
            call.audio_s = duration_s(req.response_format, audio)

    # -- transcriptions and translations --------------------------------------------------------
    async def transcriptions(self, ex: Exchange, call: Call) -> None:
        await self._speech_to_text(ex, call, translate=False)

    async def translations(self, ex: Exchange, call: Call) -> None:
        await self._speech_to_text(ex, call, translate=True)

    async def _speech_to_text(self, ex: Exchange, call: Call, translate: bool) -> None:
        raw = await ex.read_body(self.max_body + transcribe.FORM_OVERHEAD_BYTES)
        form, req = transcribe.check(ex.header(b"content-type"), raw, translate, self.max_body)
        name = self._default(routing.model_from(req.model, ex.header(b"x-model")), "transcription",
                             transcribe.ALIASES) or ""
        call.model = name  # recorded even if the request is rejected below
        self._model(name, "transcription", call.route)
        body, content_type = transcribe.forward(form, name)
        ex.watch_disconnect()
        if req.stream:
            meter = proxy.StreamMeter()
            keepalive = KeepAlive(ex, f"waiting for model {name} to load", self.keepalive_s)

            async def relay(lease: Lease) -> int:
                await keepalive.stop()
                return await proxy.relay_stream(ex, proxy.upstream(self.pools, lease), call.route, body, meter,
                                                content_type)

            keepalive.start()
            try:
                await on_engine(self.app, name, call, relay)
            finally:
                await keepalive.stop()
            return
        status, data, ctype = await on_engine(self.app, name, call, lambda lease: proxy.post(
            proxy.upstream(self.pools, lease), call.route, body, content_type))
        await ex.respond(status, data, ctype)

    # -- images ----------------------------------------------------------------------------------
    async def image_generations(self, ex: Exchange, call: Call) -> None:
        raw = await ex.read_body(self.max_body)
        body = validation.parse_body(raw)
        routing.apply_model_header(body, ex.header(b"x-model"))  # the body is written again for its engine
        name = self._default(validation.model_name(body, required=False), "image", IMAGE_ALIASES)
        if name is None:
            raise ModelNotFound("no image model is configured", param="model")
        call.model = name
        m = self._model(name, "image", call.route)
        req = validation.check_image(body)
        seed: int | None
        if self.config.engines[m.engine].kind == "comfyui":
            images, seed = await self._comfy_images(ex, call, m, req)
        else:
            images, seed = await self._worker_images(ex, call, name, body, req)
        call.images = len(images)
        items: list[dict[str, Any]] = []
        base = self._base_url(ex) if req.response_format == "url" else ""
        for data in images:
            if req.response_format == "url":
                items.append({"url": self.images.put(data, base), "revised_prompt": req.prompt})
            else:
                items.append({"b64_json": base64.b64encode(data).decode(), "revised_prompt": req.prompt})
        payload: dict[str, Any] = {"created": int(time.time()), "data": items}
        if seed is not None:
            payload["seed"] = seed
        await ex.respond(200, json.dumps(payload).encode())

    async def _comfy_images(self, ex: Exchange, call: Call, m: ModelConfig,
                            req: validation.ImageRequest) -> tuple[list[bytes], int]:
        try:
            workflow = self.workflows.load(m.workflow)
        except WorkflowError as exc:
            raise ApiError(f"model {call.model!r} is misconfigured: {exc}", code="workflow_misconfigured") from exc
        seed = req.seed if req.seed is not None else secrets.randbelow(2**48)
        values: dict[str, Any] = {"prompt": req.prompt, "negative_prompt": req.negative_prompt,
                                  "width": req.width, "height": req.height, "seed": seed,
                                  "checkpoint": m.checkpoint or None}
        if workflow.batches:
            graphs = [workflow.render({**values, "batch_size": req.n})]
        else:  # no batch input in this template: one prompt per image, consecutive seeds
            graphs = [workflow.render({**values, "seed": seed + i}) for i in range(req.n)]
        ex.watch_disconnect()

        async def run(lease: Lease) -> list[bytes]:
            client = ComfyClient(lease.engine.session, lease.endpoint, self.background)
            images: list[bytes] = []
            for graph in graphs:
                images += await client.run(graph, self.app.config.server.image_timeout_s)
            return images

        return (await on_engine(self.app, call.model, call, run))[:req.n], seed

    async def _worker_images(self, ex: Exchange, call: Call, name: str, body: dict[str, Any],
                             req: validation.ImageRequest) -> tuple[list[bytes], int | None]:
        body = {**body, "model": name, "response_format": "b64_json"}
        ex.watch_disconnect()
        raw = json.dumps(body).encode()
        status, data, _ = await on_engine(self.app, name, call, lambda lease: proxy.post(
            proxy.upstream(self.pools, lease), call.route, raw))
        if status != 200:
            raise EngineError(status, data)
        try:
            parsed = json.loads(data)
            items = parsed["data"]
            images = [base64.b64decode(item["b64_json"], validate=True) for item in items]
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            log.warning("image worker answered an unreadable body: %r", exc)
            raise UpstreamFailed("image worker answered an unreadable body") from exc
        first = items[0].get("seed") if items and isinstance(items[0], dict) else None
        seed = first if isinstance(first, int) else req.seed  # the worker reports the seed it used
        return images, seed

    @staticmethod
    def _base_url(ex: Exchange) -> str:
        scheme = (ex.header(b"x-forwarded-proto") or str(ex.scope.get("scheme", "http")).encode()).decode("latin-1")
        host = ex.header(b"x-forwarded-host") or ex.header(b"host")
        if host is None:
            server = ex.scope.get("server") or ("127.0.0.1", 80)
            return f"{scheme}://{server[0]}:{server[1]}"
        return f"{scheme.split(',')[0].strip()}://{host.decode('latin-1').split(',')[0].strip()}"
