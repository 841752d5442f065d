"""The router's sync loop (appliance.router.service) with a recording HAProxy: registry rows become
runtime-API commands, and a registry that cannot be read leaves the last plan in force."""

from __future__ import annotations

from pathlib import Path

from appliance.config import Config
from appliance.router.haproxy_config import Paths
from appliance.router.service import RouterService
from appliance.store import BoxRecord, Store, StoreError, open_store


class RecordingApi:
    def __init__(self) -> None:
        self.commands: list[str] = []

    async def run_all(self, commands: list[str]) -> None:
        self.commands += commands

    async def server_status(self) -> dict[tuple[str, str], str]:
        return {}


class QuietHaproxy:
    starts = 1

    async def check(self, config: Path) -> None: ...

    async def reload(self) -> None: ...


def record(box_id: str, port: int, models: dict[str, str]) -> BoxRecord:
    return BoxRecord(box_id, f"http://127.0.0.1:{port}", "1.0", 1, "ready",
                     {"models": {m: {"tier": t} for m, t in models.items()}, "free_vram_bytes": 1 << 30})


async def test_registry_rows_become_commands_and_an_unreadable_registry_keeps_the_plan(tmp_path: Path) -> None:
    store = open_store("", tmp_path)
    store.put_box(record("a", 9001, {"llama": "vram"}))
    reachable = {"yes": True}

    def opener() -> Store:
        if not reachable["yes"]:
            raise StoreError("store postgresql://db: connection refused")
        return store

    paths = Paths(tmp_path / "router")
    paths.root.mkdir()
    service = RouterService(Config(), paths, QuietHaproxy(), opener)  # type: ignore[arg-type]
    api = RecordingApi()
    service.api = api  # type: ignore[assignment]
    service.running_shape = service.plan.shape()
    service.haproxy_starts = 1
    service.applied = service.plan

    await service.sync_once()
    assert service.plan.members == {"llama": frozenset({"a"})}
    assert "add map " + str(paths.models_map) + " llama m1" in api.commands
    assert "llama m1" in paths.models_map.read_text() and "llama" in paths.plan.read_text()

    api.commands.clear()
    await service.sync_once()
    assert api.commands == []  # nothing changed, nothing sent

    reachable["yes"] = False
    store.close()
    service.store = None  # the connection is gone
    before = service.plan
    for _ in range(3):
        await service.sync_once()
    assert service.plan == before and api.commands == []
    assert service.registry_error is not None and "connection refused" in service.registry_error

    reachable["yes"] = True
    store = open_store("", tmp_path)
    store.put_box(record("b", 9002, {"llama": "vram"}))
    await service.sync_once()
    assert service.registry_error is None and service.plan.members["llama"] == {"a", "b"}
    assert "set server m1/b2 state ready" in api.commands
    store.close()
