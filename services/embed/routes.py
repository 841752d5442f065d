"""OpenAI routes of the embedding worker: /v1/embeddings and /v1/models.

Owns input validation (a string, a list of strings, a token list or a list of token lists; 400s name
the field), the input length (an input longer than the model reads is refused naming `input` with the
limit, first by its characters before it is tokenized, unless the request sends the extension
`"truncate": true`, which cuts it to the model's limit), `encoding_format` float or base64
(little-endian float32, as OpenAI sends), `dimensions` (truncate and re-normalise) and usage counts.
Model calls go through the batcher and the model thread.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np
from aiohttp import web

from appliance.fields import CHARS_PER_TOKEN_BOUND, opt_bool, opt_choice, opt_int
from services.embed.backend import EmbedBackend
from services.embed.batcher import Batcher
from services.errors import bad_request
from services.protocol import Worker, check_model, read_json

MAX_INPUTS = 2048


def parse_inputs(body: dict[str, Any]) -> list[str | list[int]]:
    raw = body.get("input")
    if isinstance(raw, str) or (isinstance(raw, list) and raw and all(_is_token(t) for t in raw)):
        raw = [raw]  # one input
    if not isinstance(raw, list) or not raw:
        raise bad_request("input", "'input' must be a string, a list of strings or a list of token lists")
    if len(raw) > MAX_INPUTS:
        raise bad_request("input", f"at most {MAX_INPUTS} inputs per request")
    items: list[str | list[int]] = []
    for i, item in enumerate(raw):
        if (isinstance(item, str) and item) or (isinstance(item, list) and item and all(map(_is_token, item))):
            items.append(item)
        else:
            raise bad_request(f"input[{i}]", f"input[{i}] must be a non-empty string or token list")
    return items


def _input_field(body: dict[str, Any], i: int) -> str:
    raw = body.get("input")
    return f"input[{i}]" if isinstance(raw, list) and raw and not all(_is_token(t) for t in raw) else "input"


def fit_inputs(items: list[str | list[int]], limit: int | None, truncate: bool, body: dict[str, Any]
               ) -> list[str | list[int]]:  # fmt: skip
    """The inputs cut to what the model reads (`truncate`), else the first one too long as a 400;
    a text is judged by its characters first (CHARS_PER_TOKEN_BOUND), before anything is tokenized."""
    if limit is None:
        return items
    chars = limit * CHARS_PER_TOKEN_BOUND
    fitted: list[str | list[int]] = []
    for i, item in enumerate(items):
        size = len(item)
        if size > (chars if isinstance(item, str) else limit):
            if not truncate:
                unit = "characters" if isinstance(item, str) else "tokens"
                raise _too_long(_input_field(body, i), f"{size} {unit}", limit)
            item = item[:chars] if isinstance(item, str) else item[:limit]
        fitted.append(item)
    return fitted


def _too_long(field: str, size: str, limit: int) -> Exception:
    message = (f"'{field}' has {size}: more than this model reads ({limit} tokens); shorten it, or send "
               "\"truncate\": true to embed only its first tokens")  # fmt: skip
    return bad_request(field, message, code="context_length_exceeded")


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _fit_dimensions(vector: np.ndarray, dimensions: int | None) -> np.ndarray:
    if dimensions is None or dimensions == vector.shape[0]:
        return vector
    cut = vector[:dimensions]
    norm = float(np.linalg.norm(cut))
    return cut / norm if norm > 0 else cut


def _encode(vector: np.ndarray, fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


def add_routes(app: web.Application, worker: Worker, backend: EmbedBackend, max_batch: int) -> None:
    model_id = worker.options.model_id

    async def encode(texts: list[str]) -> list[np.ndarray]:
        return list(await worker.run(backend.encode, texts))

    batcher: Batcher[np.ndarray] = Batcher(encode, max_batch)

    def prepare_inputs(
        items: list[str | list[int]], truncate: bool, body: dict[str, Any]
    ) -> tuple[list[str], int]:  # model thread
        limit = backend.max_tokens
        items = fit_inputs(items, limit, truncate, body)
        texts = [backend.detokenize(i) if isinstance(i, list) else i for i in items]
        counts = [len(i) for i in items if isinstance(i, list)]
        text_inputs = [(n, i) for n, i in enumerate(items) if isinstance(i, str)]
        text_counts = backend.token_counts([t for _, t in text_inputs]) if text_inputs else []
        for (n, _), count in zip(text_inputs, text_counts, strict=True):
            if limit is not None and count > limit:
                if not truncate:
                    raise _too_long(_input_field(body, n), f"{count} tokens", limit)
                count = limit  # the model reads its first `limit` tokens
            counts.append(count)
        return texts, sum(counts)

    async def embeddings(request: web.Request) -> web.Response:
        body = await read_json(request)
        check_model(body, worker)
        items = parse_inputs(body)
        fmt = opt_choice(body, "encoding_format", ("float", "base64"), "float")
        dimensions = opt_int(body, "dimensions", None, lo=1)
        truncate = opt_bool(body, "truncate", False)
        async with worker.serving(request):  # /cancel finds it; a cancelled one ends once its batch did
            if dimensions is not None and dimensions > backend.dimension:
                raise bad_request("dimensions", f"this model has {backend.dimension} dimensions; got {dimensions}")
            texts, tokens = await worker.run(prepare_inputs, items, truncate, body)
            vectors = await batcher.embed(texts)
        data = [
            {"object": "embedding", "index": i, "embedding": _encode(_fit_dimensions(v, dimensions), fmt)}
            for i, v in enumerate(vectors)
        ]
        return web.json_response(
            {"object": "list", "data": data, "model": model_id,
             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        )  # fmt: skip

    async def models(_: web.Request) -> web.Response:
        card = {"id": model_id, "object": "model", "created": int(time.time()), "owned_by": "appliance"}
        return web.json_response({"object": "list", "data": [card]})

    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
