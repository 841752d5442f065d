"""The text worker's model: a transformers causal LM and its tokenizer on one device.

Owns loading (tokenizer + AutoModelForCausalLM in the chosen dtype), residency (through
`ModelResidence`), prompt encoding (chat template, context-length checks) and generation that hands
every new token id to a callback and stops early when asked. Every method runs on the worker's model
thread. Must not know HTTP or the OpenAI shapes (routes do).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.errors import OpenAIError
from services.memory import ResidentWeights

if TYPE_CHECKING:
    import torch

    from services.weights import ModelResidence


@dataclass(frozen=True)
class Sampling:
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    top_k: int | None
    seed: int | None
    stop: tuple[str, ...]
    ignore_eos: bool = False


@dataclass(frozen=True)
class Encoded:
    prompt_ids: tuple[int, ...]
    max_new_tokens: int


@dataclass(frozen=True)
class TextOptions:
    dtype: str = "auto"
    offload: str = "auto"
    default_max_tokens: int = 512


class TextBackend(ResidentWeights):
    def __init__(self, model_path: str, device: str, options: TextOptions) -> None:
        self._model_path = model_path
        self._requested_device = device
        self._options = options
        self._device: torch.device | None = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._residence: ModelResidence | None = None
        self._context = 0

    # --- residency (ModelBackend) ---

    def prepare(self) -> str:
        import transformers

        from services.weights import resolve_device

        transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        self._device = resolve_device(self._requested_device)
        return str(self._device)

    def load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from services.weights import ModelResidence, resolve_dtype

        assert self._device is not None
        tokenizer = AutoTokenizer.from_pretrained(self._model_path)
        model = AutoModelForCausalLM.from_pretrained(
            self._model_path, dtype=resolve_dtype(self._options.dtype, self._device)
        )
        model.eval()  # type: ignore[no-untyped-call]
        model.requires_grad_(False)
        self._residence = ModelResidence([model], self._device, self._options.offload)
        self._model, self._tokenizer = model, tokenizer
        config = model.config
        self._context = int(getattr(config, "max_position_embeddings", 0) or tokenizer.model_max_length)

    def _forget(self) -> None:
        self._model = None
        self._tokenizer = None

    @property
    def context(self) -> int:
        """The context length in tokens (0 until loaded)."""
        return self._context

    # --- inference ---

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=True))

    def encode_chat(self, messages: list[dict[str, str]], sampling: Sampling, continuing: bool = False) -> Encoded:
        """The chat template applied; `continuing` leaves the final assistant message open."""
        if not getattr(self._tokenizer, "chat_template", None):
            raise OpenAIError(400, "this model has no chat template; use /v1/completions", param="messages")
        text = self._tokenizer.apply_chat_template(
            messages, add_generation_prompt=not continuing, continue_final_message=continuing, tokenize=False
        )
        ids = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._fit(ids, sampling, "messages")

    def encode_prompt(self, prompt: str | list[int], sampling: Sampling) -> Encoded:
        if isinstance(prompt, str):
            ids = self._tokenizer(prompt)["input_ids"]
        else:
            vocab = int(self._model.config.vocab_size)
            if any(not 0 <= t < vocab for t in prompt):
                raise OpenAIError(400, f"token ids must be in [0, {vocab})", param="prompt")
            ids = prompt
        return self._fit(ids, sampling, "prompt")

    def _fit(self, ids: Sequence[int], sampling: Sampling, param: str) -> Encoded:
        n = len(ids)
        if n == 0:
            raise OpenAIError(400, "the prompt encodes to no tokens", param=param)
        room = self._context - n
        if room <= 0:
            raise OpenAIError(400, f"the prompt has {n} tokens; this model's context is {self._context}", param=param)
        if sampling.max_tokens is None:
            return Encoded(tuple(ids), min(room, self._options.default_max_tokens))
        if sampling.max_tokens > room:
            raise OpenAIError(
                400,
                f"max_tokens ({sampling.max_tokens}) + prompt ({n} tokens) exceeds the context of {self._context}",
                param="max_tokens",
            )
        return Encoded(tuple(ids), sampling.max_tokens)

    def _generation_kwargs(self, sampling: Sampling) -> dict[str, Any]:
        # Like vLLM: request values win, then what the model's generation_config.json sets explicitly,
        # then OpenAI's defaults (temperature 1, top_p 1, no top-k).
        explicit = self._model.generation_config.to_diff_dict()
        temperature = sampling.temperature
        if temperature is None:
            temperature = float(explicit.get("temperature", 1.0)) if explicit.get("do_sample", True) else 0.0
        if temperature <= 0.0:
            return {"do_sample": False}
        top_p = sampling.top_p if sampling.top_p is not None else float(explicit.get("top_p", 1.0))
        top_k = sampling.top_k if sampling.top_k is not None else int(explicit.get("top_k", 0))
        return {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k}  # 0: no top-k

    def generate(
        self,
        encoded: Encoded,
        sampling: Sampling,
        on_token: Callable[[int], None],
        cancel: threading.Event,
    ) -> str:
        """Generate, calling `on_token` for each new token; return "stop" (EOS) or "length"."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        class _Streamer(BaseStreamer):
            def __init__(self) -> None:
                self._prompt_seen = False

            def put(self, value: torch.Tensor) -> None:
                if not self._prompt_seen:  # generate() first hands over the prompt
                    self._prompt_seen = True
                    return
                for token in value.reshape(-1).tolist():
                    on_token(int(token))

            def end(self) -> None:
                return None

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        assert self._device is not None
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        input_ids = torch.tensor([list(encoded.prompt_ids)], device=self._device)
        eos = None if sampling.ignore_eos else self._model.generation_config.eos_token_id
        pad = self._tokenizer.pad_token_id
        if pad is None:
            pad = self._tokenizer.eos_token_id
        with torch.inference_mode():
            output = self._model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=encoded.max_new_tokens,
                eos_token_id=eos,
                pad_token_id=pad,
                streamer=_Streamer(),
                stopping_criteria=StoppingCriteriaList([_Cancelled()]),
                **self._generation_kwargs(sampling),
            )
        generated = int(output.shape[1]) - len(encoded.prompt_ids)
        return "length" if generated >= encoded.max_new_tokens else "stop"
