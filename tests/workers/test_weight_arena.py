"""WeightArena / ModelResidence on CPU tensors: the real rebinding code path the CUDA wake uses."""

from __future__ import annotations

import torch

from services.weights import ModelResidence, WeightArena, tensor_bytes


class Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 12)
        self.norm = torch.nn.LayerNorm(12)
        self.head = torch.nn.Linear(12, 50, bias=False)
        self.head.weight = self.embed.weight  # tied, as in many LMs
        self.register_buffer("scale", torch.tensor(0.5, dtype=torch.float64))
        self.mixed = torch.nn.Linear(12, 12).to(torch.bfloat16)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.embed(ids))
        h = h + self.mixed(h.to(torch.bfloat16)).float()
        return self.head(h) * self.scale


def test_arena_round_trip_keeps_values_ties_and_dtypes() -> None:
    torch.manual_seed(0)
    model = Tied().eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    expected = model(ids).detach().clone()
    arena = WeightArena([model], torch.device("cpu"))
    assert arena.nbytes >= tensor_bytes([model])
    assert not arena.on_device
    assert torch.equal(model(ids), expected)  # bound to the host copy
    arena.to_device()
    device_ptr = model.embed.weight.data_ptr()
    assert arena.on_device and model.head.weight is model.embed.weight
    assert torch.equal(model(ids), expected)
    arena.to_host()
    assert model.embed.weight.data_ptr() != device_ptr
    assert model.mixed.weight.dtype is torch.bfloat16 and model.scale.dtype is torch.float64
    arena.to_device()
    assert torch.equal(model(ids), expected)
    arena.release()
    assert torch.equal(model(ids), expected)  # still usable from the (unpinned) host copy


def test_residence_in_place_on_cpu_is_a_state_change() -> None:
    model = Tied().eval()
    ptr = model.embed.weight.data_ptr()
    residence = ModelResidence([model], torch.device("cpu"), "auto")
    assert residence.strategy == "in-place"
    residence.offload()
    assert not residence.awake and model.embed.weight.data_ptr() == ptr
    assert residence.memory().host_bytes == tensor_bytes([model]) and residence.memory().gpu_bytes == 0
    residence.wake()
    assert residence.awake
