"""The set-up both stream-preemption tests share: a text model that never fits beside a 15 GiB
ComfyUI stand-in on a 24 GiB fake GPU, and a chat stream with an image asked for once it streams.

Without preemption the image could only start after the stream ends; with it, the order of the
two completions shows whether the stream was paused for the image or drained first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from daemon_harness import comfyui_engine, free_port

from .conftest import Gateway

GIB = 1 << 30
T = TypeVar("T")


def image_box(tmp: Path, engines: dict[str, Any], models: dict[str, Any], *, max_wait_s: float,
              image_s: float) -> dict[str, Any]:
    """A daemon configuration with stream preemption on: the given text engines and models beside
    a 15 GiB ComfyUI stand-in serving `img` (each image taking `image_s`)."""
    return {
        "server": {"keepalive_interval_s": 0.2, "load_deadline_s": 60.0},
        "gpu": {"probe": "fake", "fake_dir": str(tmp / "fakegpu"), "declared_total_gb": 24,
                "reserve_gb": 1.5, "host_ram_budget_gb": 64, "sample_interval_s": 0.2},
        "scheduler": {"preemption": True, "max_wait_s": max_wait_s},
        "engines": {
            **engines,
            "comfyui": comfyui_engine(free_port(), env={"COMFYUI_STANDIN_FOOTPRINT_BYTES": str(15 * GIB),
                                                        "COMFYUI_STANDIN_IMAGE_S": str(image_s)}),
        },
        "models": {
            **models,
            "img": {"engine": "comfyui", "modality": "image", "vram_gb": 15, "workflow": "checkpoint",
                    "checkpoint": "model.safetensors"},
        },
    }


def stream_beside_image(gw: Gateway, stream: Callable[[threading.Event], T]) -> tuple[T, dict[str, float]]:
    """Run `stream` (which sets the event once its chat streams) while another thread asks for an
    image as soon as it is set; returns what `stream` returned and when each ended
    (`stream_done`, `image_done`, monotonic seconds). An error in the image thread fails the test."""
    marks: dict[str, float] = {}
    errors: list[BaseException] = []
    streaming = threading.Event()

    def image() -> None:
        try:
            assert streaming.wait(60), "the chat never started streaming"
            gw.client(None).images.generate(model="img", prompt="a cat", size="256x256", response_format="b64_json")
            marks["image_done"] = time.monotonic()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    t = threading.Thread(target=image)
    t.start()
    try:
        result = stream(streaming)
        marks["stream_done"] = time.monotonic()
    finally:
        streaming.set()
        t.join(120)
    assert not errors, errors
    return result, marks


def collect(stream: Iterable[T], streaming: threading.Event, after: int) -> list[T]:
    """Every chunk of a client stream, setting `streaming` once `after` of them have come."""
    chunks = []
    for chunk in stream:
        chunks.append(chunk)
        if len(chunks) == after:
            streaming.set()
    return chunks
