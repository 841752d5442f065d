"""The default profile never loads the external backends' clients (psycopg, aiokafka) nor a vector
database (chromadb, pymilvus), pypdf or the tokenizers package at start: they are imported only when
`store.url` or `jobs.backend` selects them, or a vector route first needs them. Nor pandas or numpy, which sqlite-utils
would import for nothing the store uses (they made the idle daemon 181 MB instead of 78)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import sys, tempfile
from pathlib import Path
from appliance.app import Appliance
from appliance.config import parse_config
from appliance.gateway.app import build_app
import appliance.cli
app = Appliance(parse_config({"server": {"state_dir": tempfile.mkdtemp()}, "gpu": {"probe": "declared"}}),
                host="127.0.0.1", port=1)
build_app(app)
app.store.close()
print(sorted(m for m in sys.modules if m.split(".")[0] in ("psycopg", "psycopg_pool", "aiokafka", "chromadb",
                                                 "pymilvus", "milvus_lite", "pypdf", "pandas", "numpy", "tokenizers")))
"""


def test_default_daemon_imports_no_external_client_nor_a_vector_database() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
