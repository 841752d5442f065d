"""`appliance fleet join|status|leave` for real: a fresh state directory joins through a small router
(a real HTTP server on loopback that implements the contract's join endpoint), its daemon then serves
as a fleet box on real PostgreSQL and the Tansu broker, and leaves again by draining."""

from __future__ import annotations

import hmac
import json
import os
import stat
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from backing_services import pg_schema_url
from daemon_harness import ROOT, Daemon, wait_for

from appliance.store import open_store

JOIN_TOKEN = "join-secret-0123456789"
FLEET_TOKEN = "fleet-shared-abcdef"


class FakeRouter:
    """The router's join endpoint as the contract says (docs/fleet.md); it records what boxes sent."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        self.joins: list[dict[str, Any]] = []
        router = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, doc: Any) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                if self.path != "/api/fleet/join":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                sent = self.headers.get("Authorization", "").removeprefix("Bearer ").encode()
                if not hmac.compare_digest(sent, JOIN_TOKEN.encode()):
                    return self._send(401, {"error": {"message": "bad join token", "type": "authentication_error"}})
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null")
                for field, kind in (("box_id", str), ("url", str), ("version", str), ("api_version", int)):
                    if not isinstance(body.get(field), kind):
                        return self._send(400, {"error": {"message": f"{field}: required", "param": field}})
                router.joins.append(body)
                return self._send(200, router.answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeRouter:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("VAST_", "APPLIANCE_")) and k != "PUBLIC_IPADDR"}
    return subprocess.run([sys.executable, "-m", "appliance", "fleet", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**base, "PYTHONPATH": str(ROOT), "COLUMNS": "200", **(env or {})},
                          timeout=120)


@pytest.fixture
def setting(tmp_path: Path, pg_database: str, kafka_broker: str) -> Iterator[tuple[Daemon, FakeRouter, str]]:
    url = pg_schema_url(pg_database)
    daemon = Daemon(tmp_path, {})  # a fresh box: its own configuration, an empty state directory
    daemon.config.write_text("# my box: this comment stays\n" + daemon.config.read_text())
    answer = {"store_url": url, "jobs": {"backend": "kafka", "brokers": [kafka_broker],
                                         "topic_prefix": f"j{daemon.port}.", "group": "fleet-gpu"},
              "fleet_token": FLEET_TOKEN, "router_url": "https://router.example:8443"}
    with FakeRouter(answer) as router:
        try:
            yield daemon, router, url
        finally:
            daemon.kill()


def test_join_serve_status_and_leave_on_a_fresh_state_directory(setting: tuple[Daemon, FakeRouter, str]) -> None:
    daemon, router, store_url = setting
    cfg = str(daemon.config)
    original = daemon.config.read_text()

    refused = cli("join", router.url, "--token", "wrong", "--config", cfg, "--no-restart",
                  "--advertise-url", "http://127.0.0.1:1")
    assert refused.returncode == 1 and "401: the router refused the join token" in refused.stderr, refused.stderr
    assert "wrong" not in refused.stderr + refused.stdout  # a token is never shown
    loopback = cli("join", router.url, "--token", JOIN_TOKEN, "--config", cfg, "--no-restart")
    assert loopback.returncode == 2 and "is a loopback address" in loopback.stderr, loopback.stderr
    assert "--advertise-url" in loopback.stderr
    assert daemon.config.read_text() == original and not (daemon.state / "fleet.token").exists()  # nothing written

    vast = {"PUBLIC_IPADDR": "203.0.113.9", f"VAST_TCP_PORT_{daemon.port}": "41234"}
    joined = cli("join", router.url, "--token", JOIN_TOKEN, "--config", cfg, "--no-restart", env=vast)
    assert joined.returncode == 0, joined.stderr
    box_id = (daemon.state / "box_id").read_text().strip()
    assert router.joins[-1] == {"box_id": box_id, "url": "http://203.0.113.9:41234", "version": "0.1.0",
                                "api_version": 1}
    text = daemon.config.read_text()
    doc = tomllib.loads(text)
    assert text.startswith("# my box: this comment stays\n") and doc["server"]["port"] == daemon.port
    assert doc["store"]["url"] == store_url and doc["jobs"]["backend"] == "kafka"
    assert doc["fleet"] == {"enabled": True, "advertise_url": "http://203.0.113.9:41234",
                            "router_url": "https://router.example:8443"}
    token_file = daemon.state / "fleet.token"
    assert token_file.read_text().strip() == FLEET_TOKEN and stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert FLEET_TOKEN not in joined.stdout + joined.stderr
    assert "restart the daemon" in joined.stdout
    store = open_store(store_url, None)
    try:
        assert [(b.box_id, b.state) for b in store.boxes()] == [(box_id, "starting")]  # registered by the join

        daemon.start()  # serves with what the join wrote
        wait_for(lambda: [b.state for b in store.boxes(live_within_s=15)] == ["ready"], 30, "the box ready")
        assert store.boxes()[0].url == "http://203.0.113.9:41234"
        shown = cli("status", "--config", cfg)
        assert shown.returncode == 0 and f"box {box_id}: ready, live" in shown.stdout, shown.stdout + shown.stderr

        left = cli("leave", "--config", cfg, "--no-restart", "--timeout", "60",
                   env={"APPLIANCE_URL": daemon.url})
        assert left.returncode == 0, left.stdout + left.stderr
        assert "drained: nothing in flight" in left.stdout and f"box {box_id} is out of the registry" in left.stdout
        assert daemon.get("/api/drain")["state"] == "draining"
        assert tomllib.loads(daemon.config.read_text())["fleet"]["enabled"] is False
        daemon.stop()  # the restart the leave asked for: the row is gone for good
        assert store.boxes() == []
        gone = cli("status", "--config", cfg)
        assert gone.returncode == 1 and f"box {box_id}: not in the registry" in gone.stdout
    finally:
        store.close()
