"""`appliance pull`: download a catalog model into the local model store, with progress events.

Owns, in this order: the licence gate (nothing touches the network until a licence that needs acceptance
is accepted), resolving the files through huggingface_hub (HEAD of a /resolve URL for single files, the
model-info API for glob patterns; HF_ENDPOINT is honoured through the `endpoint` argument), the free-disk
check before the first byte is fetched, transfers that resume from `<dest>.part` files across runs and
after a dropped connection (a Range request), and verification of every file's size and hash (the
sha256 the hub reports for LFS files, the git blob SHA-1 for small files) before it is moved into place.

Why our own transfer loop: `hf_hub_download` deletes its partial file when a download fails
(huggingface_hub PR #4228), so a 19 GB download interrupted at 90% would start again from zero.

Store layout: `<models_dir>/<model id>/<dest>`, plus `.appliance-pull.json` once every file is verified.
Progress goes to a callback as `PullEvent`s (the CLI draws a bar; the daemon publishes them).
It must not read the environment (callers pass endpoint, token and directories) nor import heavy libraries.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appliance.catalog import CatalogFile, CatalogModel

MANIFEST = ".appliance-pull.json"
CHUNK_BYTES = 1 << 20
DEFAULT_RESERVE_BYTES = 1 << 30  # keep this much disk free after a pull


class PullError(Exception):
    """A pull that cannot go on; the message says why and what to do."""


class LicenceRequired(PullError):
    pass


class InsufficientDisk(PullError):
    def __init__(self, needed: int, free: int, directory: Path) -> None:
        super().__init__(
            f"not enough free disk in {directory}: the download needs {needed / 1e9:.2f} GB "
            f"(plus {DEFAULT_RESERVE_BYTES / 1e9:.1f} GB kept free) and {free / 1e9:.2f} GB is free"
        )
        self.needed, self.free = needed, free


class VerificationFailed(PullError):
    pass


@dataclass(frozen=True)
class RemoteFile:
    dest: str  # relative to the model's directory
    url: str
    size: int
    sha256: str | None = None  # LFS files (and url entries)
    git_sha1: str | None = None  # small files stored in git

    @property
    def identity(self) -> str:
        return self.sha256 or self.git_sha1 or f"size:{self.size}"


@dataclass(frozen=True)
class PullEvent:
    """One step of a pull. kind: resolving, planned, file, progress, verified, skipped, done, failed."""

    kind: str
    model: str
    file: str | None = None
    done_bytes: int = 0  # over the whole pull, including files already on disk
    total_bytes: int = 0
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PullResult:
    model_id: str
    directory: Path
    files: tuple[RemoteFile, ...]
    fetched_bytes: int
    reused_bytes: int


Progress = Callable[[PullEvent], None]


def default_models_dir(environ: Mapping[str, str]) -> Path:
    """$APPLIANCE_STATE_DIR/models, else ~/.local/share/appliance/models."""
    state = environ.get("APPLIANCE_STATE_DIR") or "~/.local/share/appliance"
    return Path(state).expanduser() / "models"


def model_directory(models_dir: Path, model_id: str) -> Path:
    return models_dir / model_id


def is_on_disk(models_dir: Path, model_id: str) -> bool:
    """True when a pull completed and every file it verified is still there with its size."""
    directory = model_directory(models_dir, model_id)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        files = manifest["files"]
        return all((directory / f["dest"]).stat().st_size == int(f["size"]) for f in files)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def licence_gate(model: CatalogModel, accepted: bool | set[str]) -> None:
    """Raise LicenceRequired unless the model's licence needs no acceptance or was accepted."""
    if not model.licence_acceptance:
        return
    if accepted is True or (isinstance(accepted, set) and model.licence.lower() in {a.lower() for a in accepted}):
        return
    raise LicenceRequired(
        f"{model.id} is under the {model.licence} licence, which must be accepted before it is downloaded "
        f"({model.licence_url or 'see the model card'}): pass --accept-licence, or add "
        f'"{model.licence}" to licences.accepted in the configuration'
    )


def _git_blob_sha1(size: int) -> Any:
    digest = hashlib.sha1(usedforsecurity=False)
    digest.update(f"blob {size}\0".encode())
    return digest


def _hub_error(exc: Exception, what: str) -> PullError:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(exc, GatedRepoError):
        return PullError(f"{what}: the repository is gated; accept its terms on the hub and set HF_TOKEN ({exc})")
    if isinstance(exc, RepositoryNotFoundError | RevisionNotFoundError):
        return PullError(f"{what}: not found on the hub ({exc})")
    return PullError(f"{what}: {type(exc).__name__}: {exc}")


