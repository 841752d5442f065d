"""Workflow templates, signed image URLs and audio durations, without any server."""

from __future__ import annotations

import io
import json
import os
import struct
import wave
from pathlib import Path

import pytest

from appliance.gateway.audio import duration_s
from appliance.gateway.errors import Forbidden, NotFound
from appliance.gateway.images import ImageStore
from appliance.gateway.workflows import WorkflowError, infer_parameters, load_workflow, parse_template

# contracts.md §3.4: the minimal API-format text-to-image graph, as ComfyUI's "Save (API)" writes it.
PLAIN = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "model.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
    "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "cfg": 7, "sampler_name": "euler",
                                               "scheduler": "normal", "denoise": 1, "model": ["4", 0],
                                               "positive": ["6", 0], "negative": ["7", 0],
                                               "latent_image": ["5", 0]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
}


def test_sd35_turbo_template_is_the_documented_graph() -> None:
    wf = load_workflow("sd35_turbo")
    kinds = {n["class_type"] for n in wf.graph.values()}
    assert {"TripleCLIPLoader", "EmptySD3LatentImage", "KSampler", "SaveImage"} <= kinds
    sampler = next(n["inputs"] for n in wf.graph.values() if n["class_type"] == "KSampler")
    assert sampler["steps"] == 4 and sampler["cfg"] == 1.2
    clip = next(i for i, n in wf.graph.items() if n["class_type"] == "TripleCLIPLoader")
    encoders = [n for n in wf.graph.values() if n["class_type"] == "CLIPTextEncode"]
    assert all(n["inputs"]["clip"] == [clip, 0] for n in encoders)  # the checkpoint holds no text encoder


def test_render_maps_parameters_without_touching_the_template() -> None:
    wf = load_workflow("sd35_turbo")
    graph = wf.render({"prompt": "a fox", "negative_prompt": "blur", "width": 512, "height": 768,
                       "batch_size": 3, "seed": 42, "checkpoint": "other.safetensors"})
    assert graph["6"]["inputs"]["text"] == "a fox" and graph["7"]["inputs"]["text"] == "blur"
    assert graph["5"]["inputs"] == {"width": 512, "height": 768, "batch_size": 3}
    assert graph["3"]["inputs"]["seed"] == 42 and graph["4"]["inputs"]["ckpt_name"] == "other.safetensors"
    assert wf.graph["6"]["inputs"]["text"] == ""  # the template itself is unchanged
    kept = wf.render({"prompt": "x", "width": None})
    assert kept["5"]["inputs"]["width"] == 1024  # None keeps the template's value ("auto" size)


def test_plain_exported_graph_parameters_are_found_from_the_sampler_links(tmp_path: Path) -> None:
    params = infer_parameters(PLAIN)
    assert params["prompt"] == [("6", "text")] and params["negative_prompt"] == [("7", "text")]
    assert params["seed"] == [("3", "seed")] and params["batch_size"] == [("5", "batch_size")]
    assert params["checkpoint"] == [("4", "ckpt_name")]
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(PLAIN))
    assert load_workflow(str(path)).render({"prompt": "dog"})["6"]["inputs"]["text"] == "dog"


def test_broken_templates_are_reported() -> None:
    with pytest.raises(WorkflowError, match="does not have"):
        parse_template("t", {"graph": PLAIN, "parameters": {"prompt": [["99", "text"]]}})
    with pytest.raises(WorkflowError, match="unknown parameter"):
        parse_template("t", {"graph": PLAIN, "parameters": {"style": [["6", "text"]]}})
    with pytest.raises(WorkflowError, match="API format"):
        parse_template("t", {"nodes": [], "links": []})  # the UI's format, not the API's
    with pytest.raises(WorkflowError, match="cannot read"):
        load_workflow("no_such_template")


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def store(tmp_path: Path, clock: Clock) -> ImageStore:
    return ImageStore(tmp_path / "images", tmp_path / "url.key", ttl_s=60, clock=clock)


def split(url: str) -> tuple[str, str]:
    path, _, query = url.partition("?")
    return path.rsplit("/", 1)[1], query


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


def test_signed_url_serves_until_it_expires(tmp_path: Path) -> None:
    clock = Clock()
    images = store(tmp_path, clock)
    name, query = split(images.put(PNG, "http://box:8080"))
    data, ctype, left = images.load(name, query)
    assert data == PNG and ctype == "image/png" and left == 60
    clock.now += 61
    with pytest.raises(Forbidden, match="expired"):
        images.load(name, query)


