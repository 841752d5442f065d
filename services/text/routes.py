"""OpenAI routes of the text worker: /v1/chat/completions, /v1/completions, /v1/models.

Owns request validation (400s that name the field; the fields it cannot honour, such as `tools` or a
`response_format` other than text, are refused rather than ignored; a text too long for the context is
refused from its length before it is tokenized), the response and chunk shapes of contracts.md §1.3
(first chunk carries the role, `stream_options.include_usage` adds a usage chunk with empty choices, the
stream always ends with `data: [DONE]`), and the bridge from the model thread's token callback to the
event loop. Generations run one at a time on the model thread, in arrival order (this worker serves
small models and CPU boxes; vLLM does continuous batching). A client that disconnects (or a `/cancel`)
cancels its generation at the next token, and the request ends only once the model thread has let go
of it. Must not touch the model directly: everything goes through `TextBackend`
on the model thread.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from appliance.fields import check_text_length, opt_bool, opt_int, opt_number, opt_object, refuse_unhonoured
from services.errors import OpenAIError, bad_request
from services.jobs import Cancelled, Job, outlast
from services.protocol import Worker, check_model, read_json
from services.text.backend import Encoded, Sampling, TextBackend
from services.text.streaming import TextAssembler

_ROLES = ("system", "developer", "user", "assistant", "tool")
_MAX_STOPS = 16


@dataclass(frozen=True)
class Outcome:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def parse_sampling(body: dict[str, Any]) -> Sampling:
    refuse_unhonoured(body, "text worker")
    if opt_int(body, "n", 1, lo=1) != 1:
        raise bad_request("n", "only n=1 is supported by this worker")
    if opt_bool(body, "logprobs", False) or body.get("top_logprobs") is not None:
        raise bad_request("logprobs", "logprobs are not supported by this worker")
    max_tokens = opt_int(body, "max_completion_tokens", None, lo=1)
    if max_tokens is None:
        max_tokens = opt_int(body, "max_tokens", None, lo=1)
    stop_raw = body.get("stop")
    if stop_raw is None:
        stop: tuple[str, ...] = ()
    elif isinstance(stop_raw, str):
        stop = (stop_raw,)
    elif isinstance(stop_raw, list) and all(isinstance(s, str) for s in stop_raw) and len(stop_raw) <= _MAX_STOPS:
        stop = tuple(stop_raw)
    else:
        raise bad_request("stop", f"'stop' must be a string or a list of at most {_MAX_STOPS} strings")
    top_k = opt_int(body, "top_k", None, lo=-1)
    return Sampling(
        max_tokens=max_tokens,
        temperature=opt_number(body, "temperature", None, lo=0, hi=2),
        top_p=opt_number(body, "top_p", None, lo=0.0, hi=1.0),
        top_k=None if top_k is None else max(top_k, 0),
        seed=opt_int(body, "seed", None),
        stop=stop,
        ignore_eos=opt_bool(body, "ignore_eos", False),
    )


def parse_stream_usage(body: dict[str, Any]) -> tuple[bool, bool]:
    """`stream_options`: (include_usage, continuous_usage_stats); as in vLLM, the second only
    counts with the first."""
    options = opt_object(body, "stream_options")
    include_usage = opt_bool(options, "include_usage", False)
    return include_usage, include_usage and opt_bool(options, "continuous_usage_stats", False)


def parse_continuation(body: dict[str, Any], messages: list[dict[str, str]]) -> bool:
    """vLLM's `continue_final_message` / `add_generation_prompt`: continue the final assistant
    message instead of opening a new one (how the gateway resumes a preempted stream). Only an
    explicit `add_generation_prompt: true` conflicts, as in vLLM; its default is ignored then."""
    continuing = opt_bool(body, "continue_final_message", False)
    add_prompt = body.get("add_generation_prompt")
    if add_prompt is not None and not isinstance(add_prompt, bool):
        raise bad_request("add_generation_prompt", "'add_generation_prompt' must be a boolean")
    if continuing and add_prompt:
        raise bad_request(
            "continue_final_message", "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
        )
    if continuing and messages[-1]["role"] != "assistant":
        raise bad_request("continue_final_message", "'continue_final_message' needs a final assistant message")
    return continuing


def parse_messages(body: dict[str, Any]) -> list[dict[str, str]]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad_request("messages", "'messages' is required and must be a non-empty list")
    messages: list[dict[str, str]] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or item.get("role") not in _ROLES:
            raise bad_request(f"messages[{i}]", f"messages[{i}] must be an object with a role in {', '.join(_ROLES)}")
        content = item.get("content")
        if content is None:
            content = ""
        if isinstance(content, list):
            parts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise bad_request(f"messages[{i}].content", "this text model accepts only text content parts")
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise bad_request(f"messages[{i}].content", f"messages[{i}].content must be a string or text parts")
        messages.append({"role": item["role"], "content": content})
    return messages


def parse_prompt(body: dict[str, Any]) -> str | list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str) and prompt:
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return prompt
    raise bad_request("prompt", "'prompt' must be a non-empty string or token list (one prompt per request)")


async def generate(
    worker: Worker,
    job: Job,
    backend: TextBackend,
    encoded: Encoded,
    sampling: Sampling,
    emit: Callable[[str, int], Awaitable[None]],
) -> Outcome:
    """Run one generation for `job` on the model thread, handing text deltas to `emit` as they are
    decoded, with the number of tokens generated so far (some may still be held back as text). Each
    token is one unit of `job`'s work: a cancelled job stops at the next one."""
    loop = asyncio.get_running_loop()
    tokens: asyncio.Queue[int | None] = asyncio.Queue()
    cancel = threading.Event()
    assembler = TextAssembler(backend.decode, encoded.prompt_ids, sampling.stop)

    def on_token(token: int) -> None:  # model thread
        loop.call_soon_threadsafe(tokens.put_nowait, token)
        job.step()  # raises Cancelled out of generate() once the job is cancelled

    future = worker.submit_job(job, backend.generate, encoded, sampling, on_token, cancel)

    # Runs after every on_token callback already queued: the executor's result arrives the same way.
    def finished(done: asyncio.Future[str]) -> None:
        tokens.put_nowait(None)
        if not done.cancelled():
            done.exception()  # retrieved here; raised again by `await future` below unless cancelled

    future.add_done_callback(finished)
    try:
        while (token := await tokens.get()) is not None:
            delta = assembler.feed(token)
            if delta:
                await emit(delta, assembler.tokens)
            if assembler.stopped:
                cancel.set()  # generation notices at its next step; the rest of the queue is drained
        reason = await future
        tail = assembler.finish()
        if tail:
            await emit(tail, assembler.tokens)
    except BaseException:
        job.cancel()  # the client is gone (or emit failed): stop, and wait until the model thread has
        await outlast(future)  # let go, so the next request does not queue behind this one
        raise
    return Outcome(assembler.text, "stop" if assembler.stopped else reason, len(encoded.prompt_ids), assembler.tokens)