def resolve_files(model: CatalogModel, endpoint: str | None, token: str | bool | None) -> list[RemoteFile]:
    """Every file of the model with its exact size and hash, as the hub reports them."""
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url

    files: list[RemoteFile] = []
    for entry in model.files:
        if entry.url is not None:
            assert entry.dest is not None and entry.size_bytes is not None
            files.append(RemoteFile(entry.dest, entry.url, entry.size_bytes, sha256=entry.sha256))
            continue
        assert entry.repo is not None
        what = f"{entry.repo}@{entry.revision}"
        try:
            if entry.path is not None:
                files.append(_resolve_one(entry, endpoint, token, hf_hub_url, get_hf_file_metadata))
            else:
                files.extend(_resolve_patterns(entry, HfApi(endpoint=endpoint, token=token), endpoint, hf_hub_url))
        except PullError:
            raise
        except Exception as exc:
            raise _hub_error(exc, what) from exc
    return files


def _resolve_one(entry: CatalogFile, endpoint: str | None, token: Any, hf_hub_url: Any, metadata: Any) -> RemoteFile:
    assert entry.repo is not None and entry.path is not None
    meta = metadata(hf_hub_url(entry.repo, entry.path, revision=entry.revision, endpoint=endpoint), token=token)
    size = meta.size if meta.size is not None else entry.size_bytes
    if size is None or meta.etag is None or meta.commit_hash is None:
        raise PullError(f"{entry.repo}/{entry.path}: the hub sent no size, ETag or commit for it")
    etag = str(meta.etag)
    url = hf_hub_url(entry.repo, entry.path, revision=meta.commit_hash, endpoint=endpoint)
    lfs = len(etag) == 64
    return RemoteFile(entry.dest or entry.path, url, int(size), etag if lfs else None, None if lfs else etag)


def _resolve_patterns(entry: CatalogFile, api: Any, endpoint: str | None, hf_hub_url: Any) -> list[RemoteFile]:
    assert entry.repo is not None
    info = api.model_info(entry.repo, revision=entry.revision, files_metadata=True)
    files = []
    for sibling in info.siblings or []:
        name = sibling.rfilename
        if not any(fnmatch.fnmatch(name, pattern) for pattern in entry.include):
            continue
        lfs = sibling.lfs
        size = lfs.size if lfs is not None else sibling.size
        if size is None:
            raise PullError(f"{entry.repo}/{name}: the hub reported no size")
        dest = f"{entry.dest.rstrip('/')}/{name}" if entry.dest else name
        url = hf_hub_url(entry.repo, name, revision=info.sha or entry.revision, endpoint=endpoint)
        files.append(
            RemoteFile(dest, url, int(size), lfs.sha256 if lfs is not None else None,
                       None if lfs is not None else sibling.blob_id)
        )  # fmt: skip
    if not files:
        raise PullError(f"{entry.repo}: no file matches {', '.join(entry.include)}")
    return files


def _free_bytes(path: Path) -> int:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


