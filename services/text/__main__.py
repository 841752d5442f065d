"""`python -m services.text`: the text worker's command line (transformers causal LMs)."""

from __future__ import annotations

import os

from services.protocol import argument_parser, configure_logging, run_worker, worker_options
from services.text.backend import TextBackend, TextOptions
from services.text.routes import add_routes


def main() -> None:
    parser = argument_parser("text", "Serve a transformers causal LM over the OpenAI chat/completions API.")
    parser.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto")
    parser.add_argument(
        "--offload-strategy",
        choices=("auto", "arena", "in-place"),
        default="auto",
        help="arena: one pinned host buffer, one copy per wake (default on CUDA)",
    )
    parser.add_argument(
        "--default-max-tokens",
        type=int,
        default=512,
        help="completion length when a request gives no max_tokens",
    )
    ns = parser.parse_args()
    options = worker_options("text", ns)
    configure_logging()
    backend = TextBackend(
        options.model_path,
        options.device,
        TextOptions(dtype=ns.dtype, offload=ns.offload_strategy, default_max_tokens=ns.default_max_tokens),
    )
    run_worker(options, backend, lambda app, worker: add_routes(app, worker, backend), os.environ)


if __name__ == "__main__":
    main()
