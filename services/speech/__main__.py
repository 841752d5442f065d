"""`python -m services.speech`: the speech worker's command line (XTTS v2, Piper or espeak-ng)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from services import store
from services.protocol import argument_parser, configure_logging, run_worker, worker_options
from services.speech.backend import SpeechBackend, SpeechOptions, build_engine
from services.speech.routes import add_routes


def _voice_pair(value: str) -> tuple[str, str]:
    name, sep, voice = value.partition("=")
    if not sep or not name or not voice:
        raise argparse.ArgumentTypeError(f"must be NAME=VOICE, e.g. alloy=en_US-joe-medium; got {value!r}")
    return name, voice


def main() -> None:
    parser = argument_parser(
        "speech",
        "Serve speech over the OpenAI audio API. --model-path: piper:<voice>, xtts:<dir or name>, "
        "espeak:<voice>, or a path to a Piper .onnx voice or an XTTS directory.",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="where Piper voices are looked up by name (default: the appliance model store)",
    )
    parser.add_argument(
        "--voices-dir",
        type=Path,
        default=None,
        help="XTTS reference WAVs for cloned voices: <name>.wav or <name>/*.wav (default: $APPLIANCE_STATE_DIR/voices)",
    )
    parser.add_argument(
        "--accept-cpml",
        action="store_true",
        help="the Coqui Public Model License was accepted (required before XTTS is fetched)",
    )
    parser.add_argument(
        "--fallback", choices=("espeak", "none"), default="espeak", help="engine to use when the chosen one cannot load"
    )
    parser.add_argument("--fallback-voice", default="en-us", help="espeak-ng voice for the fallback")
    parser.add_argument("--default-speaker", default="Ana Florence", help="XTTS built-in speaker for other names")
    parser.add_argument("--language", default="en", help="XTTS language when a request names none")
    parser.add_argument("--offload-strategy", choices=("auto", "arena", "in-place"), default="auto")
    parser.add_argument(
        "--voice", type=_voice_pair, action="append", default=[], metavar="NAME=VOICE",
        help="a name clients send (e.g. OpenAI's alloy) and the voice it means (repeatable)",
    )  # fmt: skip
    ns = parser.parse_args()
    options = worker_options("speech", ns)
    configure_logging()
    speech_options = SpeechOptions(
        models_dir=ns.models_dir or store.models_dir(os.environ),
        voices_dir=ns.voices_dir or store.voices_dir(os.environ),
        accept_cpml=ns.accept_cpml,
        fallback=ns.fallback,
        fallback_voice=ns.fallback_voice,
        default_speaker=ns.default_speaker,
        language=ns.language,
        offload_strategy=ns.offload_strategy,
        voice_map=dict(ns.voice),
    )
    try:
        engine = build_engine(options.model_path, options.device, speech_options)
    except ValueError as exc:
        print(f"services.speech: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    backend = SpeechBackend(engine, options.device, speech_options)
    run_worker(options, backend, lambda app, worker: add_routes(app, worker, backend), os.environ)


if __name__ == "__main__":
    main()
