"""Where a model's weights live, and how they move between host RAM and the device.

Owns device and dtype resolution and `ModelResidence`, which places a set of torch modules on the
device and implements offload/wake/release with one of two strategies:

- "arena" (default on CUDA): every parameter and buffer is packed into one flat host buffer, pinned with
  cudaHostRegister (exact size; torch's caching host allocator rounds pinned blocks up to a power of
  two), and the modules' tensors are rebound to views of one device buffer. A wake is then one
  host-to-device copy at full pinned bandwidth plus cheap rebinding; an offload rebinds the modules to
  the host views, frees the device buffer and empties torch's cache. The host copy is kept while the
  model is loaded (inference never writes weights), so an offload copies nothing.
- "in-place" (default on CPU): the modules stay where they are; on a CPU device offload and wake are
  state changes that keep the weights in RAM (on CUDA it falls back to module.to()).

Only tensors registered as parameters or buffers move, exactly as with module.to(). This module imports
torch: import it only on a worker's model thread. It must not know any HTTP or any model family.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from services.memory import MemoryUsage

log = logging.getLogger("services.weights")
_ALIGN = 512  # bytes; keeps every view aligned for any dtype and for vectorised copies
_PAGE = 4096
STRATEGIES = ("auto", "arena", "in-place")


def resolve_device(requested: str) -> torch.device:
    """`auto` is the first CUDA device when one is usable, else the CPU."""
    if requested == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {requested!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 on CUDA cards that support it, float16 on older cards, float32 on the CPU."""
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name != "auto":
        return table[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_strategy(name: str, device: torch.device) -> str:
    if name not in STRATEGIES:
        raise ValueError(f"offload strategy must be one of {', '.join(STRATEGIES)}; got {name!r}")
    if name == "auto":
        return "arena" if device.type == "cuda" else "in-place"
    return name


def tensor_bytes(modules: Sequence[torch.nn.Module]) -> int:
    """Bytes of the distinct parameters and buffers of `modules`."""
    seen: set[int] = set()
    total = 0
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total


@dataclass(frozen=True)
class _Binding:
    module: torch.nn.Module
    is_param: bool
    name: str
    offset: int
    nbytes: int
    dtype: torch.dtype
    shape: torch.Size


def _collect(
    modules: Sequence[torch.nn.Module],
) -> tuple[list[_Binding], list[tuple[int, torch.Tensor]], int]:
    """Every (module, name) slot, the distinct tensors with their offsets, and the arena size."""
    bindings: list[_Binding] = []
    regions: list[tuple[int, torch.Tensor]] = []
    offsets: dict[int, int] = {}
    seen_modules: set[int] = set()
    size = 0
    for root in modules:
        for sub in root.modules():
            if id(sub) in seen_modules:
                continue
            seen_modules.add(id(sub))
            slots: list[tuple[bool, str, torch.Tensor]] = [
                (True, n, t) for n, t in sub._parameters.items() if t is not None
            ]
            slots += [(False, n, t) for n, t in sub._buffers.items() if t is not None]
            for is_param, name, tensor in slots:
                key = id(tensor)
                nbytes = tensor.numel() * tensor.element_size()
                if key not in offsets:
                    offsets[key] = size
                    regions.append((size, tensor))
                    size += -(-nbytes // _ALIGN) * _ALIGN
                bindings.append(_Binding(sub, is_param, name, offsets[key], nbytes, tensor.dtype, tensor.shape))
    return bindings, regions, size


class WeightArena:
    """All weights of some modules in one host buffer and (while awake) one device buffer."""

    def __init__(self, modules: Sequence[torch.nn.Module], device: torch.device) -> None:
        self.device = device
        self._bindings, regions, self.nbytes = _collect(modules)
        # cudaHostRegister pins whole pages: give it a page-aligned start and a whole number of pages.
        self._pinned_span = -(-self.nbytes // _PAGE) * _PAGE
        raw = torch.empty(self._pinned_span + _PAGE, dtype=torch.uint8)
        start = -raw.data_ptr() % _PAGE
        self._host = raw[start : start + self.nbytes]
        self._host_base = raw[start : start + self._pinned_span]
        for offset, tensor in regions:
            self._view(self._host, offset, tensor.numel() * tensor.element_size(), tensor.dtype, tensor.shape).copy_(
                tensor
            )
        self._pinned = False
        if device.type == "cuda" and self.nbytes > 0:
            err = int(
                torch.cuda.cudart().cudaHostRegister(  # type: ignore[no-untyped-call]
                    self._host_base.data_ptr(), self._pinned_span, 0
                )
            )
            if err == 0:
                self._pinned = True
            else:  # still correct, only slower: copies from pageable memory go through a staging buffer
                log.warning(
                    "cudaHostRegister of %d bytes failed (error %d); host copy stays pageable",
                    self.nbytes,
                    err,
                )
        self._device_buffer: torch.Tensor | None = None
        self._bind(self._host)

    @property
    def pinned(self) -> bool:
        return self._pinned

    @property
    def on_device(self) -> bool:
        return self._device_buffer is not None

    @staticmethod
    def _view(buffer: torch.Tensor, offset: int, nbytes: int, dtype: torch.dtype, shape: torch.Size) -> torch.Tensor:
        return buffer[offset : offset + nbytes].view(dtype).view(shape)

    def _bind(self, buffer: torch.Tensor) -> None:
        for b in self._bindings:
            view = self._view(buffer, b.offset, b.nbytes, b.dtype, b.shape)
            if b.is_param:
                param = b.module._parameters[b.name]
                assert param is not None
                param.data = view
            else:
                b.module._buffers[b.name] = view

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def to_device(self) -> None:
        """Wake: one copy of the whole host buffer, then rebind (nothing changes if the copy fails)."""
        if self._device_buffer is not None:
            return
        buffer = torch.empty(self.nbytes, dtype=torch.uint8, device=self.device)
        buffer.copy_(self._host, non_blocking=self._pinned)
        self._synchronize()
        self._bind(buffer)
        self._device_buffer = buffer

    def to_host(self) -> None:
        """Offload: rebind to the host copy and free the device buffer."""
        if self._device_buffer is None:
            return
        self._synchronize()
        self._bind(self._host)
        self._device_buffer = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def release(self) -> None:
        """Unload: free the device buffer and unpin the host buffer (freed with the modules)."""
        self.to_host()
        if self._pinned:
            torch.cuda.cudart().cudaHostUnregister(self._host_base.data_ptr())  # type: ignore[no-untyped-call]
            self._pinned = False


class ModelResidence:
    """The weights of one model's modules on one device, with the chosen offload strategy."""

    def __init__(self, modules: Sequence[torch.nn.Module], device: torch.device, strategy: str) -> None:
        self.device = device
        self.strategy = resolve_strategy(strategy, device)
        self._modules = list(modules)
        self._arena: WeightArena | None = None
        if self.strategy == "arena":
            self._arena = WeightArena(self._modules, device)
            self._arena.to_device()
        else:
            for module in self._modules:
                module.to(device)
        self._awake = True

    @property
    def awake(self) -> bool:
        return self._awake

    def offload(self) -> None:
        if self._arena is not None:
            self._arena.to_host()
        elif self.device.type != "cpu":
            for module in self._modules:
                module.to("cpu")
            torch.cuda.empty_cache()
        self._awake = False

    def wake(self) -> None:
        if self._arena is not None:
            self._arena.to_device()
        elif self.device.type != "cpu":
            for module in self._modules:
                module.to(self.device)
        self._awake = True

    def release(self) -> None:
        if self._arena is not None:
            self._arena.release()
            self._arena = None
        self._modules = []
        self._awake = False
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def memory(self) -> MemoryUsage:
        gpu = torch.cuda.memory_reserved(self.device) if self.device.type == "cuda" else 0
        if self._arena is not None:
            return MemoryUsage(gpu_bytes=gpu, host_bytes=self._arena.nbytes)
        weights = tensor_bytes(self._modules)
        on_host = self.device.type == "cpu" or not self._awake
        return MemoryUsage(gpu_bytes=gpu, host_bytes=weights if on_host else 0)
