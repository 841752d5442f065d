"""The residency manager's small state files: a JSON object kept under the state directory so the
next start knows what this one measured (footprints, transition times).

Must not: interpret the data (its owners do: `memory.Footprints`, `timings.TransitionTimes`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("appliance.residency")


class StateFile:
    """A JSON object kept under the state directory so the next start knows what this one measured
    (footprints, transition times). Unreadable or not an object: empty. Written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def save(self, data: Mapping[str, Any]) -> None:
        """Best effort: a write that fails is logged and the next one tries again."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("residency: cannot write %s: %s", self.path, exc)


