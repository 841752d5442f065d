"""The diffusers worker serving tiny random-weight SD3 and SD1 pipelines through its real process."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from worker_harness import ServedProcess, start_worker


@pytest.fixture(scope="module")
def sd3_worker(tiny_sd3_dir: Path, log_dir: Path) -> Iterator[ServedProcess]:
    # A GPU's default would take minutes here: this worker runs on the CPU and must use the CPU's.
    worker = start_worker("diffusers", "tiny-sd3", tiny_sd3_dir, log_dir, "--offload-strategy", "arena",
                          "--default-size", "1024x1024", "--cpu-default-size", "32x32")  # fmt: skip
    yield worker
    worker.stop()


def generate(worker: ServedProcess, **body: Any) -> dict[str, Any]:
    resp = httpx.post(worker.base_url + "/v1/images/generations", json={"prompt": "a red fox", **body}, timeout=120)
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()
    return result


def decode(item: dict[str, Any]) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))
    image.load()
    return image


def test_images_have_the_requested_size_and_seeds(sd3_worker: ServedProcess) -> None:
    result = generate(sd3_worker, model="tiny-sd3", size="64x48", n=2, seed=7, response_format="url")
    assert [item["seed"] for item in result["data"]] == [7, 8]
    images = [decode(item) for item in result["data"]]
    assert [(im.format, im.size) for im in images] == [("PNG", (64, 48)), ("PNG", (64, 48))]
    assert images[0].tobytes() != images[1].tobytes()  # different seeds, different noise
    assert "url" not in result["data"][0]  # b64_json always; the gateway makes URLs
    again = generate(sd3_worker, size="64x48", n=1, seed=8)
    assert decode(again["data"][0]).tobytes() == images[1].tobytes()


def test_no_size_on_a_cpu_was_the_gpu_default_now_the_cpu_default(sd3_worker: ServedProcess) -> None:
    result = generate(sd3_worker, seed=3)  # no size at all
    assert result["size"] == "32x32" and decode(result["data"][0]).size == (32, 32)


def test_auto_size_and_jpeg(sd3_worker: ServedProcess) -> None:
    image = decode(generate(sd3_worker, size="auto", output_format="jpeg", seed=1)["data"][0])
    assert image.format == "JPEG" and image.size == (32, 32)


def test_offload_then_wake_gives_identical_images(sd3_worker: ServedProcess) -> None:
    before = generate(sd3_worker, size="32x32", seed=42, steps=2)["data"][0]["b64_json"]
    assert httpx.post(sd3_worker.base_url + "/offload", timeout=60).json()["state"] == "offloaded"
    stats = httpx.get(sd3_worker.base_url + "/stats").json()
    assert stats["state"] == "offloaded" and stats["host_bytes"] > 0 and stats["gpu_bytes"] == 0
    after = generate(sd3_worker, size="32x32", seed=42, steps=2)["data"][0]["b64_json"]  # wakes first
    assert after == before
    stats = httpx.get(sd3_worker.base_url + "/stats").json()
    assert stats["state"] == "loaded" and stats["wake_seconds"] is not None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"size": "65x48"}, "size"),  # the tiny pipeline needs multiples of 2 (VAE scale 2 x patch 1)
        ({"size": "8192x64"}, "size"),
        ({"size": "big"}, "size"),
        ({"n": 11}, "n"),
        ({"prompt": ""}, "prompt"),
        ({"response_format": "bmp"}, "response_format"),
        ({"guidance_scale": -1}, "guidance_scale"),
        # quality, style, background and moderation were accepted and ignored with a 200
        ({"quality": "hd"}, "quality"),
        ({"style": "vivid"}, "style"),
        ({"background": "transparent"}, "background"),
        ({"moderation": "low"}, "moderation"),
    ],
)
def test_bad_requests_name_the_field(sd3_worker: ServedProcess, body: dict[str, Any], param: str) -> None:
    resp = httpx.post(sd3_worker.base_url + "/v1/images/generations", json={"prompt": "x", **body}, timeout=60)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param


def test_default_values_of_unhonoured_image_fields_still_pass(sd3_worker: ServedProcess) -> None:
    result = generate(sd3_worker, size="32x32", seed=1, quality="standard", background="auto", moderation="auto")
    assert result["size"] == "32x32"


def test_generic_pipeline_through_autopipeline(tiny_sd1_dir: Path, log_dir: Path) -> None:
    worker = start_worker("diffusers", "tiny-sd1", tiny_sd1_dir, log_dir, "--steps", "2", "--guidance-scale", "7")
    try:
        image = decode(generate(worker, size="64x64", seed=3)["data"][0])
        assert image.size == (64, 64)
    finally:
        worker.stop()
