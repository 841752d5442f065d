"""Request parsing, deterministic "generation" and response shapes of the vLLM stand-in.

Owns: the whitespace tokenizer and its vocabulary, validation of chat/completion request bodies
(raising ``ApiError`` with vLLM's status and error type), the deterministic output plan (each token
is a word of the prompt, cycled; a completion's next word is a function of everything it has read,
so a prompt extended by the text already produced goes on as the whole run would have), and the
exact JSON bytes of responses and SSE chunks (§1.3).
Must not: do I/O, sleep, or know about sleep mode and metrics.
"""

from __future__ import annotations

import json
import time
import uuid
import zlib
from dataclasses import dataclass, field

FILLER = ("lorem", "ipsum", "dolor", "sit", "amet")
DEFAULT_MAX_TOKENS = 16
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class ApiError(Exception):
    """An error vLLM answers with its envelope ``{"error":{message,type,param,code}}``."""

    def __init__(self, status: int, err_type: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.err_type = err_type
        self.message = message
        self.param = param

    def body(self) -> bytes:
        return error_body(self.status, self.err_type, self.message, self.param)


def error_body(status: int, err_type: str, message: str, param: str | None = None) -> bytes:
    return _dumps({"error": {"message": message, "type": err_type, "param": param, "code": status}}).encode()


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, "BadRequestError", message, param)


class Vocabulary:
    """Whitespace tokenizer with stable ids (crc32 of the word), reversible for seen words."""

    def __init__(self) -> None:
        self._words: dict[int, str] = {}

    def encode(self, text: str) -> list[int]:
        ids = []
        for word in text.split():
            token = zlib.crc32(word.encode()) & 0x7FFFFFFF
            self._words.setdefault(token, word)
            ids.append(token)
        return ids

    def decode(self, ids: list[int]) -> str:
        try:
            return " ".join(self._words[i] for i in ids)
        except KeyError as exc:
            raise bad_request(f"Token id {exc.args[0]} is out of vocabulary", "tokens") from None

    def decode_lenient(self, ids: list[int]) -> str:
        return " ".join(self._words.get(i, f"<{i}>") for i in ids)


# --- validation helpers -------------------------------------------------------------------------


def _type_error(name: str, expected: str, value: object) -> ApiError:
    return bad_request(f"1 validation error: {name}: Input should be {expected}, got {value!r}", name)


