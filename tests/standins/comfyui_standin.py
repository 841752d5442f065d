"""ComfyUI stand-in: ``python tests/standins/comfyui_standin.py --listen 127.0.0.1 --port P ...``.

Owns: ComfyUI's HTTP and WebSocket surface as contracts.md §3 describes it (every route also under
``/api``), the startup sequence (nothing listens until "ready", then ``To see the GUI go to:
http://ADDR:PORT``), and wiring the queue, executor and memory of comfyui_exec together.
Must not: import anything beyond aiohttp and the stdlib (PNGs are written with zlib + struct).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import mimetypes
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from urllib.parse import urlparse

from aiohttp import WSMsgType, web
from comfyui_args import ComfyConfig, parse
from comfyui_exec import SENSITIVE_EXTRA_DATA_KEYS, ComfyKnobs, Executor, Memory, PromptQueue, worker_loop
from comfyui_nodes import Models, node_defs, object_info, validate_prompt
from standin_common import Lifecycle, fake_gpu_total_used, hang_middleware, run

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
COMFYUI_VERSION = "0.38.1"


def _error(kind: str, message: str, details: str, status: int = 400) -> web.Response:
    body = {"error": {"type": kind, "message": message, "details": details, "extra_info": {}}, "node_errors": {}}
    return web.json_response(body, status=status)


def _meminfo() -> tuple[int, int]:
    values: dict[str, int] = {}
    with open("/proc/meminfo", encoding="ascii") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            values[key] = int(rest.split()[0]) * 1024
    return values.get("MemTotal", 0), values.get("MemAvailable", values.get("MemFree", 0))


class Server:
    def __init__(self, config: ComfyConfig, knobs: ComfyKnobs) -> None:
        self.config = config
        self.knobs = knobs
        self.models = Models(config.models_dir)
        self.memory = Memory(knobs, config.cpu)
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.messages: asyncio.Queue[tuple[str, dict[str, object], str | None]] = asyncio.Queue()
        self.queue = PromptQueue(self._queue_updated)
        self.executor = Executor(config, knobs, self.memory, self.send, lambda: node_defs(self.models))
        self.number = 0

    # --- messaging (server.py send_sync / publish_loop) -----------------------------------------------
    def send(self, event: str, data: dict[str, object], sid: str | None) -> None:
        self.messages.put_nowait((event, data, sid))

    def _queue_info(self) -> dict[str, object]:
        return {"exec_info": {"queue_remaining": self.queue.remaining()}}

    def _queue_updated(self) -> None:
        self.send("status", {"status": self._queue_info()}, None)

    async def publish_loop(self) -> None:
        while True:
            event, data, sid = await self.messages.get()
            message = {"type": event, "data": data}
            targets = list(self.sockets.values()) if sid is None else [self.sockets[sid]] if sid in self.sockets else []
            for ws in targets:
                with contextlib.suppress(ConnectionError, RuntimeError):  # a client that went away
                    await ws.send_json(message)

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId", "") or uuid.uuid4().hex
        self.sockets.pop(sid, None)
        self.sockets[sid] = ws
        try:
            await ws.send_json({"type": "status", "data": {"status": self._queue_info(), "sid": sid}})
            if self.executor.client_id == sid and self.executor.last_node_id is not None:
                await ws.send_json({"type": "executing", "data": {"node": self.executor.last_node_id}})
            first = True
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    try:
                        data = json.loads(msg.data)
                    except json.JSONDecodeError:
                        continue
                    if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                        await ws.send_json({"type": "feature_flags", "data": self._features()})
                    first = False
        finally:
            if self.sockets.get(sid) is ws:
                del self.sockets[sid]
        return ws

    # --- simple routes --------------------------------------------------------------------------------
    async def root(self, request: web.Request) -> web.Response:
        return web.Response(
            text="<!DOCTYPE html><html><head><title>ComfyUI</title></head><body></body></html>",
            content_type="text/html",
        )

    async def embeddings(self, request: web.Request) -> web.Response:
        return web.json_response([])

    async def extensions(self, request: web.Request) -> web.Response:
        return web.json_response([])

    async def list_model_types(self, request: web.Request) -> web.Response:
        return web.json_response(self.models.folders())

    async def get_models(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in self.models.folders():
            return web.Response(status=404)
        return web.json_response(self.models.files(folder))

    def _features(self) -> dict[str, object]:
        return {"supports_preview_metadata": True, "max_upload_size": self.config.max_upload_bytes}

    async def features(self, request: web.Request) -> web.Response:
        return web.json_response(self._features())

    async def system_stats(self, request: web.Request) -> web.Response:
        ram_total, ram_free = _meminfo()
        if self.config.cpu:
            device = {
                "name": "cpu",
                "type": "cpu",
                "index": None,
                "vram_total": ram_total,
                "vram_free": ram_free,
                "torch_vram_total": ram_total,
                "torch_vram_free": ram_free,
            }
        else:
            total = self.knobs.gpu_total_bytes
            directory = self.memory.report.directory if self.memory.report else None
            used = fake_gpu_total_used(directory) if directory else self.memory.used
            device = {
                "name": "cuda:0 NVIDIA GeForce RTX 3090 : cudaMallocAsync",
                "type": "cuda",
                "index": 0,
                "vram_total": total,
                "vram_free": max(0, total - used),
                "torch_vram_total": self.memory.used,
                "torch_vram_free": 0,
            }
        return web.json_response(
            {
                "system": {
                    "os": os.name,
                    "ram_total": ram_total,
                    "ram_free": ram_free,
                    "comfyui_version": COMFYUI_VERSION,
                    "required_frontend_version": "1.28.7",
                    "python_version": sys.version,
                    "pytorch_version": "2.8.0+cu128",
                    "embedded_python": False,
                    "argv": sys.argv,
                },
                "devices": [device],
            }
        )

    async def object_info_all(self, request: web.Request) -> web.Response:
        return web.json_response({name: object_info(d) for name, d in node_defs(self.models).items()})

    async def object_info_one(self, request: web.Request) -> web.Response:
        defs = node_defs(self.models)
        name = request.match_info["node_class"]
        return web.json_response({name: object_info(defs[name])} if name in defs else {})

    # --- queue and history ----------------------------------------------------------------------------
    async def get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self._queue_info())

    async def post_prompt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error("invalid_prompt", "Invalid JSON body", "The request body is not valid JSON")
        if not isinstance(body, dict):
            return _error("invalid_prompt", "Invalid request", "The request body must be a JSON object")
        if "number" in body:
            number = float(body["number"])
        else:
            number = -self.number if body.get("front") else self.number
            self.number += 1
        if "prompt" not in body:
            return _error("no_prompt", "No prompt provided", "No prompt provided")
        prompt = body["prompt"]
        if "prompt_id" in body:
            prompt_id = str(body["prompt_id"])
            try:
                canonical = str(uuid.UUID(prompt_id)) == prompt_id
            except ValueError:
                canonical = False
            if not canonical:
                return _error(
                    "invalid_prompt_id",
                    "Invalid prompt_id format",
                    f"prompt_id must be a lowercase canonical UUID, got {prompt_id!r}",
                )
        else:
            prompt_id = str(uuid.uuid4())
        targets = body.get("partial_execution_targets")
        ok, error, outputs, node_errors = validate_prompt(prompt, node_defs(self.models), targets)
        given = body.get("extra_data")
        extra: dict[str, object] = dict(given) if isinstance(given, dict) else {}
        if "client_id" in body:
            extra["client_id"] = body["client_id"]
        if not ok:
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        self.queue.put([number, prompt_id, prompt, extra, outputs])
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    @staticmethod
    def _strip(item: list[object]) -> list[object]:
        extra = {k: v for k, v in item[3].items() if k not in SENSITIVE_EXTRA_DATA_KEYS}  # type: ignore[attr-defined]
        return [item[0], item[1], item[2], extra, item[4]]

    async def get_queue(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "queue_running": [self._strip(i) for i in self.queue.running.values()],
                "queue_pending": [self._strip(i) for i in self.queue.pending()],
            }
        )

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self.queue.wipe()
        for prompt_id in body.get("delete", []):
            self.queue.delete(prompt_id)
        return web.Response(status=200)

    async def interrupt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = {}
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        if not prompt_id or any(item[1] == prompt_id for item in self.queue.running.values()):
            self.executor.interrupt.set()
        return web.Response(status=200)

    async def free(self, request: web.Request) -> web.Response:
        body = await request.json()
        # Only flags: the worker acts on them between prompts (main.py prompt_worker).
        if body.get("unload_models", False):
            self.queue.set_flag("unload_models", True)
        if body.get("free_memory", False):
            self.queue.set_flag("free_memory", True)
        return web.Response(status=200)

    async def get_history(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        max_items = int(query["max_items"]) if "max_items" in query else None
        offset = int(query["offset"]) if "offset" in query else -1
        return web.json_response(self.queue.get_history(max_items=max_items, offset=offset))

    async def get_history_one(self, request: web.Request) -> web.Response:
        return web.json_response(self.queue.get_history(prompt_id=request.match_info["prompt_id"]))

    async def post_history(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self.queue.history.clear()
        for prompt_id in body.get("delete", []):
            self.queue.history.pop(prompt_id, None)
        return web.Response(status=200)

    # --- files ----------------------------------------------------------------------------------------
    def _dir_by_type(self, kind: str) -> str | None:
        return {"output": self.config.output_dir, "input": self.config.input_dir, "temp": self.config.temp_dir}.get(
            kind
        )

    def _locate(self, query: dict[str, str]) -> tuple[int, str]:
        """(status, path) for /view, with server.py's checks: 400, 403, 404 or 200."""
        if "filename" not in query:
            return 404, ""
        filename = query["filename"]
        directory = None
        for kind in ("output", "input", "temp"):  # folder_paths.annotated_filepath: "name.png [output]"
            if filename.endswith(f"[{kind}]"):
                filename, directory = filename[: -len(kind) - 2].strip(), self._dir_by_type(kind)
        if not filename or filename[0] == "/" or ".." in filename:
            return 400, ""
        if directory is None:
            directory = self._dir_by_type(query.get("type", "output"))
        if directory is None:
            return 400, ""
        if "subfolder" in query:
            full = os.path.join(directory, query["subfolder"])
            if os.path.commonpath((os.path.abspath(full), directory)) != directory:
                return 403, ""
            directory = full
        path = os.path.join(directory, os.path.basename(filename))
        return (200, path) if os.path.isfile(path) else (404, "")

    async def view(self, request: web.Request) -> web.StreamResponse:
        status, path = await asyncio.to_thread(self._locate, dict(request.rel_url.query))
        if status != 200:
            return web.Response(status=status)
        # preview= and channel= would re-encode with PIL upstream; the stand-in serves the file as is.
        name = os.path.basename(path)
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if content_type in {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript", "text/css"}:
            content_type = "application/octet-stream"
        return web.FileResponse(
            path, headers={"Content-Disposition": f'filename="{name}"', "Content-Type": content_type}
        )

    async def upload_image(self, request: web.Request) -> web.Response:
        post = await request.post()
        image = post.get("image")
        if not isinstance(image, web.FileField) or not image.filename:
            return web.Response(status=400)
        kind = str(post.get("type", "input"))
        directory = self._dir_by_type(kind)
        if directory is None:
            return web.Response(status=400)
        subfolder = str(post.get("subfolder", ""))
        data = image.file.read()
        name = os.path.basename(image.filename)
        overwrite = str(post.get("overwrite", "")).lower() in ("true", "1")

        def store() -> str | None:
            full = os.path.join(directory, os.path.normpath(subfolder))
            if os.path.commonpath((directory, os.path.abspath(full))) != directory:
                return None
            os.makedirs(full, exist_ok=True)
            stem, ext = os.path.splitext(name)
            candidate, i = name, 1
            while not overwrite and os.path.exists(os.path.join(full, candidate)):
                with open(os.path.join(full, candidate), "rb") as fh:
                    if hashlib.sha256(fh.read()).digest() == hashlib.sha256(data).digest():
                        return candidate  # same content already uploaded: reuse it
                candidate, i = f"{stem} ({i}){ext}", i + 1
            with open(os.path.join(full, candidate), "wb") as fh:
                fh.write(data)
            return candidate

        stored = await asyncio.to_thread(store)
        if stored is None:
            return web.Response(status=400)
        return web.json_response({"name": stored, "subfolder": subfolder, "type": kind})

    # --- app ------------------------------------------------------------------------------------------
    def build_app(self) -> web.Application:
        middlewares: list[Callable[..., Awaitable[web.StreamResponse]]] = []
        if self.knobs.hang:
            middlewares.append(hang_middleware)
        middlewares.append(_cors(self.config.cors_origin) if self.config.cors_origin else _origin_only)
        app = web.Application(middlewares=middlewares, client_max_size=self.config.max_upload_bytes)
        routes: list[tuple[str, str, Handler]] = [
            ("GET", "/ws", self.websocket),
            ("GET", "/embeddings", self.embeddings),
            ("GET", "/models", self.list_model_types),
            ("GET", "/models/{folder}", self.get_models),
            ("GET", "/extensions", self.extensions),
            ("POST", "/upload/image", self.upload_image),
            ("GET", "/view", self.view),
            ("GET", "/system_stats", self.system_stats),
            ("GET", "/features", self.features),
            ("GET", "/prompt", self.get_prompt),
            ("GET", "/object_info", self.object_info_all),
            ("GET", "/object_info/{node_class}", self.object_info_one),
            ("GET", "/history", self.get_history),
            ("GET", "/history/{prompt_id}", self.get_history_one),
            ("GET", "/queue", self.get_queue),
            ("POST", "/prompt", self.post_prompt),
            ("POST", "/queue", self.post_queue),
            ("POST", "/interrupt", self.interrupt),
            ("POST", "/free", self.free),
            ("POST", "/history", self.post_history),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, "/api" + path, handler)
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
        app.router.add_route("GET", "/", self.root)
        return app


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


@web.middleware
async def _origin_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    # server.py create_origin_only_middleware: a browser on another origin may not drive a loopback server.
    origin = request.headers.get("Origin")
    host = request.headers.get("Host", "")
    if origin and _is_loopback(host.rsplit(":", 1)[0]) and urlparse(origin).netloc != host:
        return web.Response(status=403)
    return await handler(request)


def _cors(origin: str) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = web.Response() if request.method == "OPTIONS" else await handler(request)
        if not response.prepared:
            response.headers.update(
                {
                    "Access-Control-Allow-Origin": origin,
                    "Access-Control-Allow-Methods": "POST, GET, DELETE, PUT, OPTIONS, PATCH",
                    "Access-Control-Allow-Headers": "Content-Type, Authorization",
                    "Access-Control-Allow-Credentials": "true",
                }
            )
        return response

    return cors


async def amain(argv: list[str]) -> int:
    config = parse(argv)
    knobs = ComfyKnobs.from_env()
    out = sys.stdout if config.log_stdout else sys.stderr

    def log(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    lifecycle = Lifecycle(hang=knobs.hang)
    lifecycle.install_signals()
    server = Server(config, knobs)
    log(f"ComfyUI version: {COMFYUI_VERSION}")
    server.memory.start()  # torch initialises CUDA at import: the context is held from the start
    try:
        if not config.cpu:
            log(f"Total VRAM {knobs.gpu_total_bytes // (1 << 20)} MB, total RAM {_meminfo()[0] // (1 << 20)} MB")
        if not await lifecycle.load(knobs.start_delay_s, knobs.ready_file):
            return 0
        runner = web.AppRunner(server.build_app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        tasks = [
            asyncio.create_task(server.publish_loop()),
            asyncio.create_task(worker_loop(server.queue, server.executor, server.memory, knobs, config, server.send)),
        ]
        try:
            if not config.dont_print_server:
                log("Starting server\n")
            for address in config.listen:
                await web.TCPSite(runner, address, config.port, backlog=512).start()
                if not config.dont_print_server:
                    shown = f"[{address}]" if ":" in address else address
                    log(f"To see the GUI go to: http://{shown}:{config.port}")
            await lifecycle.stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            for ws in list(server.sockets.values()):
                await ws.close()
            await runner.cleanup()
        return 0
    finally:
        server.memory.close()


if __name__ == "__main__":
    run(lambda: amain(sys.argv[1:]))
