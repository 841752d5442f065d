"""`appliance pull`'s core against a stand-in of the Hugging Face hub file routes (a real process)."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from worker_harness import free_port, start_process, stop_process_group, wait_until

from appliance.catalog import Catalog, load_catalog
from appliance.pull import (
    MANIFEST,
    InsufficientDisk,
    LicenceRequired,
    PullError,
    PullEvent,
    VerificationFailed,
    is_on_disk,
    pull_model,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CHUNK = 64 * 1024


@dataclass
class StandIn:
    endpoint: str
    sources: dict[str, bytes]

    def requests(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = httpx.get(self.endpoint + "/_requests", timeout=10).json()
        return result

    def transfers(self) -> list[dict[str, Any]]:
        """GETs that move file bytes (resolve of a small file, or a CDN blob)."""
        return [r for r in self.requests() if r["method"] == "GET" and not r["path"].startswith(("/api", "/_"))]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, bytes]:
    rng = hashlib.sha256(b"seed")
    blob = b"".join(rng.digest() + i.to_bytes(4, "big") for i in range(90_000))  # ~3.2 MB, not compressible
    return {
        "model.safetensors": blob,
        "config.json": json.dumps({"hidden_size": 32, "layers": 2}).encode(),
        "tokenizer.json": json.dumps({"vocab": {"a": 0, "b": 1}}).encode(),
        "weights/extra.bin": blob[:200_000],
        "README.md": b"# not part of the model\n",
    }


HubFactory = Callable[..., StandIn]


@pytest.fixture
def hub(tmp_path: Path, files: dict[str, bytes]) -> Iterator[HubFactory]:
    started: list[Any] = []

    def start(drop_after: dict[str, int] | None = None, corrupt: list[str] | None = None) -> StandIn:
        source_dir = tmp_path / "hub-files"
        repo_files = {}
        for name, data in files.items():
            path = source_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            repo_files[name] = {"source": str(path), "lfs": name.endswith((".safetensors", ".bin"))}
        config = {
            "repos": {
                "test-org/tiny-model": {"commit": COMMIT, "files": repo_files},
                "test-org/gated": {
                    "commit": COMMIT,
                    "gated": True,
                    "files": {"config.json": repo_files["config.json"]},
                },
            },
            "drop_after": drop_after or {},
            "corrupt": corrupt or [],
        }
        config_path = tmp_path / f"hub-{len(started)}.json"
        config_path.write_text(json.dumps(config))
        port, cdn_port = free_port(), free_port()
        script = Path(__file__).with_name("hf_standin.py")
        argv = [
            sys.executable,
            str(script),
            "--config",
            str(config_path),
            "--port",
            str(port),
            "--cdn-port",
            str(cdn_port),
        ]
        proc = start_process(argv, tmp_path / f"hub-{port}.log")
        started.append(proc)
        stand_in = StandIn(f"http://127.0.0.1:{port}", files)

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError((tmp_path / f"hub-{port}.log").read_text())
            try:
                return httpx.get(stand_in.endpoint + "/_requests", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, 20, "HF stand-in")
        return stand_in

    yield start
    for proc in started:
        stop_process_group(proc)


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    path = tmp_path / "catalog.toml"
    path.write_text(
        """
[models.tiny]
name = "Tiny test model"
modality = "text"
engine = "worker:text"
devices = ["cpu"]
disk_gb = 0.004
vram_gib = 0.0
ram_gib = 0.01
licence = "apache-2.0"
[[models.tiny.files]]
repo = "test-org/tiny-model"
include = ["*.json", "*.safetensors", "weights/*"]

[models.single]
name = "One file, renamed"
modality = "speech"
engine = "worker:speech"
devices = ["cpu"]
disk_gb = 0.003
vram_gib = 0.0
ram_gib = 0.01
licence = "MIT"
[[models.single.files]]
repo = "test-org/tiny-model"
path = "model.safetensors"
dest = "voices/voice.onnx"

[models.restricted]
name = "Needs a licence"
modality = "speech"
engine = "worker:speech"
devices = ["cpu"]
disk_gb = 0.001
vram_gib = 0.0
ram_gib = 0.01
licence = "TestLicence"
licence_acceptance = true
[[models.restricted.files]]
repo = "test-org/tiny-model"
path = "config.json"

