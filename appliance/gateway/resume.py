"""Stream preemption on the gateway side: one client stream stitched from several engine streams.

When the scheduler preempts a text stream (`scheduler.preemption`), the engine connection is closed
(vLLM aborts the request), the request waits first in its model's queue, and once the model is back
the stream continues with a continuation request, with `max_tokens` less the tokens already sent:
- a chat: the original messages plus an assistant message holding the text already sent, with vLLM's
  `continue_final_message` (and `add_generation_prompt` off);
- a completion: the prompt followed by the text already sent, as the new prompt (the completion's
  text is the exact continuation of its prompt, so prompt + text is what the engine had read).
The client sees one stream: the continuation's chunks get the first stream's `id` and `created`, a
chat continuation's role-only opening chunk is dropped, and the usage counts the re-prefilled text
as completion, not prompt.

A non-streamed request is served the same way when it may be preempted: the gateway asks the engine
for a stream and `gather` builds the one answer the client asked for from it.

Only streams the continuation can reproduce are preemptible (`can_resume`): one choice, no tools, no
structured output, no logit processors whose state would restart; for a completion, a prompt that
is one string, without `echo`, `suffix` or `logprobs` (their offsets would restart). The tokens already sent
come from the engine's own counts (`continuous_usage_stats`, requested for every segment and shown
to the client only if it asked), so `max_tokens` and usage after a preemption are exact; an engine
without per-chunk usage falls back to counting content-bearing chunks.

It must not decide when to preempt (the scheduler does) nor hold the lease (the caller does).
"""

from __future__ import annotations

import json
from typing import Any

from ..residency import Lease, LeaseError, Preempted
from .errors import EngineUnreachable, UpstreamFailed, from_lease_error
from .exchange import KeepAlive, StreamSink
from .proxy import DONE, StreamMeter, Upstream, _as_error_event, engine_request, upstream
from .upstream import ResponseBroken, UpstreamPools

CHAT_ROUTE = "/v1/chat/completions"
COMPLETIONS_ROUTE = "/v1/completions"
_NOT_RESUMABLE = ("tools", "functions", "guided_json", "guided_regex", "guided_choice", "guided_grammar",
                  "structured_outputs", "logits_processors", "prompt_logprobs", "echo")


def can_resume(route: str, body: dict[str, Any], *, whole: bool = False) -> bool:
    """Whether a continuation request reproduces what the rest of this stream would have been.

    `whole`: the client asked for one answer, not a stream (`gather` then builds it from a
    resumable stream); its body must not carry `stream_options`, which the engine refuses
    without `stream` and the gateway would otherwise hide.
    """
    if route not in (CHAT_ROUTE, COMPLETIONS_ROUTE):
        return False
    if whole:
        if body.get("stream") not in (None, False) or body.get("stream_options") is not None:
            return False
    elif body.get("stream") is not True:
        return False
    if body.get("n") not in (None, 1) or body.get("best_of") not in (None, 1):
        return False
    if any(body.get(k) not in (None, False, [], {}) for k in _NOT_RESUMABLE):
        return False
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return False
    if route == COMPLETIONS_ROUTE:
        return isinstance(body.get("prompt"), str) and all(body.get(k) is None for k in ("suffix", "logprobs"))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return False
    if body.get("continue_final_message") is True:  # the client prefilled: we append to its message
        return messages[-1].get("role") == "assistant" and isinstance(messages[-1].get("content"), str)
    return True


