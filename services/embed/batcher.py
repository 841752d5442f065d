"""Merges concurrent embedding requests into batches for one model call.

Owns a queue of pending requests and one drain task: while a batch runs on the model thread, newly
arrived requests wait and then go together in the next call, up to `max_batch` texts (one request bigger
than that is still sent whole; the model splits it by its own batch size). A caller cancelled (its
client went away) while its texts still wait is taken out of the queue, so they are never computed;
one whose texts are in the running batch waits until that batch is done, so the request ends only
once the model has let go of it. Pure asyncio, no model code: `encode` is whatever runs the model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from services.jobs import outlast

Vector = TypeVar("Vector")


@dataclass
class _Pending(Generic[Vector]):
    texts: Sequence[str]
    done: asyncio.Future[list[Vector]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Batcher(Generic[Vector]):
    def __init__(self, encode: Callable[[list[str]], Awaitable[Sequence[Vector]]], max_batch: int) -> None:
        self._encode = encode
        self._max_batch = max(1, max_batch)
        self._pending: list[_Pending[Vector]] = []
        self._drain: asyncio.Task[None] | None = None
        self.calls = 0

    @property
    def waiting(self) -> int:
        """Requests queued behind the running batch."""
        return len(self._pending)

    def _queue(self, texts: Sequence[str]) -> _Pending[Vector]:
        item: _Pending[Vector] = _Pending(texts)
        self._pending.append(item)
        if self._drain is None or self._drain.done():
            self._drain = asyncio.create_task(self._run())
        return item

    def submit(self, texts: Sequence[str]) -> asyncio.Future[list[Vector]]:
        """Queue `texts` now; the future resolves with their vectors, in order."""
        return self._queue(texts).done

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        """The vectors of `texts`; see the module docstring for a cancelled caller."""
        item = self._queue(texts)
        try:
            return await asyncio.shield(item.done)
        except asyncio.CancelledError:
            if item in self._pending:
                self._pending.remove(item)  # never reached the model
                item.done.cancel()
            else:
                await outlast(item.done)  # on the model now: wait until it let go
            raise

    def _take(self) -> list[_Pending[Vector]]:
        batch = [self._pending.pop(0)]
        size = len(batch[0].texts)
        while self._pending and size + len(self._pending[0].texts) <= self._max_batch:
            size += len(self._pending[0].texts)
            batch.append(self._pending.pop(0))
        return batch

    async def _run(self) -> None:
        while self._pending:
            batch = self._take()
            texts = [t for item in batch for t in item.texts]
            self.calls += 1
            try:
                vectors = list(await self._encode(texts))
            except Exception as exc:
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(exc)
                continue
            start = 0
            for item in batch:
                if not item.done.done():
                    item.done.set_result(vectors[start : start + len(item.texts)])
                start += len(item.texts)
