"""`python -m services.stt`: the speech-to-text worker's command line (faster-whisper or pocketsphinx)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from appliance.transcription import MAX_UPLOAD_BYTES
from services import store
from services.protocol import argument_parser, configure_logging, run_worker, worker_options
from services.stt.backend import SttBackend, build_engine
from services.stt.routes import add_routes


def _positive(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be positive; got {value!r}")
    return number


def main() -> None:
    parser = argument_parser(
        "stt",
        "Serve speech-to-text over OpenAI's audio API. --model-path: whisper:<CTranslate2 dir or pulled name>, "
        "pocketsphinx:en-us (the model its package ships), or a CTranslate2 Whisper directory.",
    )
    parser.add_argument("--models-dir", type=Path, default=None,
                        help="where pulled Whisper models are looked up by name (default: the model store)")
    parser.add_argument("--max-audio-s", type=_positive, default=1800.0,
                        help="longest audio accepted, in seconds (longer is a 400 on 'file')")
    parser.add_argument("--max-upload-mb", type=_positive, default=MAX_UPLOAD_BYTES / 2**20,
                        help="largest upload accepted, in MiB (OpenAI's limit: 25)")
    parser.add_argument("--beam-size", type=int, default=5, help="Whisper's beam width")
    parser.add_argument("--fallback", choices=("pocketsphinx", "none"), default="pocketsphinx",
                        help="engine to use when the chosen one cannot load (English only)")
    ns = parser.parse_args()
    options = worker_options("stt", ns)
    configure_logging()
    try:
        engine = build_engine(options.model_path, ns.models_dir or store.models_dir(os.environ), ns.beam_size)
    except ValueError as exc:
        print(f"services.stt: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    backend = SttBackend(engine, options.device, fallback=ns.fallback == "pocketsphinx")
    max_upload = int(ns.max_upload_mb * 2**20)
    run_worker(options, backend, lambda app, worker: add_routes(app, worker, backend, ns.max_audio_s, max_upload),
               os.environ)  # fmt: skip


if __name__ == "__main__":
    main()
