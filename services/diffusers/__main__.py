"""`python -m services.diffusers`: the diffusers worker's command line (text-to-image pipelines)."""

from __future__ import annotations

import argparse
import os
import re

from services.diffusers.backend import DiffusersBackend, DiffusersOptions
from services.diffusers.routes import add_routes
from services.protocol import argument_parser, configure_logging, run_worker, worker_options


def _size(value: str) -> tuple[int, int]:
    match = re.match(r"^(\d+)x(\d+)$", value)
    if match is None:
        raise argparse.ArgumentTypeError(f"must look like 1024x1024; got {value!r}")
    return int(match.group(1)), int(match.group(2))


def main() -> None:
    parser = argument_parser("diffusers", "Serve a diffusers text-to-image pipeline over the OpenAI images API.")
    parser.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto")
    parser.add_argument("--offload-strategy", choices=("auto", "arena", "in-place"), default="auto")
    parser.add_argument("--steps", type=int, default=4, help="default denoising steps (SD3.5 Large Turbo: 4)")
    parser.add_argument("--guidance-scale", type=float, default=0.0, help="default guidance (Turbo: 0)")
    parser.add_argument("--default-size", type=_size, default=(1024, 1024),
                        help="size for a request with no size (or size=auto) on a GPU")
    parser.add_argument("--cpu-default-size", type=_size, default=(512, 512),
                        help="size for a request with no size (or size=auto) on a CPU")
    parser.add_argument(
        "--without",
        action="append",
        default=[],
        metavar="COMPONENT",
        help="do not load this pipeline component (repeatable), e.g. text_encoder_3",
    )
    ns = parser.parse_args()
    options = worker_options("diffusers", ns)
    configure_logging()
    backend = DiffusersBackend(
        options.model_path,
        options.device,
        DiffusersOptions(dtype=ns.dtype, offload=ns.offload_strategy, steps=ns.steps,
                         guidance_scale=ns.guidance_scale, default_size=ns.default_size,
                         cpu_default_size=ns.cpu_default_size,
                         without=tuple(ns.without)),
    )  # fmt: skip
    run_worker(options, backend, lambda app, worker: add_routes(app, worker, backend), os.environ)


if __name__ == "__main__":
    main()
