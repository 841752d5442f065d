"""A real Milvus server process for tests and benchmarks: milvus-lite's own gRPC server
(`python -m milvus_lite server`, the same server pymilvus starts inside the client's process for a `.db`
path) run as a separate process on a free loopback port, so the daemon reaches it through a
`http://127.0.0.1:PORT` URI, the path a Milvus server takes."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from standins.launch import wait_until


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def milvus_server(data_dir: Path, log: Path | None = None, timeout_s: float = 60.0) -> Iterator[str]:
    """Start the server on `data_dir`; yields its "http://127.0.0.1:PORT"; stops it (the process group)."""
    port = _free_port()
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data_dir),
                             "--host", "127.0.0.1", "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        def listening() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"the milvus-lite server exited with {proc.returncode} before listening")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            except OSError:
                return False
            return True

        try:
            wait_until(listening, deadline_s=timeout_s, interval_s=0.05, message=f"milvus-lite on port {port}")
        except TimeoutError:
            raise RuntimeError(f"milvus-lite did not listen on {port} within {timeout_s} s") from None
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait(10)
        if log is not None:
            out.close()  # type: ignore[union-attr]