class _Transfer:
    """One file: resume from its .part, stream the rest, verify, move into place."""

    def __init__(self, remote: RemoteFile, directory: Path, headers: dict[str, str], chunk_bytes: int) -> None:
        self.remote = remote
        self.final = directory / remote.dest
        self.part = self.final.with_name(self.final.name + ".part")
        self.meta = self.final.with_name(self.final.name + ".part.json")
        self.headers = headers
        self.chunk_bytes = chunk_bytes

    def partial_bytes(self) -> int:
        """Bytes of a .part that belongs to this very file (a stale one is discarded)."""
        try:
            if json.loads(self.meta.read_text()).get("identity") != self.remote.identity:
                raise ValueError("stale")
            return min(self.part.stat().st_size, self.remote.size)
        except (OSError, ValueError):
            self.part.unlink(missing_ok=True)
            self.meta.unlink(missing_ok=True)
            return 0

    def _hasher(self) -> Any:
        if self.remote.sha256 is not None:
            return hashlib.sha256()
        return _git_blob_sha1(self.remote.size) if self.remote.git_sha1 is not None else None

    def run(self, on_bytes: Callable[[int], None], retries: int, retry_delay_s: float) -> int:
        """Download what is missing; return the bytes fetched over the network."""
        from huggingface_hub import get_session

        self.final.parent.mkdir(parents=True, exist_ok=True)
        start = self.partial_bytes()
        self.meta.write_text(json.dumps({"identity": self.remote.identity, "url": self.remote.url}))
        hasher = self._hasher()
        if hasher is not None and start:
            with open(self.part, "rb") as fh:
                while block := fh.read(self.chunk_bytes):
                    hasher.update(block)
        fetched, attempt = 0, 0
        with open(self.part, "ab") as out:
            while out.tell() < self.remote.size:
                headers = dict(self.headers)
                if out.tell():
                    headers["Range"] = f"bytes={out.tell()}-"
                try:
                    with get_session().stream("GET", self.remote.url, headers=headers, timeout=60.0) as resp:
                        if resp.status_code >= 400:
                            raise PullError(f"{self.remote.dest}: HTTP {resp.status_code} from {self.remote.url}")
                        if resp.status_code == 200 and out.tell():  # the server ignored Range: start over
                            on_bytes(-out.tell())
                            out.seek(0)
                            out.truncate()
                            hasher = self._hasher()
                        for block in resp.iter_bytes(self.chunk_bytes):
                            if out.tell() + len(block) > self.remote.size:
                                raise VerificationFailed(
                                    f"{self.remote.dest}: more bytes than the {self.remote.size} expected"
                                )
                            out.write(block)
                            if hasher is not None:
                                hasher.update(block)
                            fetched += len(block)
                            on_bytes(len(block))
                        if out.tell() < self.remote.size:
                            raise ConnectionError("the connection closed before the end of the file")
                except (PullError, KeyboardInterrupt):
                    raise
                except Exception as exc:  # a dropped connection: resume with a Range request
                    out.flush()
                    attempt += 1
                    if attempt > retries:
                        raise PullError(
                            f"{self.remote.dest}: transfer interrupted at {out.tell()} of {self.remote.size} bytes "
                            f"({exc}); run the pull again to resume"
                        ) from exc
                    time.sleep(retry_delay_s * attempt)
        self._verify(hasher)
        os.replace(self.part, self.final)
        self.meta.unlink(missing_ok=True)
        return fetched

    def _verify(self, hasher: Any) -> None:
        size = self.part.stat().st_size
        problem = None
        if size != self.remote.size:
            problem = f"size {size} bytes, expected {self.remote.size}"
        elif hasher is not None:
            expected = self.remote.sha256 or self.remote.git_sha1
            if hasher.hexdigest() != expected:
                kind = "sha256" if self.remote.sha256 else "git SHA-1"
                problem = f"{kind} {hasher.hexdigest()}, expected {expected}"
        if problem is not None:
            self.part.unlink(missing_ok=True)
            self.meta.unlink(missing_ok=True)
            raise VerificationFailed(f"{self.remote.dest}: downloaded file rejected: {problem}")


def pull_model(
    model: CatalogModel,
    models_dir: Path,
    *,
    accepted: bool | set[str] = False,
    endpoint: str | None = None,
    token: str | bool | None = None,
    on_progress: Progress | None = None,
    disk_free: Callable[[Path], int] = _free_bytes,
    reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    retries: int = 3,
    retry_delay_s: float = 1.0,
    chunk_bytes: int = CHUNK_BYTES,
) -> PullResult:
    """Download `model` into `models_dir/<id>`; raise PullError (or a subclass) when it cannot."""
    emit = on_progress or (lambda _: None)
    try:
        licence_gate(model, accepted)
        emit(PullEvent("resolving", model.id))
        files = resolve_files(model, endpoint, token)
        directory = model_directory(models_dir, model.id)
        from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]  # lazily exported

        headers = build_hf_headers(token=token)
        transfers = [_Transfer(f, directory, headers, chunk_bytes) for f in files]
        complete = [t.final.is_file() and t.final.stat().st_size == t.remote.size for t in transfers]
        partial = [0 if done else t.partial_bytes() for t, done in zip(transfers, complete, strict=True)]
        total = sum(f.size for f in files)
        needed = sum(t.remote.size - p for t, p, done in zip(transfers, partial, complete, strict=True) if not done)
        free = disk_free(directory)
        if needed and needed + reserve_bytes > free:
            raise InsufficientDisk(needed, free, directory)
        done = total - needed
        emit(PullEvent("planned", model.id, done_bytes=done, total_bytes=total,
                       message=f"{len(files)} files, {needed} bytes to fetch"))  # fmt: skip
        fetched = 0
        for transfer, already in zip(transfers, complete, strict=True):
            name = transfer.remote.dest
            if already:
                emit(PullEvent("skipped", model.id, name, done, total, "already on disk"))
                continue
            emit(PullEvent("file", model.id, name, done, total))

            def on_bytes(n: int, name: str = name) -> None:
                nonlocal done
                done += n
                emit(PullEvent("progress", model.id, name, done, total))

            fetched += transfer.run(on_bytes, retries, retry_delay_s)
            emit(PullEvent("verified", model.id, name, done, total))
        manifest = {"model_id": model.id, "completed_at": time.time(), "files": [asdict(f) for f in files]}
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=1))
        emit(PullEvent("done", model.id, done_bytes=total, total_bytes=total))
        return PullResult(model.id, directory, tuple(files), fetched, total - fetched)
    except PullError as exc:
        emit(PullEvent("failed", model.id, message=str(exc)))
        raise