def test_tampered_or_foreign_urls_are_refused(tmp_path: Path) -> None:
    clock = Clock()
    images = store(tmp_path, clock)
    name, query = split(images.put(PNG, "http://box"))
    longer = query.replace("expires=", "expires=9")  # extend the expiry without the secret
    with pytest.raises(Forbidden, match="signature"):
        images.load(name, longer)
    with pytest.raises(Forbidden, match="not signed"):
        images.load(name, "")
    with pytest.raises(NotFound):
        images.load("../../etc/passwd", query)
    other = ImageStore(tmp_path / "images", tmp_path / "other.key", ttl_s=60, clock=clock)  # another secret
    with pytest.raises(Forbidden):
        other.load(name, query)


def test_the_secret_survives_a_restart_and_old_files_are_swept(tmp_path: Path) -> None:
    clock = Clock()
    first = store(tmp_path, clock)
    name, query = split(first.put(PNG, "http://box"))
    again = store(tmp_path, clock)
    assert again.load(name, query)[0] == PNG
    clock.now += 3600
    os.utime(tmp_path / "images" / name, (clock.now - 10, clock.now - 10))  # younger than the TTL: kept
    old = tmp_path / "images" / "stale-stale-stale-01.png"
    old.write_bytes(PNG)
    os.utime(old, (clock.now - 120, clock.now - 120))
    assert again.sweep() == 1 and not old.exists() and (tmp_path / "images" / name).exists()


def test_an_image_kept_longer_than_its_url_is_signed_afresh_then_swept(tmp_path: Path) -> None:
    clock = Clock()
    images = ImageStore(tmp_path / "images", tmp_path / "url.key", ttl_s=60, clock=clock, keep_s=600)
    url = images.put(PNG, "http://box")
    name = ImageStore.name_of(url)
    assert name is not None and ImageStore.name_of("http://box/elsewhere/x.png") is None
    clock.now += 120
    os.utime(tmp_path / "images" / name, (clock.now - 120, clock.now - 120))
    with pytest.raises(Forbidden, match="expired"):
        images.load(*split(url))
    assert images.sweep(force=True) == 0  # the URL expired, the file is kept (a job's result)
    fresh = images.sign(name, "http://other:1")
    assert fresh.startswith("http://other:1/images/") and images.load(*split(fresh))[0] == PNG
    clock.now += 600
    assert images.sweep(force=True) == 1 and not (tmp_path / "images" / name).exists()


def wav_bytes(seconds: float, rate: int = 22050) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * int(seconds * rate))
    return out.getvalue()


def flac_header(samples: int, rate: int) -> bytes:
    info = bytearray(34)
    info[10] = rate >> 12 & 0xFF
    info[11] = rate >> 4 & 0xFF
    info[12] = (rate & 0x0F) << 4
    info[13] = samples >> 32 & 0x0F
    struct.pack_into(">I", info, 14, samples & 0xFFFFFFFF)
    return b"fLaC" + b"\x80\x00\x00\x22" + bytes(info)


def ogg_page(granule: int) -> bytes:
    return b"OggS\x00\x04" + struct.pack("<q", granule) + b"\x00" * 14


def mp3_frames(count: int) -> bytes:
    header = bytes((0xFF, 0xFB, 0x90, 0x64))  # MPEG-1 layer III, 128 kbit/s, 44.1 kHz
    length = 144 * 128000 // 44100
    return (header + b"\x00" * (length - 4)) * count


@pytest.mark.parametrize(("fmt", "data", "seconds"), [
    ("wav", wav_bytes(1.5), 1.5),
    ("pcm", b"\x00" * 48000, 1.0),
    ("flac", flac_header(44100 * 3, 44100), 3.0),
    ("opus", ogg_page(0) + b"payload" + ogg_page(48000 * 2), 2.0),
    ("mp3", mp3_frames(100), 100 * 1152 / 44100),
])
def test_audio_duration_from_the_bytes(fmt: str, data: bytes, seconds: float) -> None:
    assert duration_s(fmt, data) == pytest.approx(seconds, rel=1e-3)


@pytest.mark.parametrize("fmt", ["wav", "flac", "opus", "mp3", "aac"])
def test_unparseable_audio_counts_zero(fmt: str) -> None:
    assert duration_s(fmt, b"garbage bytes") == 0.0
