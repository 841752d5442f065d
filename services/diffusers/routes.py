"""OpenAI route of the diffusers worker: /v1/images/generations (and /v1/models).

Owns validation (prompt; quality, style, background and moderation only at their defaults; n 1-10,
size WxH in multiples the pipeline accepts, or none or "auto" for the
model's default size, smaller on a CPU (`--default-size`, `--cpu-default-size`), response_format
url or b64_json, output_format png/jpeg/webp; extensions seed, steps/num_inference_steps,
guidance_scale, negative_prompt; a 400 names the field) and the response: always b64_json, each item
with the seed that makes it again. Generation runs on the model thread and stops between two denoising
steps when its client goes away (`Worker.run_job`).
"""

from __future__ import annotations

import base64
import secrets
import time
from typing import Any

from aiohttp import web

from appliance.fields import opt_choice, opt_float, opt_int, opt_str, parse_size, refuse_unhonoured_image, require_str
from services.diffusers.backend import DiffusersBackend, ImageJob
from services.protocol import Worker, check_model, read_json

MAX_PROMPT_CHARS = 32_000
MAX_SIDE = 4096


def parse_job(body: dict[str, Any], backend: DiffusersBackend) -> ImageJob:
    prompt = require_str(body, "prompt", max_len=MAX_PROMPT_CHARS)
    refuse_unhonoured_image(body, "diffusers worker")
    n = opt_int(body, "n", 1, lo=1, hi=10) or 1
    opt_choice(body, "response_format", ("url", "b64_json"), "url")  # always answered as b64_json
    output_format = opt_choice(body, "output_format", ("png", "jpeg", "webp"), "png")
    multiple = backend.size_multiple
    width, height = parse_size(body.get("size"), multiple, lo=multiple, hi=MAX_SIDE) or backend.default_size()
    steps_field = "num_inference_steps" if "num_inference_steps" in body else "steps"
    steps = opt_int(body, steps_field, backend.options.steps, lo=1, hi=200) or backend.options.steps
    guidance = opt_float(body, "guidance_scale", backend.options.guidance_scale, lo=0.0, hi=30.0)
    seed = opt_int(body, "seed", None, lo=0, hi=2**63 - 11)
    return ImageJob(
        prompt=prompt,
        negative_prompt=opt_str(body, "negative_prompt"),
        n=n,
        width=width,
        height=height,
        steps=steps,
        guidance_scale=guidance,
        seed=secrets.randbelow(2**31) if seed is None else seed,
        output_format=output_format,
    )


def add_routes(app: web.Application, worker: Worker, backend: DiffusersBackend) -> None:
    model_id = worker.options.model_id

    async def generations(request: web.Request) -> web.Response:
        body = await read_json(request)
        check_model(body, worker)
        require_str(body, "prompt", max_len=MAX_PROMPT_CHARS)  # before a load, which may take minutes
        async with worker.serving(request) as work:
            job = parse_job(body, backend)  # the size rule comes from the loaded pipeline
            images = await worker.run_job(work, backend.generate, job, work.step)  # cancelled between steps
        data = [
            {"b64_json": base64.b64encode(image).decode("ascii"), "revised_prompt": job.prompt, "seed": job.seed + i}
            for i, image in enumerate(images)
        ]
        return web.json_response({"created": int(time.time()), "data": data, "output_format": job.output_format,
                                  "size": f"{job.width}x{job.height}"})  # fmt: skip

    async def models(_: web.Request) -> web.Response:
        card = {"id": model_id, "object": "model", "created": int(time.time()), "owned_by": "appliance"}
        return web.json_response({"object": "list", "data": [card]})

    app.router.add_post("/v1/images/generations", generations)
    app.router.add_get("/v1/models", models)
