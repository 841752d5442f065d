"""The router's own calls to https boxes (a drain carries its admin key) verify the box against
router.box_ca_file, as HAProxy does; an unreadable CA file stops `appliance router` with one line."""

from __future__ import annotations

import http.server
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from appliance.config import RouterConfig
from appliance.router.api import box_tls

from .test_haproxy_config import make_ca_and_certs

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def https_box(pem: Path) -> Iterator[str]:
    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Ok)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pem)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_box_signed_by_the_ca_is_reached_and_a_stranger_is_refused(tmp_path: Path) -> None:
    ca, signed, selfsigned = make_ca_and_certs(tmp_path)
    verify = box_tls(RouterConfig(box_ca_file=str(ca)))
    assert isinstance(verify, ssl.SSLContext) and verify.verify_mode is ssl.CERT_REQUIRED
    with https_box(signed) as url:
        assert httpx.get(url, verify=verify, timeout=10).text == "ok"
    with https_box(selfsigned) as url:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(url, verify=verify, timeout=10)
        assert box_tls(RouterConfig()) is False  # without a CA: not verified (documented)
        assert httpx.get(url, verify=box_tls(RouterConfig()), timeout=10).text == "ok"


def test_an_unreadable_ca_file_stops_the_router_with_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "router.toml"
    cfg.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\n\n'
                   f'[router]\nbox_ca_file = "{tmp_path / "nope.pem"}"\n')
    done = subprocess.run([sys.executable, "-m", "appliance", "router", "--config", str(cfg)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {cfg}: router.box_ca_file: cannot read {tmp_path / 'nope.pem'}"
