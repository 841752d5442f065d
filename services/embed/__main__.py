"""`python -m services.embed`: the embedding worker's command line (sentence-transformers)."""

from __future__ import annotations

import os
from pathlib import Path

from services import store
from services.embed.backend import EmbedBackend
from services.embed.routes import add_routes
from services.protocol import argument_parser, configure_logging, run_worker, worker_options


def main() -> None:
    parser = argument_parser("embed", "Serve a sentence-transformers model over the OpenAI embeddings API.")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    parser.add_argument("--max-batch", type=int, default=256, help="texts merged from concurrent requests")
    parser.add_argument("--offload-strategy", choices=("auto", "arena", "in-place"), default="auto")
    parser.add_argument("--models-dir", type=Path, default=None, help="model store (default: the appliance's)")
    ns = parser.parse_args()
    options = worker_options("embed", ns)
    configure_logging()
    store_dir = ns.models_dir or store.models_dir(os.environ)
    backend = EmbedBackend(options.model_path, options.device, ns.offload_strategy, ns.batch_size, store_dir)
    run_worker(options, backend, lambda app, worker: add_routes(app, worker, backend, ns.max_batch), os.environ)


if __name__ == "__main__":
    main()