class StreamStitch:
    """What the client has been sent so far, and how to continue it after a preemption.

    Every segment is asked for `stream_options.continuous_usage_stats` (vLLM and the text worker
    put the counts so far in each chunk), so the tokens sent before a preemption and the original
    prompt's length are known exactly; the per-chunk usage, and the final usage chunk, reach the
    client only if it asked for them. An engine that reports no usage per chunk falls back to
    counting content-bearing chunks.
    """

    __slots__ = ("body", "created", "finished", "id", "prompt_tokens", "route", "seg_chunks", "seg_tokens", "segment",
                 "sent_before", "text", "usage", "want_continuous", "want_usage")

    def __init__(self, body: dict[str, Any], route: str = CHAT_ROUTE) -> None:
        self.body = body
        self.route = route
        options = body.get("stream_options")
        options = options if isinstance(options, dict) else {}
        self.want_usage = options.get("include_usage") is True
        self.want_continuous = self.want_usage and options.get("continuous_usage_stats") is True
        self.text: list[str] = []
        self.sent_before = 0  # tokens sent in the segments before the current one
        self.seg_tokens: int | None = None  # the engine's count of tokens in this segment (last chunk sent)
        self.seg_chunks = 0  # content-bearing chunks sent in this segment (the fallback count)
        self.prompt_tokens: int | None = None  # the original prompt, from the first segment's usage
        self.usage: tuple[int, int] | None = None  # the final (prompt, completion) as the client counts them
        self.segment = 0
        self.id: str | None = None
        self.created: int | None = None
        self.finished = False  # a finish_reason was sent: nothing left to resume

    @property
    def tokens(self) -> int:
        """Tokens sent to the client so far, over all segments."""
        return self.sent_before + (self.seg_tokens if self.seg_tokens is not None else self.seg_chunks)

    def request(self) -> bytes:
        """The body of the current segment's engine request."""
        return json.dumps(self._upstream(dict(self.body))).encode()

    def _upstream(self, body: dict[str, Any]) -> dict[str, Any]:
        options = body.get("stream_options")
        body["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                  "include_usage": True, "continuous_usage_stats": True}
        return body

    def feed(self, events: bytes) -> bytes:
        """Complete SSE events from the engine -> what the client gets."""
        out: list[bytes] = []
        for event in events.split(b"\n\n"):
            if not event.strip():
                continue
            chunk = _parse(event)
            if chunk is None:
                out.append(event + b"\n\n")
                continue
            if self.segment and self.route == CHAT_ROUTE and self._opening(chunk):
                continue
            self._observe(chunk)
            usage = chunk.get("usage")
            if isinstance(usage, dict):
                if not self._account(chunk, usage):
                    continue
            elif not self.segment:
                out.append(event + b"\n\n")  # nothing to rewrite: the engine's bytes as they came
                continue
            if self.segment:
                chunk["id"], chunk["created"] = self.id, self.created
            out.append(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")
        return b"".join(out)

    def _account(self, chunk: dict[str, Any], usage: dict[str, Any]) -> bool:
        """Note the engine's counts and rewrite them as the client's; False drops the chunk."""
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        if self.segment == 0 and self.prompt_tokens is None:
            self.prompt_tokens = prompt
        self.seg_tokens = completion
        # Without the first engine's count, what the continuation re-prefilled was sent as completion.
        client_prompt = self.prompt_tokens if self.prompt_tokens is not None else prompt - min(self.sent_before, prompt)
        client_completion = self.sent_before + completion
        final = not chunk.get("choices")
        if final:
            self.usage = (client_prompt, client_completion)
            if not self.want_usage:
                return False
        elif not self.want_continuous:
            del chunk["usage"]
            return True
        chunk["usage"] = {**usage, "prompt_tokens": client_prompt, "completion_tokens": client_completion,
                          "total_tokens": client_prompt + client_completion}
        return True

    def _observe(self, chunk: dict[str, Any]) -> None:
        if self.id is None:
            self.id, self.created = chunk.get("id"), chunk.get("created")
        for choice in chunk.get("choices") or ():
            if self.route == COMPLETIONS_ROUTE:
                content = choice.get("text")
            else:
                delta = choice.get("delta") or {}
                content = delta.get("content")
            if content:
                self.text.append(content)
                self.seg_chunks += 1
            if choice.get("finish_reason") is not None:
                self.finished = True

    @staticmethod
    def _opening(chunk: dict[str, Any]) -> bool:
        """The role-only first chunk of a continuation (the client already had one)."""
        choices = chunk.get("choices") or []
        if len(choices) != 1:
            return False
        delta = choices[0].get("delta") or {}
        return bool(delta.get("role")) and not delta.get("content") and choices[0].get("finish_reason") is None

    def continuation(self) -> bytes:
        """The request that continues the stream where the client's copy ends."""
        sent = self.tokens
        self.segment += 1
        self.sent_before, self.seg_tokens, self.seg_chunks = sent, None, 0
        body = dict(self.body)
        text = "".join(self.text)
        if self.route == COMPLETIONS_ROUTE:
            body["prompt"] = str(body["prompt"]) + text
        else:
            messages = [dict(m) if isinstance(m, dict) else m for m in body["messages"]]
            if body.get("continue_final_message") is True:
                messages[-1]["content"] = str(messages[-1]["content"]) + text
            else:
                messages.append({"role": "assistant", "content": text})
            body["messages"] = messages
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        for key in ("max_completion_tokens", "max_tokens"):
            if isinstance(body.get(key), int):
                body[key] = max(1, body[key] - sent)
        if isinstance(body.get("min_tokens"), int):
            body["min_tokens"] = max(0, body["min_tokens"] - sent)
        return json.dumps(self._upstream(body)).encode()


def _parse(event: bytes) -> dict[str, Any] | None:
    """The JSON object of a `data: {...}` event; None for comments, [DONE] and anything else."""
    line = event.strip()
    if not line.startswith(b"data: {"):
        return None
    try:
        parsed = json.loads(line[6:])
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) and "choices" in parsed else None


async def relay_resumable(ex: StreamSink, pools: UpstreamPools, lease: Lease, body: bytes, meter: StreamMeter,
                          stitch: StreamStitch, keepalive: KeepAlive) -> int:
    """Relay a text stream that the scheduler may preempt, resuming it as often as it is preempted;
    `keepalive` sends SSE comments while a preempted stream waits for its model to come back."""
    preemption = lease.preemption
    assert preemption is not None
    while True:
        try:
            preemption.check()
            status = await _relay_segment(ex, upstream(pools, lease), body, lease, meter, stitch)
        except Preempted:
            status = -1
        if status != -1:
            if stitch.usage is not None:  # the usage record counts like the client's
                meter.usage = stitch.usage
            return status
        meter.pending = b""  # an incomplete event from the aborted stream is dropped, never half-sent
        keepalive.start()
        try:
            lease = await preemption.resume()
        except LeaseError as exc:
            raise from_lease_error(exc) from exc
        finally:
            await keepalive.stop()
        body = stitch.continuation()


async def _relay_segment(ex: StreamSink, up: Upstream, body: bytes, lease: Lease, meter: StreamMeter,
                         stitch: StreamStitch) -> int:
    """One engine stream; -1 if it was preempted before it finished. The preemption is detached (the
    scheduler may release the engine) only once the engine let go of the aborted request."""
    preemption = lease.preemption
    assert preemption is not None
    try:
        async with engine_request(up, stitch.route, body, "the stream") as resp:
            preemption.attach(resp.abort)
            if resp.status != 200:
                data = await resp.read()
                if ex.started:
                    await ex.end(_as_error_event(resp.status, data))
                else:
                    await ex.respond(resp.status, data, resp.content_type or b"application/json")
                return resp.status
            await ex.start_sse()
            done = False
            try:
                async for chunk in resp.chunks():
                    out = stitch.feed(meter.feed(chunk))
                    if out:
                        await ex.write(out)
                        if out.endswith(DONE):
                            done = True
                            ex.delivered()
            except ResponseBroken:
                if resp.aborted and not stitch.finished:
                    return -1
                raise
            if resp.aborted and not stitch.finished:
                return -1
            # Aborted after its last token (finish_reason sent): the stream is complete; close it properly.
            await ex.end(meter.pending if done or not resp.aborted else DONE)
            return 200
    except EngineUnreachable as exc:
        if stitch.segment:  # the stream already began: a retry would need a new lease anyway
            raise UpstreamFailed(f"engine {up.engine!r} refused the connection while resuming") from exc
        raise
    finally:
        preemption.detach()
