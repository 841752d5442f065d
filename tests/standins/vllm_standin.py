"""vLLM stand-in: ``python tests/standins/vllm_standin.py serve MODEL [vllm flags]``.

Owns: the HTTP surface of ``vllm serve`` as contracts.md §1 describes it (routes, status codes,
error envelopes, SSE framing, auth, dev-mode sleep routes), the startup sequence (port bound
first, listening only once "loaded", then ``Starting vLLM server on http://HOST:PORT``) and the
knobs documented in tests/standins/README.md. Must not: log per request, or import anything beyond
aiohttp and the stdlib (the gateway benchmark drives thousands of requests per second at it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web
from standin_common import (
    Lifecycle,
    bind_unlistened,
    bind_unlistened_unix,
    hang_middleware,
    log,
    run,
    serve_until_stopped,
)
from vllm_args import ServeConfig, parse
from vllm_engine import Engine, InFlight, MemorySink, VllmKnobs
from vllm_metrics import Metrics
from vllm_text import (
    DONE,
    ApiError,
    ChunkWriter,
    GenerationRequest,
    Sequence,
    Vocabulary,
    check_context,
    full_response,
    parse_chat,
    parse_completion,
    parse_json_body,
    piece,
    plan,
)

JSON = "application/json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
AUTH_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")


def _json(payload: object, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(payload).encode(), status=status, content_type=JSON)


def _error(err: ApiError) -> web.Response:
    return web.Response(body=err.body(), status=err.status, content_type=JSON)


def _crash_now() -> None:
    sys.stdout.write("ERROR stand-in: VLLM_STANDIN_CRASH_AFTER reached, exiting with status 1\n")
    sys.stdout.flush()
    os._exit(1)


class Server:
    """Route handlers; one instance per process, holding the engine, vocabulary and metrics."""

    def __init__(self, config: ServeConfig, knobs: VllmKnobs, engine: Engine) -> None:
        self.config = config
        self.knobs = knobs
        self.engine = engine
        self.served = config.served_model_names
        self.vocab = Vocabulary()
        self.metrics = Metrics(self.served[0])
        self.server_load = 0
        created = int(time.time())
        self.models_body = json.dumps(
            {
                "object": "list",
                "data": [
                    {
                        "id": name,
                        "object": "model",
                        "created": created,
                        "owned_by": "vllm",
                        "root": config.model,
                        "parent": None,
                        "max_model_len": config.max_model_len,
                        "permission": [
                            {
                                "id": f"modelperm-{uuid.uuid4().hex}",
                                "object": "model_permission",
                                "created": created,
                                "allow_create_engine": False,
                                "allow_sampling": True,
                                "allow_logprobs": True,
                                "allow_search_indices": False,
                                "allow_view": True,
                                "allow_fine_tuning": False,
                                "organization": "*",
                                "group": None,
                                "is_blocking": False,
                            }
                        ],
                    }
                    for name in self.served
                ],
            }
        ).encode()
        self.version_body = json.dumps({"version": knobs.version}).encode()

    # --- plain routes ---------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def version(self, request: web.Request) -> web.Response:
        return web.Response(body=self.version_body, content_type=JSON)

    async def load(self, request: web.Request) -> web.Response:
        return _json({"server_load": self.server_load})

    async def models(self, request: web.Request) -> web.Response:
        return web.Response(body=self.models_body, content_type=JSON)

    async def metrics_route(self, request: web.Request) -> web.Response:
        e = self.engine
        body = self.metrics.render(
            running=len(e.inflight),
            waiting=e.waiting,
            generating=sum(h.emitted for h in e.inflight),
            kv_usage=e.kv_usage(),
            sleep_level=e.sleep_level if e.asleep else (0 if e.paused else None),
        )
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def tokenize(self, request: web.Request) -> web.Response:
        try:
            body = parse_json_body(await request.read())
            self._check_model(body)
            if isinstance(body.get("prompt"), str):
                text = str(body["prompt"])
            elif isinstance(body.get("messages"), list):
                messages: list[object] = body["messages"]  # type: ignore[assignment]
                text = " ".join(str(m.get("content") or "") for m in messages if isinstance(m, dict))
            else:
                raise ApiError(400, "BadRequestError", "Either `prompt` or `messages` must be given.")
        except ApiError as err:
            return _error(err)
        tokens = self.vocab.encode(text)
        strs = text.split() if body.get("return_token_strs") else None
        return _json(
            {
                "count": len(tokens),
                "max_model_len": self.config.max_model_len,
                "tokens": tokens,
                "token_strs": strs,
            }
        )

    async def detokenize(self, request: web.Request) -> web.Response:
        try:
            body = parse_json_body(await request.read())
            self._check_model(body)
            tokens = body.get("tokens")
            if not isinstance(tokens, list) or not all(type(t) is int for t in tokens):
                raise ApiError(400, "BadRequestError", "`tokens` must be a list of integers.", "tokens")
            return _json({"prompt": self.vocab.decode([int(t) for t in tokens])})
        except ApiError as err:
            return _error(err)

    def _check_model(self, body: dict[str, object]) -> None:
        model = body.get("model")
        if model is not None and model not in self.served:
            raise ApiError(404, "NotFoundError", f"The model `{model}` does not exist.", "model")

    # --- dev-mode routes (VLLM_SERVER_DEV_MODE=1) -----------------------------------------------
    async def sleep(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        try:
            level = int(query.get("level", "1"))
        except ValueError:
            return _error(ApiError(400, "BadRequestError", f"Invalid sleep level {query.get('level')!r}", "level"))
        try:
            await self.engine.sleep(level, query.getall("tags", []), query.get("mode", "abort"))
        except ApiError as err:
            return _error(err)
        return web.Response(status=200)

    async def wake_up(self, request: web.Request) -> web.Response:
        await self.engine.wake_up(request.rel_url.query.getall("tags", []))
        return web.Response(status=200)

    async def is_sleeping(self, request: web.Request) -> web.Response:
        return _json({"is_sleeping": self.engine.is_sleeping})

    async def reset_prefix_cache(self, request: web.Request) -> web.Response:
        self.engine.prefix_cache.clear()
        return web.Response(status=200)

    async def reset_other_cache(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def unpin_prefixes(self, request: web.Request) -> web.Response:
        return _json({"unpinned": 0})

    async def collective_rpc(self, request: web.Request) -> web.Response:
        try:
            body = parse_json_body(await request.read())
            method = body.get("method")
            if not isinstance(method, str):
                raise ApiError(400, "BadRequestError", "Missing 'method' in request body")
            results = await self.engine.collective_rpc(method)
        except ApiError as err:
            return _error(err)
        return _json({"results": results})

    # --- generation -----------------------------------------------------------------------------
    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "chat")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "completion")

    async def _generate(self, request: web.Request, kind: str) -> web.StreamResponse:
        engine = self.engine
        try:
            body = parse_json_body(await request.read())
            req = parse_chat(body, self.served) if kind == "chat" else parse_completion(body, self.served, self.vocab)
            check_context(req, self.config.max_model_len)
            engine.check_can_generate()
        except ApiError as err:
            return _error(err)
        engine.generation_requests += 1
        crash = engine.generation_requests == self.knobs.crash_after
        if crash and not req.stream:
            _crash_now()
        self.metrics.prefix_queries += req.prompt_tokens
        self.metrics.prefix_hits += engine.prefix_lookup(
            hash((self.served[0], *map(tuple, req.prompt_words))), req.prompt_tokens
        )
        seqs = plan(req)
        arrived = time.monotonic()
        if engine.slots.locked():
            engine.waiting += 1
            try:
                await engine.slots.acquire()
            finally:
                engine.waiting -= 1
        else:
            await engine.slots.acquire()
        try:
            engine.check_can_generate()  # the engine may have gone to sleep while we queued
        except ApiError as err:
            engine.slots.release()
            return _error(err)
        handle = InFlight()
        engine.begin(handle)
        self.server_load += self.config.enable_server_load_tracking
        started = time.monotonic()
        try:
            if req.stream:
                return await self._stream(request, req, seqs, handle, crash)
            await self._pace_all(seqs, handle, started)
            return web.Response(body=full_response(req, seqs, handle.emitted, handle.aborted), content_type=JSON)
        except ConnectionError:
            handle.aborted = True  # the client went away mid-stream: vLLM aborts the request
            raise
        finally:
            emitted = handle.emitted
            engine.end(handle)
            engine.slots.release()
            self.server_load -= self.config.enable_server_load_tracking
            now = time.monotonic()
            reasons = [("abort" if handle.aborted and emitted < len(s.tokens) else s.finish_reason) for s in seqs]
            self.metrics.finished(
                prompt_tokens=req.prompt_tokens,
                generation_tokens=sum(min(emitted, len(s.tokens)) for s in seqs),
                reasons=reasons,
                queue_s=started - arrived,
                ttft_s=(started - arrived + self._ttft()) if emitted else None,
                e2e_s=now - arrived,
            )

    def _ttft(self) -> float:
        tps = self.knobs.tokens_per_s
        return self.knobs.ttft_s + (1.0 / tps if tps > 0 else 0.0)

    def _deadline(self, started: float, step: int) -> float:
        tps = self.knobs.tokens_per_s
        return started + self.knobs.ttft_s + ((step + 1) / tps if tps > 0 else 0.0)

    @staticmethod
    async def _wait(handle: InFlight, deadline: float) -> None:
        delay = deadline - time.monotonic()
        if delay > 0 and not handle.aborted:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(handle.wakeup.wait(), delay)

    @property
    def _paced(self) -> bool:
        return self.knobs.tokens_per_s > 0 or self.knobs.ttft_s > 0

    async def _pace_all(self, seqs: list[Sequence], handle: InFlight, started: float) -> None:
        steps = max(len(s.tokens) for s in seqs)
        if self._paced:
            for step in range(steps):
                await self._wait(handle, self._deadline(started, step))
                if handle.aborted:
                    return
                handle.emitted = step + 1
        handle.emitted = steps

    async def _stream(
        self,
        request: web.Request,
        req: GenerationRequest,
        seqs: list[Sequence],
        handle: InFlight,
        crash: bool,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
        )
        if self.config.enable_request_id_headers:
            resp.headers["X-Request-Id"] = request.headers.get("X-Request-Id") or uuid.uuid4().hex
        await resp.prepare(request)
        w = ChunkWriter(req)
        parts: list[str] = []
        if req.kind == "chat":
            parts.extend(w.role(s.index) for s in seqs)
        elif req.echo_texts:
            parts.extend(w.token(s.index, req.echo_texts[s.index // req.n]) for s in seqs)
        steps = max(len(s.tokens) for s in seqs)
        started = time.monotonic()
        paced = self._paced
        for step in range(steps):
            if crash and step == steps // 2:
                await resp.write("".join(parts).encode())
                _crash_now()
            if paced:
                if parts:
                    await resp.write("".join(parts).encode())
                    parts.clear()
                await self._wait(handle, self._deadline(started, step))
            if handle.aborted:
                break
            for s in seqs:
                if step < len(s.tokens):
                    w.completion_tokens += 1
                    last = step == len(s.tokens) - 1
                    parts.append(
                        w.token(
                            s.index,
                            piece(s.tokens, step, req.continues_text),
                            s.finish_reason if last else None,
                            s.stop_reason if last else None,
                        )
                    )
            handle.emitted = step + 1
        if crash:  # fewer steps than the crash point (e.g. max_tokens=1 after the role chunk)
            await resp.write("".join(parts).encode())
            _crash_now()
        for s in seqs:
            if handle.aborted and handle.emitted < len(s.tokens):
                parts.append(w.token(s.index, "", "abort"))
            elif not s.tokens:
                parts.append(w.token(s.index, "", s.finish_reason, s.stop_reason))
        if req.include_usage:
            parts.append(w.final_usage())
        parts.append(DONE)
        await resp.write("".join(parts).encode())
        await resp.write_eof()
        return resp

    # --- app ------------------------------------------------------------------------------------
    def build_app(self, dev_mode: bool) -> web.Application:
        middlewares: list[Callable[..., Awaitable[web.StreamResponse]]] = []
        if self.knobs.hang:
            middlewares.append(hang_middleware)
        if self.config.api_keys:
            middlewares.append(self._auth_middleware())
        if self.config.enable_request_id_headers:
            middlewares.append(_request_id_middleware)
        app = web.Application(middlewares=middlewares, client_max_size=64 * 1024 * 1024)
        routes: list[tuple[str, str, Handler]] = [
            ("GET", "/health", self.health),
            ("GET", "/ping", self.health),
            ("POST", "/ping", self.health),
            ("GET", "/version", self.version),
            ("GET", "/load", self.load),
            ("GET", "/v1/models", self.models),
            ("GET", "/metrics", self.metrics_route),
            ("POST", "/tokenize", self.tokenize),
            ("POST", "/detokenize", self.detokenize),
            ("POST", "/v1/chat/completions", self.chat),
            ("POST", "/v1/completions", self.completions),
        ]
        if not self.config.disable_fastapi_docs:
            routes += [("GET", "/openapi.json", self.openapi), ("GET", "/docs", self.docs)]
        if dev_mode:
            routes += [
                ("POST", "/sleep", self.sleep),
                ("POST", "/wake_up", self.wake_up),
                ("GET", "/is_sleeping", self.is_sleeping),
                ("POST", "/reset_prefix_cache", self.reset_prefix_cache),
                ("POST", "/reset_mm_cache", self.reset_other_cache),
                ("POST", "/reset_encoder_cache", self.reset_other_cache),
                ("POST", "/unpin_all_pinned_prefixes", self.unpin_prefixes),
                ("POST", "/collective_rpc", self.collective_rpc),
            ]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
        known = {path for _, path, _ in routes}

        async def not_found(request: web.Request) -> web.Response:
            # FastAPI's defaults for unrouted paths (vLLM's envelope handler does not see these).
            if request.path in known:
                return _json({"detail": "Method Not Allowed"}, status=405)
            return _json({"detail": "Not Found"}, status=404)

        app.router.add_route("*", "/{tail:.*}", not_found)
        self.paths = sorted(known)
        return app

    async def openapi(self, request: web.Request) -> web.Response:
        return _json(
            {
                "openapi": "3.1.0",
                "info": {"title": "FastAPI", "version": "0.1.0"},
                "paths": {p: {} for p in self.paths},
            }
        )

    async def docs(self, request: web.Request) -> web.Response:
        return web.Response(text="<!DOCTYPE html><title>vLLM stand-in - Swagger UI</title>", content_type="text/html")

    def _auth_middleware(self) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
        expected = {f"Bearer {key}" for key in self.config.api_keys}

        @web.middleware
        async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
            if (
                request.method != "OPTIONS"
                and request.path.startswith(AUTH_PREFIXES)
                and request.headers.get("Authorization") not in expected
            ):
                return _json({"error": "Unauthorized"}, status=401)
            return await handler(request)

        return auth


@web.middleware
async def _request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    if not response.prepared:
        response.headers["X-Request-Id"] = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    return response


def _dev_mode() -> bool:
    value = os.environ.get("VLLM_SERVER_DEV_MODE", "0")
    try:
        return bool(int(value))  # vllm/envs.py: bool(int(os.getenv("VLLM_SERVER_DEV_MODE", "0")))
    except ValueError:
        print(
            f"ValueError: invalid literal for int() with base 10: {value!r} (VLLM_SERVER_DEV_MODE)",
            file=sys.stderr,
        )
        raise SystemExit(1) from None


async def amain(argv: list[str]) -> int:
    config = parse(argv)
    knobs = VllmKnobs.from_env(config)
    dev_mode = _dev_mode()
    sock = bind_unlistened_unix(config.uds) if config.uds else bind_unlistened(config.host or "0.0.0.0", config.port)
    log(f"[api_server.py] vLLM API server version {knobs.version}")
    names = list(config.served_model_names)
    log(f"[utils.py] non-default args: model={config.model!r} served_model_name={names}")
    lifecycle = Lifecycle(hang=knobs.hang)
    lifecycle.install_signals()
    sink = MemorySink(knobs)
    engine = Engine(config, knobs, sink)
    try:
        engine.report_memory()  # weights load, profiling and the KV cache all happen before serving
        if not await lifecycle.load(knobs.start_delay_s, knobs.ready_file):
            return 0
        server = Server(config, knobs, engine)
        app = server.build_app(dev_mode)
        where = f"unix:{config.uds}" if config.uds else f"http://{config.host or '0.0.0.0'}:{config.port}"

        def announce() -> None:
            log(f"[api_server.py] Starting vLLM server on {where}")
            log("[launcher.py] Available routes are: " + ", ".join(server.paths))
            log("Application startup complete.")

        await serve_until_stopped(app, sock, lifecycle, announce)
        return 0
    finally:
        sink.close()


if __name__ == "__main__":
    run(lambda: amain(sys.argv[1:]))
