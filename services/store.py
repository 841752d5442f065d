"""Where the appliance keeps models on disk, as the workers see it.

Owns the default model store (`$APPLIANCE_STATE_DIR/models`, else `~/.local/share/appliance/models`;
`appliance pull` writes there, one directory per catalog id) and the voices directory for cloned XTTS
voices (`$APPLIANCE_STATE_DIR/voices`). Takes the environment as an argument: only the workers'
command lines call it. No imports beyond the standard library (the XTTS environment has no appliance
dependencies), so it mirrors `appliance.pull.default_models_dir` instead of importing it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

DEFAULT_STATE_DIR = "~/.local/share/appliance"


def state_dir(env: Mapping[str, str]) -> Path:
    return Path(env.get("APPLIANCE_STATE_DIR") or DEFAULT_STATE_DIR).expanduser()


def models_dir(env: Mapping[str, str]) -> Path:
    return state_dir(env) / "models"


def voices_dir(env: Mapping[str, str]) -> Path:
    return state_dir(env) / "voices"


def pulled_model(store: Path | None, name: str) -> Path | None:
    """`<store>/<name>` (or its lower-case catalog id) when `appliance pull` put a model there."""
    if store is None:
        return None
    for candidate in (store / name, store / name.lower()):
        if candidate.is_dir():
            return candidate
    return None
