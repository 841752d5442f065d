"""Fixtures for the worker tests: a log directory, and skip reasons printed in the summary.

The tiny models come from tests/conftest.py (built by tests/tiny_models.py); process helpers live in
worker_harness.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker-logs")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Always print why a worker test was skipped (only the XTTS real run may skip, and it says why)."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "tests/workers/" in r.nodeid]
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        terminalreporter.write_line(f"SKIPPED {report.nodeid}: {reason.removeprefix('Skipped: ')}")
