"""The worker protocol every appliance worker speaks: one process, one model, one aiohttp server.

Owns the common command line (`--host --port --model-id --model-path --device --preload`), the
residency state machine, the control routes, the single model thread, fake GPU reporting and an orderly
shutdown:

    GET  /health   -> {"status": "ok", "state": "unloaded" | "loading" | "loaded" | "offloaded"}
    POST /load     -> load from disk, or wake from host RAM; idempotent
    POST /offload  -> weights to (pinned) host RAM, GPU memory freed; a state change on CPU devices
    POST /unload   -> weights dropped
    POST /cancel   -> {"request_id"}: cancel that data request; answers once the model thread has let go
                      of it (`services.jobs`), so the caller knows the engine is idle again
    GET  /stats    -> device, bytes on GPU and in host RAM, load/wake/offload timings, requests served,
                      whether a request is running, units of work done, cancelled requests

States: unloaded -> loading -> loaded <-> offloaded (offloaded -> loading -> loaded on a wake), and any
state -> unloaded. Transitions hold one asyncio condition; offload and unload first wait until no data
request is in flight, so weights never move under a running request. Every weight operation and every
inference runs on one "model thread", in submission order, so backends need no locks and /health keeps
answering while a model loads.

Client gone: a data request whose connection closes is cancelled (aiohttp's handler cancellation);
`run_job` then cancels its job, which the backend notices between two units of work, and waits until
the model thread has let go of it before the request's slot is freed, so the next request never queues
behind abandoned work. Control routes and loads run to their end whoever hangs up (shielded), so a
transition is never left half-done.

Must not import torch or any model library (backends do, on the model thread, after /health answers)
and must not know any modality's data routes (each worker adds its own through `add_routes`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from aiohttp import web

from appliance.fields import FieldError
from services.errors import OpenAIError, from_field_error
from services.fake_gpu import FakeGpuReporter
from services.jobs import REQUEST_ID_HEADER, Cancelled, Job, Jobs, outlast
from services.memory import MemoryUsage

log = logging.getLogger("services")

T = TypeVar("T")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
MAX_BODY_BYTES = 64 * 1024 * 1024


class Residency(StrEnum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    OFFLOADED = "offloaded"


class ModelBackend(Protocol):
    """What a worker's model does; every method runs on the model thread.

    prepare: import the heavy libraries, resolve the device, return its name ("cuda:0", "cpu");
    load: weights from disk onto the device; offload: weights to host RAM, device memory freed (CPU:
    nothing moves); wake: offloaded weights back onto the device; unload: drop the weights.
    """

    def prepare(self) -> str: ...

    def load(self) -> None: ...

    def offload(self) -> None: ...

    def wake(self) -> None: ...

    def unload(self) -> None: ...

    def memory(self) -> MemoryUsage: ...


@dataclass(frozen=True)
class WorkerOptions:
    kind: str
    host: str
    port: int
    model_id: str
    model_path: str
    device: str
    preload: bool


def _device_arg(value: str) -> str:
    if not _DEVICE_RE.match(value):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N; got {value!r}")
    return value


def argument_parser(kind: str, description: str) -> argparse.ArgumentParser:
    """The common command line; each worker adds its own flags to the returned parser."""
    parser = argparse.ArgumentParser(prog=f"python -m services.{kind}", description=description)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (loopback only in the appliance)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-id", required=True, help="the id clients use in the 'model' field")
    parser.add_argument("--model-path", required=True, help="local directory or file, or a hub repo id")
    parser.add_argument("--device", type=_device_arg, default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--preload", action="store_true", help="load the weights right after start")
    return parser


def worker_options(kind: str, ns: argparse.Namespace) -> WorkerOptions:
    return WorkerOptions(
        kind=kind,
        host=str(ns.host),
        port=int(ns.port),
        model_id=str(ns.model_id),
        model_path=str(ns.model_path),
        device=str(ns.device),
        preload=bool(ns.preload),
    )


class LoadFailed(Exception):
    """The backend could not load or wake its model."""


class Worker:
    """Owns the residency state, the model thread and the in-flight count of one worker process."""

    def __init__(self, options: WorkerOptions, backend: ModelBackend, reporter: FakeGpuReporter | None) -> None:
        self.options = options
        self.backend = backend
        self._reporter = reporter
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{options.kind}-model")
        self._cond = asyncio.Condition()
        self._state = Residency.UNLOADED
        self._in_flight = 0
        self._device = options.device
        self._prepared: asyncio.Future[str] | None = None
        self._memory = MemoryUsage()
        self.load_seconds: float | None = None
        self.wake_seconds: float | None = None
        self.offload_seconds: float | None = None
        self.requests_served = 0
        self.last_error: str | None = None
        self.jobs = Jobs()

    @property
    def state(self) -> Residency:
        return self._state

    @property
    def device(self) -> str:
        return self._device

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the model thread (after everything submitted before it)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue `fn(*args)` on the model thread without waiting (streaming producers)."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def submit_job(self, job: Job, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue `fn(*args)` for `job` on the model thread; a job cancelled while queued never starts."""

        def call() -> T:
            job.check()
            job.running = True
            try:
                return fn(*args)
            finally:
                job.running = False

        return self.submit(call)

    async def run_job(self, job: Job, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` for `job` on the model thread. If the caller is cancelled (the client went
        away), the job is cancelled and this waits until the model thread has let go of it."""
        return await outlast(self.submit_job(job, fn, *args), job.cancel)

    def start_preparing(self) -> None:
        if self._prepared is None:
            self._prepared = asyncio.ensure_future(self.run(self.backend.prepare))

    def shutdown_executor(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _set_state(self, state: Residency) -> None:
        if state is not self._state:
            log.info("%s %s: %s -> %s", self.options.kind, self.options.model_id, self._state.value, state.value)
        self._state = state
        if self._reporter is not None:
            self._reporter.report(resident=state is Residency.LOADED)

    async def _refresh_memory(self) -> None:
        self._memory = await self.run(self.backend.memory)

    async def load(self) -> dict[str, Any]:
        async with self._cond:
            return await self._load_locked()

    async def _load_locked(self) -> dict[str, Any]:
        if self._state is Residency.LOADED:
            return {"state": Residency.LOADED.value, "seconds": 0.0}
        waking = self._state is Residency.OFFLOADED
        previous = self._state
        self._set_state(Residency.LOADING)
        started = time.perf_counter()
        try:
            self.start_preparing()
            assert self._prepared is not None
            self._device = await self._prepared
            await self.run(self.backend.wake if waking else self.backend.load)
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("%s %s: %s failed", self.options.kind, self.options.model_id, "wake" if waking else "load")
            # A failed wake leaves the weights in host RAM (backends rebind only after a copy succeeds);
            # a failed cold load may have left part of a model behind: drop it.
            if not waking:
                with contextlib.suppress(Exception):
                    await self.run(self.backend.unload)
            self._set_state(previous)
            with contextlib.suppress(Exception):
                await self._refresh_memory()
            raise LoadFailed(self.last_error) from exc
        seconds = time.perf_counter() - started
        if waking:
            self.wake_seconds = seconds
        else:
            self.load_seconds = seconds
        self.last_error = None
        await self._refresh_memory()
        self._set_state(Residency.LOADED)
        return {"state": Residency.LOADED.value, "seconds": seconds}

    async def offload(self) -> dict[str, Any]:
        async with self._cond:
            await self._cond.wait_for(lambda: self._in_flight == 0)
            if self._state is not Residency.LOADED:
                return {"state": self._state.value, "seconds": 0.0}
            started = time.perf_counter()
            await self.run(self.backend.offload)
            self.offload_seconds = time.perf_counter() - started
            await self._refresh_memory()
            self._set_state(Residency.OFFLOADED)
            return {"state": Residency.OFFLOADED.value, "seconds": self.offload_seconds}

    async def unload(self) -> dict[str, Any]:
        async with self._cond:
            await self._cond.wait_for(lambda: self._in_flight == 0)
            started = time.perf_counter()
            if self._state is not Residency.UNLOADED:
                await self.run(self.backend.unload)
                await self._refresh_memory()
                self._set_state(Residency.UNLOADED)
            return {"state": Residency.UNLOADED.value, "seconds": time.perf_counter() - started}

    @contextlib.asynccontextmanager
    async def serving(self, request: web.Request | None = None) -> AsyncIterator[Job]:
        """Hold the model loaded for one data request (loading it first when needed); yields the
        request's job, registered under the gateway's request id so `/cancel` can find it."""
        job = self.jobs.open(request.headers.get(REQUEST_ID_HEADER) if request is not None else None)
        try:
            job.check()  # cancelled before it arrived: the client is gone already
            async with self._cond:
                if self._state is not Residency.LOADED:
                    try:
                        await outlast(asyncio.ensure_future(self._load_locked()))
                    except LoadFailed as exc:
                        raise OpenAIError(503, f"model {self.options.model_id!r} could not be loaded: {exc}") from exc
                self._in_flight += 1
            try:
                yield job
            finally:
                async with self._cond:
                    self._in_flight -= 1
                    self.requests_served += 1
                    self._cond.notify_all()
        finally:
            self.jobs.close(job)

    def stats(self) -> dict[str, Any]:
        return {
            "model_id": self.options.model_id,
            "kind": self.options.kind,
            "device": self._device,
            "state": self._state.value,
            "gpu_bytes": self._memory.gpu_bytes,
            "host_bytes": self._memory.host_bytes,
            "load_seconds": self.load_seconds,
            "wake_seconds": self.wake_seconds,
            "offload_seconds": self.offload_seconds,
            "requests_served": self.requests_served,
            "in_flight": self._in_flight,
            "last_error": self.last_error,
            **self.jobs.stats(),
        }


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 in the OpenAI envelope."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise OpenAIError(400, "request body must be valid JSON") from None
    if not isinstance(body, dict):
        raise OpenAIError(400, "request body must be a JSON object")
    return body


def check_model(body: Mapping[str, Any], worker: Worker) -> None:
    """Accept a missing `model` or this worker's id; anything else is a 404, as vLLM answers."""
    model = body.get("model")
    if model is None:
        return
    if not isinstance(model, str):
        raise OpenAIError(400, "'model' must be a string", param="model")
    if model != worker.options.model_id:
        raise OpenAIError(
            404,
            f"model {model!r} is not served here (this worker serves {worker.options.model_id!r})",
            param="model",
            code="model_not_found",
        )


@web.middleware
async def _error_middleware(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except OpenAIError as exc:
        return web.json_response(exc.envelope(), status=exc.status)
    except FieldError as exc:
        return web.json_response(from_field_error(exc).envelope(), status=400)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        err = OpenAIError(exc.status, exc.reason or "error")
        return web.json_response(err.envelope(), status=exc.status)
    except LoadFailed as exc:
        return web.json_response(OpenAIError(500, f"load failed: {exc}").envelope(), status=500)
    except Cancelled as exc:  # cancelled through /cancel: nobody waits for this answer any more
        return web.json_response(OpenAIError(499, str(exc)).envelope(), status=499)
    except Exception:
        # The exception's text is for the log: the gateway relays this body to clients.
        rid = request.headers.get("X-Request-Id", "")
        log.exception("unhandled error on %s %s (request id %s)", request.method, request.path, rid or "none")
        message = "internal error in the worker" + (f" (request id {rid})" if rid else "") + ": see its log"
        return web.json_response(OpenAIError(500, message).envelope(), status=500)


def build_app(worker: Worker, add_routes: Callable[[web.Application, Worker], None]) -> web.Application:
    app = web.Application(middlewares=[_error_middleware], client_max_size=MAX_BODY_BYTES)

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "state": worker.state.value})

    # Transitions run to their end even if the caller hangs up (handler cancellation is on).
    async def load(_: web.Request) -> web.Response:
        return web.json_response(await asyncio.shield(worker.load()))

    async def offload(_: web.Request) -> web.Response:
        return web.json_response(await asyncio.shield(worker.offload()))

    async def unload(_: web.Request) -> web.Response:
        return web.json_response(await asyncio.shield(worker.unload()))

    async def cancel(request: web.Request) -> web.Response:
        body = await read_json(request)
        request_id = body.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise OpenAIError(400, "'request_id' must be a non-empty string", param="request_id")
        job = worker.jobs.cancel(request_id)
        if job is None:
            return web.json_response({"request_id": request_id, "found": False})
        await job.done.wait()
        return web.json_response({"request_id": request_id, "found": True, "steps": job.steps,
                                  "steps_after_cancel": job.steps - (job.steps_at_cancel or 0)})

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(worker.stats())

    app.router.add_get("/health", health)
    app.router.add_post("/load", load)
    app.router.add_post("/offload", offload)
    app.router.add_post("/unload", unload)
    app.router.add_post("/cancel", cancel)
    app.router.add_get("/stats", stats)
    add_routes(app, worker)
    return app


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


async def _serve(
    options: WorkerOptions,
    backend: ModelBackend,
    add_routes: Callable[[web.Application, Worker], None],
    reporter: FakeGpuReporter | None,
) -> None:
    worker = Worker(options, backend, reporter)
    app = build_app(worker, add_routes)
    # handler_cancellation: a client that hangs up cancels its handler, which cancels its job.
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5.0, access_log=None, handler_cancellation=True)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await web.TCPSite(runner, options.host, options.port).start()
        if reporter is not None:
            reporter.report(resident=False)
        log.info("%s worker for %s listening on %s:%d", options.kind, options.model_id, options.host, options.port)
        worker.start_preparing()
        preload: asyncio.Task[dict[str, Any]] | None = None
        if options.preload:
            preload = asyncio.create_task(worker.load())
            preload.add_done_callback(lambda t: t.cancelled() or t.exception())  # errors are logged by load
        await stop.wait()
        log.info("%s worker for %s stopping", options.kind, options.model_id)
    finally:
        await runner.cleanup()
        worker.shutdown_executor()


def run_worker(
    options: WorkerOptions,
    backend: ModelBackend,
    add_routes: Callable[[web.Application, Worker], None],
    env: Mapping[str, str],
) -> None:
    """Serve until SIGTERM/SIGINT, then exit the process.

    The exit skips joining the model thread: it may be inside a native call that cannot be interrupted,
    and everything it holds is process memory that the exit frees anyway.
    """
    code = 0
    reporter: FakeGpuReporter | None = None
    try:
        reporter = FakeGpuReporter.from_env(env, options.kind, os.getpid())
        asyncio.run(_serve(options, backend, add_routes, reporter))
    except OSError as exc:
        log.error("cannot serve on %s:%d: %s", options.host, options.port, exc)
        code = 1
    except ValueError as exc:
        log.error("%s", exc)
        code = 2
    finally:
        if reporter is not None:
            reporter.remove()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)