[models.hub-gated]
name = "Gated on the hub"
modality = "text"
engine = "worker:text"
devices = ["cpu"]
disk_gb = 0.001
vram_gib = 0.0
ram_gib = 0.01
licence = "apache-2.0"
[[models.hub-gated.files]]
repo = "test-org/gated"
path = "config.json"
"""
    )
    return load_catalog(path)


def test_pull_reports_progress_and_verifies_every_file(
    hub: HubFactory, catalog: Catalog, tmp_path: Path, files: dict[str, bytes]
) -> None:
    stand_in = hub()
    events: list[PullEvent] = []
    models = tmp_path / "models"
    result = pull_model(catalog.get("tiny"), models, endpoint=stand_in.endpoint, on_progress=events.append,
                        chunk_bytes=CHUNK)  # fmt: skip
    expected = {"config.json", "tokenizer.json", "model.safetensors", "weights/extra.bin"}
    assert {f.dest for f in result.files} == expected  # README.md is not matched by the patterns
    for name in expected:
        assert (models / "tiny" / name).read_bytes() == files[name]
    total = sum(len(files[n]) for n in expected)
    assert result.fetched_bytes == total and result.reused_bytes == 0
    kinds = [e.kind for e in events]
    assert kinds[:2] == ["resolving", "planned"] and kinds[-1] == "done"
    assert kinds.count("verified") == 4 and kinds.count("progress") >= len(files["model.safetensors"]) // CHUNK
    done = [e.done_bytes for e in events if e.kind == "progress"]
    assert done == sorted(done) and done[-1] == total and all(e.total_bytes == total for e in events[1:])
    assert is_on_disk(models, "tiny")
    manifest = json.loads((models / "tiny" / MANIFEST).read_text())
    big = next(f for f in manifest["files"] if f["dest"] == "model.safetensors")
    assert big["sha256"] == hashlib.sha256(files["model.safetensors"]).hexdigest()

    before = len(stand_in.transfers())
    again = pull_model(catalog.get("tiny"), models, endpoint=stand_in.endpoint)
    assert again.fetched_bytes == 0 and len(stand_in.transfers()) == before  # nothing fetched twice


def test_single_file_goes_to_its_destination(hub: HubFactory, catalog: Catalog, tmp_path: Path,
                                             files: dict[str, bytes]) -> None:  # fmt: skip
    stand_in = hub()
    pull_model(catalog.get("single"), tmp_path / "m", endpoint=stand_in.endpoint)
    assert (tmp_path / "m" / "single" / "voices" / "voice.onnx").read_bytes() == files["model.safetensors"]
    cdn = [r for r in stand_in.transfers() if r["path"].startswith("/blobs/")]
    assert len(cdn) == 1 and not cdn[0]["auth"]  # the LFS bytes came from the CDN origin


def test_dropped_connection_resumes_with_a_range_request(
    hub: HubFactory, catalog: Catalog, tmp_path: Path, files: dict[str, bytes]
) -> None:
    stand_in = hub(drop_after={"model.safetensors": 1_000_000})
    result = pull_model(catalog.get("single"), tmp_path / "m", endpoint=stand_in.endpoint, retry_delay_s=0,
                        chunk_bytes=CHUNK)  # fmt: skip
    assert (tmp_path / "m" / "single" / "voices" / "voice.onnx").read_bytes() == files["model.safetensors"]
    gets = [r for r in stand_in.transfers() if r["path"].startswith("/blobs/")]
    assert gets[0]["range"] is None and gets[1]["range"] is not None
    resumed_at = int(gets[1]["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 1_000_000
    assert result.fetched_bytes == len(files["model.safetensors"])  # no byte fetched twice


def test_interrupted_pull_resumes_on_the_next_run(
    hub: HubFactory, catalog: Catalog, tmp_path: Path, files: dict[str, bytes]
) -> None:
    stand_in = hub(drop_after={"model.safetensors": 1_500_000})
    models = tmp_path / "m"
    with pytest.raises(PullError, match="run the pull again"):
        pull_model(catalog.get("single"), models, endpoint=stand_in.endpoint, retries=0, chunk_bytes=CHUNK)
    part = models / "single" / "voices" / "voice.onnx.part"
    kept = part.stat().st_size
    assert 0 < kept <= 1_500_000 and not is_on_disk(models, "single")
    events: list[PullEvent] = []
    pull_model(catalog.get("single"), models, endpoint=stand_in.endpoint, on_progress=events.append)
    assert (models / "single" / "voices" / "voice.onnx").read_bytes() == files["model.safetensors"]
    assert not part.exists()
    last_get = [r for r in stand_in.transfers() if r["path"].startswith("/blobs/")][-1]
    assert last_get["range"] == f"bytes={kept}-"
    assert next(e for e in events if e.kind == "planned").done_bytes == kept


def test_a_stale_partial_file_is_discarded(hub: HubFactory, catalog: Catalog, tmp_path: Path,
                                           files: dict[str, bytes]) -> None:  # fmt: skip
    stand_in = hub()
    target = tmp_path / "m" / "single" / "voices"
    target.mkdir(parents=True)
    (target / "voice.onnx.part").write_bytes(b"x" * 5000)
    (target / "voice.onnx.part.json").write_text(json.dumps({"identity": "an older revision"}))
    pull_model(catalog.get("single"), tmp_path / "m", endpoint=stand_in.endpoint)
    assert (target / "voice.onnx").read_bytes() == files["model.safetensors"]
    assert [r["range"] for r in stand_in.transfers() if r["path"].startswith("/blobs/")] == [None]


def test_hash_mismatch_is_rejected(hub: HubFactory, catalog: Catalog, tmp_path: Path) -> None:
    stand_in = hub(corrupt=["model.safetensors"])
    models = tmp_path / "m"
    events: list[PullEvent] = []
    with pytest.raises(VerificationFailed, match="sha256"):
        pull_model(catalog.get("tiny"), models, endpoint=stand_in.endpoint, on_progress=events.append)
    assert not (models / "tiny" / "model.safetensors").exists()
    assert not (models / "tiny" / "model.safetensors.part").exists()
    assert not is_on_disk(models, "tiny")
    assert events[-1].kind == "failed" and "rejected" in events[-1].message


def test_small_file_checked_against_its_git_sha1(hub: HubFactory, catalog: Catalog, tmp_path: Path) -> None:
    stand_in = hub(corrupt=["config.json"])
    with pytest.raises(VerificationFailed, match="git SHA-1"):
        pull_model(catalog.get("restricted"), tmp_path / "m", endpoint=stand_in.endpoint, accepted=True)


def test_insufficient_disk_is_refused_before_downloading(hub: HubFactory, catalog: Catalog, tmp_path: Path) -> None:
    stand_in = hub()
    with pytest.raises(InsufficientDisk, match="not enough free disk") as info:
        pull_model(catalog.get("tiny"), tmp_path / "m", endpoint=stand_in.endpoint, disk_free=lambda _: 5_000_000,
                   reserve_bytes=2_000_000)  # fmt: skip
    assert info.value.needed > 3_000_000 and info.value.free == 5_000_000
    assert stand_in.transfers() == []  # only metadata was read
    assert not (tmp_path / "m" / "tiny").exists()


def test_licence_must_be_accepted_before_any_request(hub: HubFactory, catalog: Catalog, tmp_path: Path) -> None:
    stand_in = hub()
    with pytest.raises(LicenceRequired, match="TestLicence"):
        pull_model(catalog.get("restricted"), tmp_path / "m", endpoint=stand_in.endpoint)
    assert stand_in.requests() == []
    pull_model(catalog.get("restricted"), tmp_path / "m", endpoint=stand_in.endpoint, accepted={"testlicence"})
    assert is_on_disk(tmp_path / "m", "restricted")


def test_hub_gated_repository_says_what_to_do(hub: HubFactory, catalog: Catalog, tmp_path: Path) -> None:
    stand_in = hub()
    with pytest.raises(PullError, match="gated"):
        pull_model(catalog.get("hub-gated"), tmp_path / "m", endpoint=stand_in.endpoint, token=False)
    pull_model(catalog.get("hub-gated"), tmp_path / "m", endpoint=stand_in.endpoint, token="hf_test")
    assert is_on_disk(tmp_path / "m", "hub-gated")


def _cli() -> Any:
    import typer

    from appliance.catalog_cli import pull_command

    app = typer.Typer()
    app.command("pull")(pull_command)
    app.command("other")(lambda: None)  # two commands, so "pull" stays a subcommand
    return app


def test_cli_pull_with_bar_and_with_events(hub: HubFactory, catalog: Catalog, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    stand_in = hub()
    args = ["--catalog", catalog.source, "--models-dir", str(tmp_path / "m")]
    env = {"HF_ENDPOINT": stand_in.endpoint, "HF_TOKEN": ""}
    result = CliRunner().invoke(_cli(), ["pull", "tiny", *args], env=env)
    assert result.exit_code == 0, result.output
    assert "verified model.safetensors" in result.output
    assert "tiny: 4 files verified" in result.output and is_on_disk(tmp_path / "m", "tiny")
    events = CliRunner().invoke(_cli(), ["pull", "single", *args, "--events"], env=env)
    assert events.exit_code == 0, events.output
    kinds = [json.loads(line)["kind"] for line in events.output.splitlines() if line.startswith("{")]
    assert kinds[0] == "resolving" and kinds[-1] == "done" and "progress" in kinds


def test_cli_pull_refuses_an_unaccepted_licence(hub: HubFactory, catalog: Catalog, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    stand_in = hub()
    args = ["pull", "restricted", "--catalog", catalog.source, "--models-dir", str(tmp_path / "m")]
    refused = CliRunner().invoke(_cli(), args, env={"HF_ENDPOINT": stand_in.endpoint})
    assert refused.exit_code == 1 and "--accept-licence" in refused.output
    assert stand_in.requests() == []
    accepted = CliRunner().invoke(_cli(), [*args, "--accept-licence"], env={"HF_ENDPOINT": stand_in.endpoint})
    assert accepted.exit_code == 0, accepted.output
