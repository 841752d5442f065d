"""/v1/images/generations served by the appliance's diffusers worker (a tiny random-weight SD3 pipeline
built here, nothing downloaded): the worker always answers b64_json, the gateway turns it into signed
URLs when asked."""

from __future__ import annotations

import base64
import json
import struct
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from .conftest import Gateway, launch, worker_engine


def build_tiny_sd3(out: Path) -> Path:
    """A random-weight StableDiffusion3Pipeline: one-layer transformer, tiny VAE and CLIP encoders."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    transformers = pytest.importorskip("transformers")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), model_max_length=77)
    torch.manual_seed(0)
    clip = transformers.CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37,
                                       num_attention_heads=4, num_hidden_layers=2, projection_dim=32,
                                       max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=32, patch_size=1, in_channels=16, num_layers=1, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=16)
    vae = diffusers.AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4, 4), layers_per_block=1,
        latent_channels=16, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=transformer, vae=vae, text_encoder=transformers.CLIPTextModelWithProjection(clip),
        tokenizer=tokenizer, text_encoder_2=transformers.CLIPTextModelWithProjection(clip), tokenizer_2=tokenizer,
        text_encoder_3=None, tokenizer_3=None, scheduler=diffusers.FlowMatchEulerDiscreteScheduler())
    pipe.save_pretrained(out / "pipeline")
    return out / "pipeline"


@pytest.fixture(scope="module")
def gateway(module_tmp: Path) -> Iterator[Gateway]:
    pipeline = build_tiny_sd3(module_tmp)
    doc = {
        "engines": {"diffusers": worker_engine("diffusers", str(pipeline),
                                               extra_args=["--default-size", "32x32", "--steps", "2"])},
        "models": {"tiny-sd3": {"engine": "diffusers", "modality": "image", "vram_gb": 0.1}},
    }
    gw = launch(module_tmp / "daemon", doc, keys={"user": False, "admin": True})
    try:
        yield gw
    finally:
        gw.stop()


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_b64_images_from_the_worker(gateway: Gateway) -> None:
    out = gateway.client().images.generate(model="tiny-sd3", prompt="a red fox", n=2, size="64x64",
                                           response_format="b64_json", extra_body={"seed": 5})
    images = [base64.b64decode(d.b64_json or "") for d in out.data]
    assert [png_size(i) for i in images] == [(64, 64), (64, 64)]
    assert images[0] != images[1]
    assert out.model_dump()["seed"] == 5


def test_url_images_from_the_worker_load_without_a_key(gateway: Gateway) -> None:
    out = gateway.client().images.generate(model="tiny-sd3", prompt="a blue boat", size="auto")
    url = out.data[0].url
    assert url is not None and "/images/" in url and "sig=" in url
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert png_size(resp.read()) == (32, 32)


def test_the_workers_own_400_passes_through(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as err:  # a field only the worker checks
        gateway.client().images.generate(model="tiny-sd3", prompt="x", size="64x64",
                                         extra_body={"guidance_scale": -1})
    assert err.value.param == "guidance_scale"
