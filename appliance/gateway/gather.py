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
from dataclasses import dataclass, field
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
        try:
            parsed = json.loads(line[6:])
        except ValueError:
            continue  # not JSON: the relay passed it on as it came, and a client would skip it too
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
    folded = _fold(chunks, completion=first.get("object") == "text_completion")
    answer: dict[str, Any] = {"id": first.get("id"), "object": "chat.completion", "created": first.get("created"),
                              "model": first.get("model")}
    if folded.completion:  # one choice: `can_resume` refuses n > 1, echo and logprobs
        answer["object"] = "text_completion"
        answer["choices"] = [{"index": 0, "text": "".join(folded.text), "logprobs": None,
                              "finish_reason": folded.finish, "stop_reason": folded.stop, "prompt_logprobs": None}]
    else:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(folded.text)}
        message.update({key: "".join(parts) for key, parts in folded.reasoning.items()})
        message["tool_calls"] = []
        answer["choices"] = [{"index": 0, "message": message,
                              "logprobs": None if folded.logprobs is None else {"content": folded.logprobs},
                              "finish_reason": folded.finish, "stop_reason": folded.stop}]
        if first.get("system_fingerprint") is not None:
            answer["system_fingerprint"] = first["system_fingerprint"]
    if folded.usage is not None:
        answer["usage"] = folded.usage
    return 200, answer


@dataclass(slots=True)
class _Folded:
    """What the chunks of one stream add up to."""

    completion: bool
    text: list[str] = field(default_factory=list)
    reasoning: dict[str, list[str]] = field(default_factory=dict)
    logprobs: list[Any] | None = None
    finish: Any = None
    stop: Any = None
    usage: Any = None


def _fold(chunks: list[dict[str, Any]], completion: bool) -> _Folded:
    """Join the text (a chat's `delta.content`, a completion's `text`), a chat's reasoning and
    logprobs; keep the last finish and stop reasons and the final usage."""
    out = _Folded(completion)
    for chunk in chunks:
        if chunk.get("usage") is not None and not chunk.get("choices"):
            out.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = {} if completion else (choice.get("delta") or {})
            piece = choice.get("text") if completion else delta.get("content")
            if piece:
                out.text.append(piece)
            for key in REASONING_KEYS:
                if delta.get(key):
                    out.reasoning.setdefault(key, []).append(delta[key])
            lp = choice.get("logprobs")
            if not completion and isinstance(lp, dict) and isinstance(lp.get("content"), list):
                out.logprobs = (out.logprobs or []) + lp["content"]
            if choice.get("finish_reason") is not None:
                out.finish, out.stop = choice["finish_reason"], choice.get("stop_reason")
    return out
