"""The diffusers worker's model: one text-to-image pipeline on one device.

Owns loading (the pipeline class named in model_index.json: StableDiffusion3Pipeline directly, any other
through AutoPipelineForText2Image; components saved as null, such as SD3's optional T5 encoder, are
passed as None again, which diffusers requires, and so are components left out with `--without`),
residency of every torch component through
`ModelResidence`, the size rule (multiples of the VAE scale times the transformer patch size), and
generation with one CPU generator per image (seed, seed+1, ...) so a seed gives the same image on any
device and after any offload, stopping between two denoising steps when asked (`on_step` raises). Runs
on the model thread; must not know HTTP.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.memory import ResidentWeights

if TYPE_CHECKING:
    import torch

    from services.weights import ModelResidence


@dataclass(frozen=True)
class ImageJob:
    prompt: str
    negative_prompt: str | None
    n: int
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int
    output_format: str = "png"


@dataclass(frozen=True)
class DiffusersOptions:
    dtype: str = "auto"
    offload: str = "auto"
    steps: int = 4
    guidance_scale: float = 0.0
    default_size: tuple[int, int] = (1024, 1024)  # no `size` (or "auto") on a GPU
    cpu_default_size: tuple[int, int] = (512, 512)  # ... on a CPU, where 1024x1024 takes many minutes
    without: tuple[str, ...] = ()  # components not loaded at all, e.g. SD3's T5 encoder on a 24 GB card


def null_components(model_dir: Path) -> dict[str, None]:
    """Components model_index.json records as [null, null]; from_pretrained needs them passed as None."""
    index = json.loads((model_dir / "model_index.json").read_text())
    return {
        name: None
        for name, value in index.items()
        if not name.startswith("_") and isinstance(value, list) and value == [None, None]
    }


class DiffusersBackend(ResidentWeights):
    def __init__(self, model_path: str, device: str, options: DiffusersOptions) -> None:
        self._model_path = model_path
        self._requested_device = device
        self.options = options
        self._device: torch.device | None = None
        self._pipe: Any = None
        self._residence: ModelResidence | None = None
        self.size_multiple = 8

    def prepare(self) -> str:
        import diffusers
        import transformers

        from services.weights import resolve_device

        diffusers.utils.logging.disable_progress_bar()
        transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        self._device = resolve_device(self._requested_device)
        return str(self._device)

    def load(self) -> None:
        import torch
        from diffusers import AutoPipelineForText2Image, StableDiffusion3Pipeline

        from services.weights import ModelResidence, resolve_dtype

        assert self._device is not None
        model_dir = Path(self._model_path).expanduser()
        dtype = resolve_dtype(self.options.dtype, self._device)
        index = json.loads((model_dir / "model_index.json").read_text()) if model_dir.is_dir() else {}
        extra: dict[str, None] = null_components(model_dir) if index else {}
        extra.update(dict.fromkeys(self.options.without))
        sd3 = index.get("_class_name") == "StableDiffusion3Pipeline"
        loader: Any = StableDiffusion3Pipeline if sd3 else AutoPipelineForText2Image
        pipe = loader.from_pretrained(str(model_dir) if index else self._model_path, dtype=dtype, **extra)
        pipe.set_progress_bar_config(disable=True)
        modules = [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]
        for module in modules:
            module.eval()
            module.requires_grad_(False)
        self._residence = ModelResidence(modules, self._device, self.options.offload)
        self._pipe = pipe
        self.size_multiple = int(getattr(pipe, "vae_scale_factor", 8)) * int(getattr(pipe, "patch_size", 1) or 1)

    def _forget(self) -> None:
        self._pipe = None

    def default_size(self) -> tuple[int, int]:
        """The size of a request that names none: small on a CPU (known once prepared)."""
        on_cpu = self._device is not None and self._device.type == "cpu"
        return self.options.cpu_default_size if on_cpu else self.options.default_size

    def generate(self, job: ImageJob, on_step: Callable[[], None] = lambda: None) -> list[bytes]:
        """Encoded images (PNG, JPEG or WebP), one per generator seed. `on_step` runs after every
        denoising step; an exception it raises (a cancelled request) stops the pipeline there, before
        the remaining steps and the decode."""
        import torch

        def step_end(_pipe: Any, _step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            on_step()
            return tensors

        generators = [torch.Generator(device="cpu").manual_seed(job.seed + i) for i in range(job.n)]
        kwargs: dict[str, Any] = {
            "prompt": job.prompt,
            "num_images_per_prompt": job.n,
            "width": job.width,
            "height": job.height,
            "num_inference_steps": job.steps,
            "guidance_scale": job.guidance_scale,
            "generator": generators,
            "output_type": "pil",
            "callback_on_step_end": step_end,
        }
        if job.negative_prompt:
            kwargs["negative_prompt"] = job.negative_prompt
        with torch.inference_mode():
            images = self._pipe(**kwargs).images
        encoded = []
        for image in images:
            buffer = io.BytesIO()
            image.save(buffer, format={"jpeg": "JPEG", "webp": "WEBP"}.get(job.output_format, "PNG"))
            encoded.append(buffer.getvalue())
        return encoded
