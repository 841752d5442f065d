"""API keys the appliance creates for its own engines that call the gateway back (Open WebUI).

Owns `EngineKeys.key_for(engine)`: the engine's key, created once in the key store (named
`engine:NAME`, user scope) and kept in the engine's state directory (`api_key`, mode 0600) so the
engine keeps one identity across restarts; a key that was revoked (`appliance keys revoke`) is
replaced by a new one on the engine's next start. The key is never logged. Must not know engines'
settings or HTTP.
"""

from __future__ import annotations

from pathlib import Path

from .gateway.keys import PREFIX, KeyStore
from .store import Store


class EngineKeys:
    def __init__(self, store: Store, state_dir: Path) -> None:
        self._keys = KeyStore(store)
        self._state_dir = state_dir

    def key_for(self, engine: str) -> str:
        path = self._state_dir / "engines" / engine / "api_key"
        if path.is_file():
            token = path.read_text(encoding="utf-8").strip()
            key_id = token.removeprefix(PREFIX).split("-", 1)[0]
            if any(k.id == key_id and k.revoked is None for k in self._keys.list()):
                return token
        _, token = self._keys.create(f"engine:{engine}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(token, encoding="utf-8")
        return token
