"""Running a real `appliance router` (and so a real HAProxy) for tests and bench/cluster.py: a config in a
tmp dir on free ports, reading its runtime state (the map HAProxy holds) with deadlines, and teardown
that stops it and its HAProxy."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from daemon_harness import wait_for

ROOT = Path(__file__).resolve().parent.parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml(doc: dict[str, dict[str, Any]]) -> str:
    lines = []
    for table, values in doc.items():
        lines.append(f"[{table}]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in values.items())
    return "\n".join(lines) + "\n"


class Router:
    def __init__(self, tmp: Path, store_url: str, *, jobs: dict[str, Any] | None = None, sync_s: float = 0.2,
                 check_interval_ms: int = 300, expire_s: float = 3.0, tls_pem: str = "",
                 api_versions: tuple[int, int] | None = None) -> None:
        self.tmp = tmp
        self.tls_pem = tls_pem
        self.port = _free_port()
        self.api_port = _free_port()
        self.state = tmp / "router-state"
        self.log = tmp / "router.log"
        self.config = tmp / "router.toml"
        self.proc: subprocess.Popen[bytes] | None = None
        self.jobs = jobs or {}
        # (this router's box API version, the oldest it routes to): a router of a later release than this
        # checkout, for rolling-upgrade tests (appliance.fleet.API_VERSION and plan.MIN_API_VERSION set
        # in the router's process before it imports the modules that read them)
        self.api_versions = api_versions
        self.write_config(store_url, sync_s, check_interval_ms, expire_s)

    def write_config(self, store_url: str, sync_s: float = 0.2, check_interval_ms: int = 300,
                     expire_s: float = 3.0) -> None:
        doc: dict[str, dict[str, Any]] = {
            "server": {"state_dir": str(self.state), "log_level": "info"},
            "store": {"url": store_url},
            "fleet": {"expire_s": expire_s, "heartbeat_s": expire_s / 3},
            "router": {"host": "127.0.0.1", "port": self.port, "api_port": self.api_port, "sync_s": sync_s,
                       "check_interval_ms": check_interval_ms, "bufsize": 131072, "tls_pem": self.tls_pem}}
        if self.jobs:
            doc["jobs"] = self.jobs  # what joining boxes are told
        self.config.write_text(_toml(doc))

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_pem else 'http'}://127.0.0.1:{self.port}"

    @property
    def fleet_token(self) -> str:
        return (self.state / "fleet.token").read_text().strip()

    @property
    def join_token(self) -> str:
        return (self.state / "join.token").read_text().strip()

    def start(self, timeout_s: float = 20.0) -> Router:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("APPLIANCE_STATE_DIR", None)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([*self.launcher(), "router", "--config", str(self.config)],
                                         env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"router exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            return bool(self.haproxy("show info")) and self.api_up()

        try:
            wait_for(up, timeout_s, "the router's HAProxy and API")
        except TimeoutError:
            raise AssertionError(f"router not up in {timeout_s} s: {self.log.read_text()[-3000:]}") from None
        return self

    def launcher(self) -> list[str]:
        if self.api_versions is None:
            return [sys.executable, "-m", "appliance"]
        current, oldest = self.api_versions
        return [sys.executable, "-c", "import sys, appliance.fleet as f, appliance.router.plan as p; "
                f"f.API_VERSION = {current}; p.MIN_API_VERSION = {oldest}; "
                "from appliance.cli import main; sys.argv[0] = 'appliance'; main()"]

    def api_up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.api_port), timeout=1):
                return True
        except OSError:
            return False

    def haproxy(self, command: str) -> str:
        """One runtime-API command's answer ("" when the socket does not answer)."""
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(str(self.state / "router" / "haproxy.sock"))
                s.sendall(command.encode() + b"\n")
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
            return b"".join(chunks).decode()
        except OSError:
            return ""

    def haproxy_map(self) -> dict[str, str]:
        """models.map as HAProxy holds it now."""
        out = {}
        for line in self.haproxy(f"show map {self.state / 'router' / 'models.map'}").splitlines():
            parts = line.split()
            if len(parts) == 3:
                out[parts[1]] = parts[2]
        return out

    def server_states(self) -> dict[str, str]:
        lines = self.haproxy("show stat").splitlines()
        if not lines:
            return {}
        header = lines[0].lstrip("# ").split(",")
        px, sv, st = header.index("pxname"), header.index("svname"), header.index("status")
        return {f"{c[px]}/{c[sv]}": c[st] for c in (line.split(",") for line in lines[1:] if line)
                if len(c) > st}

    def api(self, path: str, key: str, method: str = "GET") -> tuple[int, Any]:
        req = urllib.request.Request(self.url + path, method=method, headers={"Authorization": f"Bearer {key}"},
                                     data=b"" if method == "POST" else None)
        try:
            with urllib.request.urlopen(req, timeout=15) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            with e:
                return e.code, json.loads(e.read() or b"null")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reap_haproxy()

    def _reap_haproxy(self) -> None:
        """A HAProxy left behind (the router was killed): its master's process group."""
        try:
            pid = int((self.state / "router" / "haproxy.pid").read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            return
        if b"haproxy" in cmdline and str(self.state).encode() in cmdline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
