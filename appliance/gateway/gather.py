"""One whole answer built from an engine stream, so that a non-streamed chat or completion can be preempted.

With `scheduler.preemption` on, a non-streamed chat or completion the continuation can reproduce
(`resume.can_resume(..., whole=True)`) is relayed as a resumable stream into `Gathered` instead of
the client's connection; once the stream (stitched over any preemptions) ends, `whole_answer` turns
its chunks into the `chat.completion` (or `text_completion`) object the engine would have returned
(contracts.md 1.3): the content and any reasoning text joined, the last finish and stop reasons, the
per-token logprobs of a chat concatenated, the usage as the client counts it. An error the engine reported, before or
during the stream, is answered as that error.

It must not decide what is resumable (`resume` does) nor talk to engines.
"""

from __future__ import annotations

import json
from typing import Any

REASONING_KEYS = ("reasoning_content", "reasoning")  # older and newer vLLM reasoning parsers


class Gathered:
    """A `StreamSink` that keeps what a relay would have sent the client."""

    __slots__ = ("events", "reply", "started")

    def __init__(self) -> None:
        self.started = False
        self.events = bytearray()
        self.reply: tuple[int, bytes, bytes] | None = None  # the engine answered without a stream

    async def respond(self, status: int, body: bytes, content_type: bytes = b"application/json",
                      extra: list[tuple[bytes, bytes]] | None = None) -> None:
        self.started = True
        self.reply = (status, body, content_type)

    async def start_sse(self) -> None:
        self.started = True

    async def write(self, chunk: bytes) -> None:
        self.events += chunk

    async def end(self, chunk: bytes = b"") -> None:
        self.events += chunk

    def delivered(self) -> None:
        return None

    def answer(self, status: int) -> tuple[int, bytes, bytes]:
        """What the client gets: the engine's own reply, else the answer built from the stream."""
        if self.reply is not None:
            return self.reply
        code, body = whole_answer(bytes(self.events), status)
        return code, json.dumps(body, separators=(",", ":")).encode(), b"application/json"


def whole_answer(events: bytes, status: int = 200) -> tuple[int, dict[str, Any]]:
    """The `chat.completion` or `text_completion` (or the error) that the SSE `events` of one
    stitched stream amount to."""
    chunks: list[dict[str, Any]] = []
    for event in events.split(b"\n\n"):
        line = event.strip()
        if not line.startswith(b"data: {"):
            continue  # comments, [DONE]
        parsed = json.loads(line[6:])
        if isinstance(parsed, dict) and "error" in parsed and "choices" not in parsed:
            error = parsed["error"]
            code = error.get("code") if isinstance(error, dict) else None
            return (code if isinstance(code, int) and 400 <= code < 600 else (status if status >= 400 else 502)), parsed
        if isinstance(parsed, dict):
            chunks.append(parsed)
    if not chunks:
        return 502, {"error": {"message": "the engine's stream ended without an answer", "type": "server_error",
                               "param": None, "code": 502}}
    first = chunks[0]
    if first.get("object") == "text_completion":
        return 200, _text_completion(chunks)
    content: list[str] = []
    reasoning: dict[str, list[str]] = {}
    logprobs: list[Any] | None = None
    finish: Any = None
    stop: Any = None
    usage: Any = None
    for chunk in chunks:
        if chunk.get("usage") is not None and not chunk.get("choices"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                content.append(delta["content"])
            for key in REASONING_KEYS:
                if delta.get(key):
                    reasoning.setdefault(key, []).append(delta[key])
            lp = choice.get("logprobs")
            if isinstance(lp, dict) and isinstance(lp.get("content"), list):
                logprobs = (logprobs or []) + lp["content"]
            if choice.get("finish_reason") is not None:
                finish, stop = choice["finish_reason"], choice.get("stop_reason")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(content)}
    message.update({key: "".join(parts) for key, parts in reasoning.items()})
    message["tool_calls"] = []
    answer: dict[str, Any] = {
        "id": first.get("id"), "object": "chat.completion", "created": first.get("created"),
        "model": first.get("model"),
        "choices": [{"index": 0, "message": message,
                     "logprobs": None if logprobs is None else {"content": logprobs},
                     "finish_reason": finish, "stop_reason": stop}],
    }
    if first.get("system_fingerprint") is not None:
        answer["system_fingerprint"] = first["system_fingerprint"]
    if usage is not None:
        answer["usage"] = usage
    return 200, answer


def _text_completion(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The `text_completion` of one stitched completions stream (one choice: `can_resume` refuses `n`
    > 1, `echo` and `logprobs`)."""
    text: list[str] = []
    finish: Any = None
    stop: Any = None
    usage: Any = None
    for chunk in chunks:
        if chunk.get("usage") is not None and not chunk.get("choices"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("text"):
                text.append(choice["text"])
            if choice.get("finish_reason") is not None:
                finish, stop = choice["finish_reason"], choice.get("stop_reason")
    first = chunks[0]
    answer: dict[str, Any] = {
        "id": first.get("id"), "object": "text_completion", "created": first.get("created"),
        "model": first.get("model"),
        "choices": [{"index": 0, "text": "".join(text), "logprobs": None, "finish_reason": finish,
                     "stop_reason": stop, "prompt_logprobs": None}],
    }
    if usage is not None:
        answer["usage"] = usage
    return answer