def _opt_int(body: dict[str, object], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise _type_error(name, "a valid integer", value)
    return int(value)


def _opt_bool(body: dict[str, object], name: str) -> bool | None:
    value = body.get(name)
    if value is None or isinstance(value, bool):
        return value
    raise _type_error(name, "a valid boolean", value)


def _opt_number(body: dict[str, object], name: str) -> None:
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise _type_error(name, "a valid number", value)


def _stop_words(body: dict[str, object]) -> frozenset[str]:
    stop = body.get("stop")
    if stop is None:
        return frozenset()
    if isinstance(stop, str):
        return frozenset([stop.strip()])
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return frozenset(s.strip() for s in stop)
    raise _type_error("stop", "a string or a list of strings", stop)


def _message_text(content: object, index: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise _type_error(f"messages.{index}.content", "a list of content parts", part)
            if part["type"] == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise _type_error(f"messages.{index}.content.text", "a valid string", text)
                parts.append(text)
        return " ".join(parts)
    raise _type_error(f"messages.{index}.content", "a string or a list of content parts", content)


# --- requests -----------------------------------------------------------------------------------


@dataclass
class GenerationRequest:
    kind: str  # "chat" or "completion"
    model: str
    prompt_tokens: int
    prompt_words: list[list[str]]  # one word list per prompt (completions may batch prompts)
    max_tokens: int
    n: int
    stream: bool
    include_usage: bool
    continuous_usage: bool
    stop: frozenset[str]
    echo_texts: list[str] = field(default_factory=list)
    offset: int = 0  # continue_final_message: the output continues after this many tokens

    @property
    def continues_text(self) -> bool:
        """The output's first word follows text (a completion's prompt, a continued message), so it
        carries its space, as a real tokenizer's first token after a word does (" Paris")."""
        return self.kind == "completion" or self.offset > 0


def parse_json_body(raw: bytes) -> dict[str, object]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_request(f"JSON decode error: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request(f"Input should be a valid dictionary or object, got {type(body).__name__}")
    return body


def _common(
    body: dict[str, object], served: tuple[str, ...], max_tokens_names: tuple[str, ...]
) -> tuple[str, int, int, bool, bool, bool, frozenset[str]]:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _type_error("model", "a valid string", model)
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        _opt_number(body, name)
    _opt_int(body, "seed")
    limits = [(name, _opt_int(body, name)) for name in max_tokens_names]
    for name, value in limits:
        if value is not None and value < 1:
            raise bad_request(f"{name} must be at least 1, got {value}.", name)
    # Chat prefers max_completion_tokens over the deprecated max_tokens.
    max_tokens = next((value for _, value in limits if value is not None), None)
    n = _opt_int(body, "n") or 1
    if n < 1:
        raise bad_request(f"n must be at least 1, got {n}.", "n")
    stream = bool(_opt_bool(body, "stream"))
    options = body.get("stream_options")
    include_usage = continuous = False
    if options is not None:
        if not isinstance(options, dict):
            raise _type_error("stream_options", "a valid dictionary", options)
        if not stream:
            raise bad_request("Stream options can only be defined when `stream=True`.", "stream_options")
        include_usage = bool(_opt_bool(options, "include_usage"))
        continuous = bool(_opt_bool(options, "continuous_usage_stats"))
    stop = _stop_words(body)
    # Only after the body validates does vLLM look the model up (serving_engine._check_model).
    if model is None:
        model = served[0]
    elif model not in served:
        raise ApiError(404, "NotFoundError", f"The model `{model}` does not exist.", "model")
    return model, max_tokens or DEFAULT_MAX_TOKENS, n, stream, include_usage, continuous, stop


def parse_chat(body: dict[str, object], served: tuple[str, ...]) -> GenerationRequest:
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise _type_error("messages", "a valid list", messages)
    texts, roles = [], []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _type_error(f"messages.{i}", "a message object with a string role", message)
        texts.append(_message_text(message.get("content"), i))
        roles.append(message["role"])
    # ChatCompletionRequest.check_generation_prompt (a "before" validator on the raw body): only an
    # explicit add_generation_prompt=true conflicts; its default (true) is ignored when continuing.
    continuing = bool(_opt_bool(body, "continue_final_message"))
    if continuing and _opt_bool(body, "add_generation_prompt"):
        raise bad_request("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
    model, max_tokens, n, stream, usage, continuous, stop = _common(
        body, served, ("max_completion_tokens", "max_tokens")
    )
    prompt_tokens = sum(len(t.split()) for t in texts)
    offset = 0
    if continuing and len(texts) > 1 and roles[-1] == "assistant":
        # The model continues its own open message: the words it would have produced next.
        offset = len(texts[-1].split())
        texts, roles = texts[:-1], roles[:-1]
        while len(texts) > 1 and roles[-1] == "assistant":
            texts, roles = texts[:-1], roles[:-1]
    words = (texts[-1].split() if texts else []) or " ".join(texts).split()
    return GenerationRequest(
        "chat", model, prompt_tokens, [words], max_tokens, n, stream, usage, continuous, stop, offset=offset
    )


def parse_completion(body: dict[str, object], served: tuple[str, ...], vocab: Vocabulary) -> GenerationRequest:
    prompt = body.get("prompt")
    prompts: list[str]
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = [str(p) for p in prompt]
    elif isinstance(prompt, list) and prompt and all(type(p) is int for p in prompt):
        prompts = [vocab.decode_lenient([int(t) for t in prompt])]
    elif (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(p, list) and all(type(t) is int for t in p) for p in prompt)
    ):
        prompts = [vocab.decode_lenient(list(p)) for p in prompt if isinstance(p, list)]
    else:
        raise _type_error("prompt", "a string, a list of strings or a list of token ids", prompt)
    echo = bool(_opt_bool(body, "echo"))
    model, max_tokens, n, stream, usage, continuous, stop = _common(body, served, ("max_tokens",))
    prompt_tokens = sum(len(p.split()) for p in prompts)
    return GenerationRequest(
        "completion",
        model,
        prompt_tokens,
        [p.split() for p in prompts],
        max_tokens,
        n,
        stream,
        usage,
        continuous,
        stop,
        echo_texts=prompts if echo else [],
    )


def check_context(req: GenerationRequest, max_model_len: int) -> None:
    requested = req.prompt_tokens + req.max_tokens
    if requested > max_model_len:
        raise bad_request(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{requested} tokens ({req.prompt_tokens} in the messages, {req.max_tokens} in the completion). "
            "Please reduce the length of the messages or completion."
        )


# --- output plan --------------------------------------------------------------------------------


@dataclass
class Sequence:
    index: int
    tokens: list[str]  # the tokens this sequence will emit, in order
    finish_reason: str  # "length" or "stop" if it runs to the end
    stop_reason: str | None


def next_word(context: list[str]) -> str:
    """A completion's next word, from everything read so far: the word after the first occurrence of
    the last one (back to the first word when that occurrence is the last). For a prompt of distinct
    words this cycles the prompt; and since it reads only the context, a prompt that already holds
    part of the output continues exactly as the uninterrupted run."""
    first = context.index(context[-1])
    return context[first + 1] if first + 1 < len(context) else context[0]


def plan(req: GenerationRequest) -> list[Sequence]:
    """The deterministic output: token i is word i of the prompt (cycled); a stop word ends it.
    A chat continuing its final assistant message (`continue_final_message`) goes on from where that
    message ends, and a completion's words follow from its whole context (`next_word`), so an aborted
    stream continued either way yields what it would have yielded whole."""
    seqs = []
    for p, words in enumerate(req.prompt_words):
        source = words or list(FILLER)
        context = list(source)
        tokens: list[str] = []
        finish, stop_reason = "length", None
        for i in range(req.max_tokens):
            if req.kind == "completion":
                word = next_word(context)
                context.append(word)
            else:
                word = source[(req.offset + i) % len(source)]
            if word in req.stop:
                finish, stop_reason = "stop", word
                break
            tokens.append(word)
        for k in range(req.n):
            seqs.append(Sequence(p * req.n + k, tokens, finish, stop_reason))
    return seqs


def piece(tokens: list[str], i: int, continuing: bool = False) -> str:
    """Text of token ``i`` as streamed: words joined by single spaces (a continued message already
    has words before the first token, so that one gets its space too)."""
    return tokens[i] if i == 0 and not continuing else " " + tokens[i]


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict[str, object]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
    }


def full_response(req: GenerationRequest, seqs: list[Sequence], emitted: int, aborted: bool) -> bytes:
    """Non-streaming body; ``emitted`` tokens of each sequence were produced before any abort."""
    created = int(time.time())
    choices: list[dict[str, object]] = []
    completion_tokens = 0
    for s in seqs:
        count = min(emitted, len(s.tokens))
        completion_tokens += count
        text = (" " if req.continues_text and count else "") + " ".join(s.tokens[:count])
        finish = "abort" if aborted and count < len(s.tokens) else s.finish_reason
        stop_reason = s.stop_reason if finish == "stop" else None
        if req.kind == "chat":
            choices.append(
                {
                    "index": s.index,
                    "message": {
                        "role": "assistant",
                        "content": text,
                        "refusal": None,
                        "annotations": None,
                        "audio": None,
                        "function_call": None,
                        "tool_calls": [],
                        "reasoning_content": None,
                    },
                    "logprobs": None,
                    "finish_reason": finish,
                    "stop_reason": stop_reason,
                }
            )
        else:
            if req.echo_texts:
                text = req.echo_texts[s.index // req.n] + text
            choices.append(
                {
                    "index": s.index,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": finish,
                    "stop_reason": stop_reason,
                    "prompt_logprobs": None,
                }
            )
    body: dict[str, object] = {
        "id": ("chatcmpl-" if req.kind == "chat" else "cmpl-") + uuid.uuid4().hex,
        "object": "chat.completion" if req.kind == "chat" else "text_completion",
        "created": created,
        "model": req.model,
        "choices": choices,
        "usage": usage_dict(req.prompt_tokens, completion_tokens),
    }
    if req.kind == "chat":
        body.update(
            {
                "service_tier": None,
                "system_fingerprint": None,
                "prompt_logprobs": None,
                "kv_transfer_params": None,
            }
        )
    return _dumps(body).encode()


class ChunkWriter:
    """Builds the SSE events of one streaming request as bytes (``data: {json}\\n\\n``)."""

    def __init__(self, req: GenerationRequest) -> None:
        self.req = req
        chat = req.kind == "chat"
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        obj = "chat.completion.chunk" if chat else "text_completion"
        self._head = (
            f'data: {{"id":"{rid}","object":"{obj}","created":{int(time.time())},'
            f'"model":{_dumps(req.model)},"choices":['
        )
        self.completion_tokens = 0

    def _usage(self) -> str:
        if not self.req.continuous_usage:
            return "]}\n\n"
        return "]," + '"usage":' + _dumps(usage_dict(self.req.prompt_tokens, self.completion_tokens)) + "}\n\n"

    def role(self, index: int) -> str:
        return (
            self._head + f'{{"index":{index},"delta":{{"role":"assistant","content":""}},'
            '"logprobs":null,"finish_reason":null}' + self._usage()
        )

    def token(self, index: int, text: str, finish: str | None = None, stop_reason: str | None = None) -> str:
        if finish is None:
            tail = '"finish_reason":null'
        else:
            tail = f'"finish_reason":"{finish}","stop_reason":{_dumps(stop_reason)}'
        if self.req.kind == "chat":
            return (
                self._head
                + f'{{"index":{index},"delta":{{"content":{_dumps(text)}}},"logprobs":null,'
                + tail
                + "}"
                + self._usage()
            )
        if finish is None:
            tail += ',"stop_reason":null'
        return self._head + f'{{"index":{index},"text":{_dumps(text)},"logprobs":null,' + tail + "}" + self._usage()

    def final_usage(self) -> str:
        usage = _dumps(usage_dict(self.req.prompt_tokens, self.completion_tokens))
        return self._head + '],"usage":' + usage + "}\n\n"

    @staticmethod
    def error(err: ApiError) -> str:
        return "data: " + err.body().decode() + "\n\n"


DONE = "data: [DONE]\n\n"
