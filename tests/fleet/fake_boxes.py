"""Boxes as the router sees them, without daemons: HTTP servers in threads that answer the box API the
router relies on (GET /health/ready, POST /api/drain, X-Route-Policy: resident-only with
X-Route-Retry-Status) and record who asked for which model with which headers."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from appliance.store import BoxRecord


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # HAProxy's health checks close the connection once they have the status line


class FakeBox:
    def __init__(self, name: str, resident: set[str], free_gb: int = 10) -> None:
        self.name = name
        self.resident = set(resident)
        self.free_gb = free_gb
        self.ready = True
        self.draining = False  # after POST /api/drain: not ready, new work refused with 503 (as a box does)
        self.dead = False
        self.seen: list[dict[str, Any]] = []
        self.drained_with: list[str] = []
        self.refused = 0  # requests refused while draining (HAProxy retries them on another box)
        self.server = _QuietServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def record(self, models: dict[str, str] | None = None, state: str = "ready", version: str = "1.0",
               api_version: int = 1) -> BoxRecord:
        tiers = models if models is not None else dict.fromkeys(self.resident, "vram")
        return BoxRecord(self.name, self.url, version, api_version, state,
                         {"box_id": self.name, "generation": 1, "state": state,
                          "models": {m: {"tier": t, "loadable": True, "queue": 0, "engine": "e"}
                                     for m, t in tiers.items()},
                          "free_vram_bytes": self.free_gb << 30, "total_vram_bytes": 24 << 30})

    def restart(self) -> None:
        """Back from a drain, as a restarted box is: ready, taking work."""
        self.draining = False
        self.ready = True

    def close(self) -> None:
        """Gone as a killed process is: the listener closed, and kept-alive connections HAProxy still
        holds are cut without an answer."""
        self.dead = True
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        box = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, doc: Any) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _cut(self) -> bool:
                if box.dead:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                return box.dead

            def do_GET(self) -> None:
                if self._cut():
                    return
                if self.path == "/health/ready":
                    self._reply(200 if box.ready else 503, {"ready": box.ready})
                else:
                    self._reply(404, {"error": {"message": "no such path"}})

            def do_POST(self) -> None:
                if self._cut():
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/api/drain":
                    box.drained_with.append(self.headers.get("Authorization", ""))
                    box.ready = False
                    box.draining = True
                    self._reply(200, {"state": "draining", "in_flight": 0})
                    return
                model = self.headers.get("X-Model") or json.loads(body or b"{}").get("model")
                box.seen.append({"model": model, "token": self.headers.get("X-Fleet-Token"),
                                 "auth": self.headers.get("Authorization"),
                                 "policy": self.headers.get("X-Route-Policy"), "size": len(body),
                                 "proto": self.headers.get("X-Forwarded-Proto")})
                if box.draining:
                    box.refused += 1
                    self._reply(503, {"error": {"message": "draining", "code": "draining"}})
                    return
                if self.headers.get("X-Route-Policy") == "resident-only" and model not in box.resident:
                    status = int(self.headers.get("X-Route-Retry-Status") or 409)
                    self._reply(status, {"error": {"message": "not resident", "code": "model_not_resident"}})
                    return
                self._reply(200, {"box": box.name, "model": model})

        return Handler
