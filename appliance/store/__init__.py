"""What the appliance keeps across restarts: one protocol (`Store`), two backends, chosen by URL.

`open_store(url, state_dir)` opens the embedded SQLite store (the default, `<state>/data/appliance.db`)
or PostgreSQL (`postgresql://...`, imported only then), applies pending migrations (refusing a store
from a newer appliance before writing anything), and on first start takes over what older versions
kept in files: `keys.db`, `footprints.json`, `transitions.json` (renamed `*.migrated` afterwards).
It must not decide what is kept when: maintenance (`store.maintenance`) and the callers do.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

from .migrations import SchemaTooNew
from .protocol import BoxRecord, Job, JobState, KeyRow, NewJob, Store, StoreError
from .sqlcore import SqlStore

__all__ = ["BoxRecord", "Job", "JobState", "KeyRow", "NewJob", "Store", "StoreError", "default_url", "open_store"]

log = logging.getLogger("appliance.store")
LEGACY_STATE = {"footprints": "footprints.json", "transitions": "transitions.json"}


def default_url(state_dir: Path) -> str:
    return f"sqlite:///{state_dir / 'data' / 'appliance.db'}"


def sqlite_path(url: str) -> Path:
    """The file of a sqlite:/// URL (`sqlite:////abs/path` or `sqlite:///~/path`)."""
    rest = url.removeprefix("sqlite:///")
    if not rest:
        raise StoreError(f"store url {url!r}: no file path after sqlite:///")
    return Path(rest).expanduser()


def connect(url: str) -> SqlStore:
    """The backend for `url`, opened but not migrated; StoreError (one line) when it cannot be."""
    if url.startswith("sqlite:///"):
        from .sqlite import SqliteStore

        return SqliteStore(sqlite_path(url))
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from .postgres import PostgresStore
        except ImportError as exc:
            raise StoreError(f"store url is PostgreSQL but psycopg is not installed ({exc}): "
                             "pip install 'appliance[full]'") from None
        return PostgresStore(url)
    raise StoreError(f"store url {url!r}: must start with sqlite:/// or postgresql://")


def open_store(url: str, state_dir: Path | None) -> SqlStore:
    """Open, migrate and (first start) import the legacy files under `state_dir/data`; `state_dir`
    None: a store that is not this box's (a copy's target), nothing to import, `url` required."""
    if not url:
        if state_dir is None:
            raise StoreError("store url: required for a store outside the state directory")
        url = default_url(state_dir)
    store = connect(url)
    try:
        applied = store.migrate()
    except SchemaTooNew as exc:
        store.close()
        raise StoreError(str(exc)) from None
    except BaseException:
        store.close()
        raise
    if applied:
        log.info("store %s: applied migrations %s", store.describe(), ", ".join(applied))
    if state_dir is not None:
        import_legacy(store, state_dir / "data")
    return store


def import_legacy(store: Store, data_dir: Path) -> None:
    """Take over keys.db and the JSON state files an older appliance kept (once; then renamed)."""
    keys_db = data_dir / "keys.db"
    if keys_db.is_file():
        conn = sqlite3.connect(keys_db)
        try:
            rows = conn.execute("SELECT id, name, admin, hash, created, revoked FROM keys").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{keys_db}: cannot read the old key store: {exc}") from None
        finally:
            conn.close()
        have = {k.id for k in store.key_rows()}
        for r in rows:
            if r[0] not in have:
                store.key_insert(KeyRow(r[0], r[1], bool(r[2]), r[3], r[4], r[5]))
        keys_db.rename(keys_db.with_name("keys.db.migrated"))
        for suffix in ("-wal", "-shm"):
            keys_db.with_name("keys.db" + suffix).unlink(missing_ok=True)
        log.warning("store: moved %d API keys from %s into %s", len(rows), keys_db, store.describe())
    for name, file in LEGACY_STATE.items():
        path = data_dir / file
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict) and store.state_get(name) is None:
            store.state_put(name, data)
        path.rename(path.with_name(file + ".migrated"))