class _EventStream:
    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response

    @classmethod
    async def open(cls, request: web.Request) -> _EventStream:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        return cls(response)

    async def send(self, payload: dict[str, Any]) -> None:
        await self.response.write(b"data: " + json.dumps(payload).encode() + b"\n\n")

    async def close(self) -> web.StreamResponse:
        await self.response.write(b"data: [DONE]\n\n")
        await self.response.write_eof()
        return self.response


def add_routes(app: web.Application, worker: Worker, backend: TextBackend) -> None:
    model_id = worker.options.model_id

    async def models(_: web.Request) -> web.Response:
        card = {
            "id": model_id,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "appliance",
            "root": worker.options.model_path,
        }
        return web.json_response({"object": "list", "data": [card]})

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        check_model(body, worker)
        messages = parse_messages(body)
        continuing = parse_continuation(body, messages)
        sampling = parse_sampling(body)
        stream = opt_bool(body, "stream", False)
        include_usage, continuous = parse_stream_usage(body)
        async with worker.serving(request) as job:
            check_text_length(sum(len(m["content"]) for m in messages), backend.context, "messages")
            encoded = await worker.run(backend.encode_chat, messages, sampling, continuing)
            return await _respond(request, job, "chat", encoded, sampling, stream, include_usage,
                                  continuous=continuous)

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        check_model(body, worker)
        prompt = parse_prompt(body)
        sampling = parse_sampling(body)
        stream = opt_bool(body, "stream", False)
        include_usage, continuous = parse_stream_usage(body)
        echo = opt_bool(body, "echo", False)
        if body.get("suffix"):
            raise bad_request("suffix", "'suffix' is not supported by this worker")
        async with worker.serving(request) as job:
            check_text_length(len(prompt) if isinstance(prompt, str) else 0, backend.context, "prompt")
            encoded = await worker.run(backend.encode_prompt, prompt, sampling)
            prefix = (prompt if isinstance(prompt, str) else backend.decode(prompt)) if echo else ""
            return await _respond(
                request, job, "completion", encoded, sampling, stream, include_usage, prefix, continuous=continuous
            )

    async def _respond(
        request: web.Request,
        job: Job,
        kind: str,
        encoded: Encoded,
        sampling: Sampling,
        stream: bool,
        include_usage: bool,
        prefix: str = "",
        continuous: bool = False,
    ) -> web.StreamResponse:
        is_chat = kind == "chat"
        rid = ("chatcmpl-" if is_chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        obj = "chat.completion" if is_chat else "text_completion"
        prompt_tokens = len(encoded.prompt_ids)

        def chunk(delta: str | None, finish: str | None, role: bool = False, tokens: int = 0) -> dict[str, Any]:
            if is_chat:
                d: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
                if delta is not None:
                    d["content"] = delta
                choice: dict[str, Any] = {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
            out = {
                "id": rid,
                "object": obj + ".chunk" if is_chat else obj,
                "created": created,
                "model": model_id,
                "choices": [choice],
            }
            if continuous:  # vLLM's continuous_usage_stats: the counts so far in every chunk
                out["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                                "total_tokens": prompt_tokens + tokens}
            return out

        if not stream:
            outcome = await generate(worker, job, backend, encoded, sampling, _ignore)
            if is_chat:
                choice: dict[str, Any] = {
                    "index": 0,
                    "message": {"role": "assistant", "content": outcome.text},
                    "logprobs": None,
                    "finish_reason": outcome.finish_reason,
                }
            else:
                choice = {
                    "index": 0,
                    "text": prefix + outcome.text,
                    "logprobs": None,
                    "finish_reason": outcome.finish_reason,
                }
            return web.json_response(
                {
                    "id": rid,
                    "object": obj,
                    "created": created,
                    "model": model_id,
                    "choices": [choice],
                    "usage": outcome.usage(),
                }
            )

        events = await _EventStream.open(request)
        if is_chat:
            await events.send(chunk(None, None, role=True))
        elif prefix:
            await events.send(chunk(prefix, None))
        try:
            outcome = await generate(
                worker, job, backend, encoded, sampling, lambda d, n: events.send(chunk(d, None, tokens=n))
            )
        except Cancelled:  # cancelled through /cancel: whoever asked is not reading any more
            return events.response
        except OpenAIError as exc:
            await events.send(exc.envelope())
            return await events.close()
        except ConnectionResetError:  # the client went away: generation was cancelled, nothing to send
            return events.response
        except Exception as exc:
            await events.send(OpenAIError(500, f"{type(exc).__name__}: {exc}").envelope())
            return await events.close()
        final = chunk(None, outcome.finish_reason, tokens=outcome.completion_tokens)
        if is_chat:
            final["choices"][0]["delta"] = {}
        await events.send(final)
        if include_usage:
            await events.send(
                {
                    "id": rid,
                    "object": final["object"],
                    "created": created,
                    "model": model_id,
                    "choices": [],
                    "usage": outcome.usage(),
                }
            )
        return await events.close()

    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)


async def _ignore(_: str, __: int) -> None:
    return None
