"""Command line of the vLLM stand-in: ``vllm serve MODEL [flags]`` as in contracts.md §1.1.

Owns: the argparse parser, flag validation that real vLLM does before loading (exit 2 for an
unknown flag or a bad value, like argparse; exit 1 for a bad combination, like
``validate_parsed_serve_args``), and turning the namespace into a frozen ``ServeConfig``.
Must not: read the environment beyond what vLLM itself reads (``VLLM_API_KEY``), or start anything.
Flags whose effect cannot be observed without a GPU (``--dtype``, ``--enforce-eager``...) are
accepted and validated but change nothing; flags the stand-in does not know are rejected, so an
adapter that passes a misspelt or removed flag (``--disable-log-requests``) fails loudly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass

QUANTIZATIONS = (
    "aqlm",
    "awq",
    "awq_marlin",
    "bitblas",
    "bitsandbytes",
    "compressed-tensors",
    "deepspeedfp",
    "experts_int8",
    "fbgemm_fp8",
    "fp8",
    "gguf",
    "gptq",
    "gptq_bitblas",
    "gptq_marlin",
    "gptq_marlin_24",
    "hqq",
    "inc",
    "ipex",
    "marlin",
    "modelopt",
    "modelopt_fp4",
    "moe_wna16",
    "mxfp4",
    "petit_nvfp4",
    "ptpc_fp8",
    "qqq",
    "quark",
    "rtn",
    "torchao",
    "tpu_int8",
    "auto-round",
)
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
KV_CACHE_DTYPES = ("auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc", "fp8_ds_mla")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
DEFAULT_MAX_MODEL_LEN = 4096


@dataclass(frozen=True)
class ServeConfig:
    model: str
    served_model_names: tuple[str, ...]
    host: str | None
    port: int
    uds: str | None
    api_keys: tuple[str, ...]
    gpu_memory_utilization: float
    max_model_len: int
    max_num_seqs: int
    enable_sleep_mode: bool
    enable_prefix_caching: bool
    enable_request_id_headers: bool
    enable_server_load_tracking: bool
    disable_fastapi_docs: bool
    kv_transfer_config: dict[str, object] | None
    disable_log_stats: bool
    tensor_parallel_size: int


def _json_object(text: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"invalid JSON {text!r}: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _max_model_len(text: str) -> int | None:
    # vLLM accepts "auto" and human-readable sizes: 1k = 1000, 1K = 1024, likewise m/M.
    if text == "auto" or text == "-1":
        return None
    factors = {"k": 1000, "K": 1024, "m": 1000**2, "M": 1024**2}
    try:
        if text[-1:] in factors:
            return int(float(text[:-1]) * factors[text[-1]])
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid max model length {text!r}") from None


def _utilization(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm", description="vLLM CLI (stand-in)")
    sub = parser.add_subparsers(dest="subcommand", required=True)
    serve = sub.add_parser("serve", prog="vllm serve", help="Start the vLLM OpenAI Compatible API server.")
    bool_flag = argparse.BooleanOptionalAction
    serve.add_argument("model_tag", nargs="?", default=None, help="The model tag to serve")
    serve.add_argument("--model", default=None)
    # Frontend (cli_args.py FrontendArgs)
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--uds", default=None)
    serve.add_argument("--api-key", nargs="+", default=None)
    serve.add_argument("--served-model-name", nargs="+", default=None)
    serve.add_argument("--root-path", default=None)
    serve.add_argument("--uvicorn-log-level", choices=LOG_LEVELS, default="info")
    serve.add_argument("--disable-uvicorn-access-log", action=bool_flag, default=False)
    serve.add_argument("--disable-access-log-for-endpoints", default=None)
    serve.add_argument("--disable-fastapi-docs", action=bool_flag, default=False)
    serve.add_argument("--enable-request-id-headers", action=bool_flag, default=False)
    serve.add_argument("--enable-auto-tool-choice", action=bool_flag, default=False)
    serve.add_argument("--tool-call-parser", default=None)
    serve.add_argument("--chat-template", default=None)
    serve.add_argument("--max-log-len", type=int, default=None)
    serve.add_argument("--enable-prompt-tokens-details", action=bool_flag, default=False)
    serve.add_argument("--enable-server-load-tracking", action=bool_flag, default=False)
    serve.add_argument("--api-server-count", type=int, default=1)
    serve.add_argument("--enable-log-requests", action=bool_flag, default=False)
    serve.add_argument("--enable-log-outputs", action=bool_flag, default=False)
    serve.add_argument("--disable-log-stats", action="store_true", default=False)
    # Engine (arg_utils.py EngineArgs)
    serve.add_argument("--gpu-memory-utilization", type=_utilization, default=0.9)
    serve.add_argument("--max-model-len", type=_max_model_len, default=None)
    serve.add_argument("--enable-sleep-mode", action=bool_flag, default=False)
    serve.add_argument("--kv-transfer-config", type=_json_object, default=None)
    serve.add_argument("--kv-offloading-backend", choices=("native", "lmcache"), default=None)
    serve.add_argument("--kv-offloading-size", type=float, default=None)
    serve.add_argument("--quantization", "-q", choices=QUANTIZATIONS, default=None)
    serve.add_argument("--dtype", choices=DTYPES, default="auto")
    serve.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default="auto")
    serve.add_argument("--enforce-eager", action=bool_flag, default=False)
    serve.add_argument("--enable-prefix-caching", action=bool_flag, default=None)
    serve.add_argument("--max-num-seqs", type=int, default=256)
    serve.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    serve.add_argument("--trust-remote-code", action=bool_flag, default=False)
    serve.add_argument("--generation-config", default="auto")
    serve.add_argument("--seed", type=int, default=None)
    return parser


def parse(argv: list[str]) -> ServeConfig:
    args = build_parser().parse_args(argv)
    model = args.model_tag or args.model
    if model is None:
        print("Error: a model must be given: vllm serve MODEL", file=sys.stderr)
        raise SystemExit(2)
    # validate_parsed_serve_args: combinations checked before the engine starts (TypeError, exit 1).
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        print("TypeError: Error: --enable-auto-tool-choice requires --tool-call-parser", file=sys.stderr)
        raise SystemExit(1)
    if args.enable_log_outputs and not args.enable_log_requests:
        print("TypeError: Error: --enable-log-outputs requires --enable-log-requests", file=sys.stderr)
        raise SystemExit(1)
    if args.max_num_seqs < 1 or args.tensor_parallel_size < 1:
        print("ValueError: --max-num-seqs and --tensor-parallel-size must be >= 1", file=sys.stderr)
        raise SystemExit(1)
    keys = tuple(args.api_key) if args.api_key else ()
    if not keys and os.environ.get("VLLM_API_KEY"):
        keys = (os.environ["VLLM_API_KEY"],)
    return ServeConfig(
        model=model,
        served_model_names=tuple(args.served_model_name) if args.served_model_name else (model,),
        host=args.host,
        port=args.port,
        uds=args.uds,
        api_keys=keys,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=args.max_model_len or DEFAULT_MAX_MODEL_LEN,
        max_num_seqs=args.max_num_seqs,
        enable_sleep_mode=args.enable_sleep_mode,
        # V1 turns prefix caching on by default.
        enable_prefix_caching=args.enable_prefix_caching is not False,
        enable_request_id_headers=args.enable_request_id_headers,
        enable_server_load_tracking=args.enable_server_load_tracking,
        disable_fastapi_docs=args.disable_fastapi_docs,
        kv_transfer_config=args.kv_transfer_config,
        disable_log_stats=args.disable_log_stats,
        tensor_parallel_size=args.tensor_parallel_size,
    )
