"""/v1/images/generations served by the appliance's diffusers worker (a tiny random-weight SD3 pipeline
built here, nothing downloaded): the worker always answers b64_json, the gateway turns it into signed
URLs when asked."""

from __future__ import annotations

import base64
import struct
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from .conftest import Gateway, launch, worker_engine


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, tiny_sd3_dir: Path) -> Iterator[Gateway]:
    pipeline = tiny_sd3_dir
    doc = {
        "engines": {"diffusers": worker_engine("diffusers", str(pipeline),
                                               extra_args=["--cpu-default-size", "32x32", "--steps", "2"])},
        "models": {"tiny-sd3": {"engine": "diffusers", "modality": "image", "vram_gb": 0.1}},
    }
    gw = launch(module_tmp / "daemon", doc, keys={"user": False, "admin": True})
    try:
        yield gw
    finally:
        gw.stop()


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_b64_images_from_the_worker(gateway: Gateway) -> None:
    out = gateway.client().images.generate(model="tiny-sd3", prompt="a red fox", n=2, size="64x64",
                                           response_format="b64_json", extra_body={"seed": 5})
    images = [base64.b64decode(d.b64_json or "") for d in out.data]
    assert [png_size(i) for i in images] == [(64, 64), (64, 64)]
    assert images[0] != images[1]
    assert out.model_dump()["seed"] == 5


def test_url_images_from_the_worker_load_without_a_key(gateway: Gateway) -> None:
    out = gateway.client().images.generate(model="tiny-sd3", prompt="a blue boat", size="auto")
    url = out.data[0].url
    assert url is not None and "/images/" in url and "sig=" in url
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert png_size(resp.read()) == (32, 32)


def test_the_workers_own_400_passes_through(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as err:  # a field only the worker checks
        gateway.client().images.generate(model="tiny-sd3", prompt="x", size="64x64",
                                         extra_body={"guidance_scale": -1})
    assert err.value.param == "guidance_scale"
