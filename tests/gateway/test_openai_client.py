"""The official `openai` client against a running `appliance serve`, for every /v1 route, streaming
and not: vLLM and ComfyUI stand-ins, the embed worker (all-MiniLM-L6-v2 shipped in a package) and
the speech worker (espeak-ng)."""

from __future__ import annotations

import base64
import io
import struct
import urllib.request
import wave

import openai
import pytest

from .conftest import Gateway


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def png_pixels(data: bytes) -> bytes:
    """The IDAT payload: the image itself, without the metadata chunks (which carry the prompt)."""
    pos, out = 8, b""
    while pos < len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        if data[pos + 4:pos + 8] == b"IDAT":
            out += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    return out


def test_models_list_has_every_configured_model_with_extras(gateway: Gateway) -> None:
    models = {m.id: m for m in gateway.client().models.list().data}
    assert set(models) == {"qwen-test", "sd-turbo", "sd-plain", "sd-broken", "minilm", "voice"}
    card = models["qwen-test"].model_dump()
    assert card["object"] == "model" and card["owned_by"] == "appliance"
    assert card["modality"] == "text" and card["engine"] == "vllm" and card["engine_kind"] == "vllm"
    assert card["tier"] in ("vram", "host", "disk", "absent")
    assert models["voice"].model_dump()["modality"] == "speech"
    assert gateway.client().models.retrieve("minilm").model_dump()["modality"] == "embedding"


def test_chat_completion_non_streaming(gateway: Gateway) -> None:
    out = gateway.client().chat.completions.create(
        model="qwen-test", messages=[{"role": "user", "content": "alpha beta gamma"}], max_tokens=5)
    assert out.object == "chat.completion"
    assert out.choices[0].message.content == "alpha beta gamma alpha beta"
    assert out.usage is not None and out.usage.completion_tokens == 5 and out.usage.prompt_tokens == 3


def test_chat_completion_streaming_with_usage(gateway: Gateway) -> None:
    stream = gateway.client().chat.completions.create(
        model="qwen-test", messages=[{"role": "user", "content": "one two three"}], max_tokens=4, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three one"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4


def test_stream_passes_engine_bytes_through_unchanged(gateway: Gateway) -> None:
    body = {"model": "qwen-test", "messages": [{"role": "user", "content": "x y"}], "max_tokens": 3, "stream": True}
    vllm_port = gateway.engine("vllm")["port"]
    through = gateway.request("POST", "/v1/chat/completions", body)
    req = urllib.request.Request(f"http://127.0.0.1:{vllm_port}/v1/chat/completions",
                                 data=__import__("json").dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        direct = resp.read()
    assert through.headers["content-type"].startswith("text/event-stream")

    def normalise(raw: bytes) -> list[bytes]:  # ids and timestamps differ per request; nothing else may
        import re

        raw = re.sub(rb'"id":"[^"]+"', b'"id":"-"', raw)
        return re.sub(rb'"created":\d+', b'"created":0', raw).split(b"\n\n")

    assert normalise(through.body) == normalise(direct)
    assert through.body.endswith(b"data: [DONE]\n\n")


def test_text_completion_streaming_and_not(gateway: Gateway) -> None:
    client = gateway.client()
    out = client.completions.create(model="qwen-test", prompt="red green blue", max_tokens=2)
    assert out.choices[0].text == " red green" and out.usage is not None
    stream = client.completions.create(model="qwen-test", prompt="red green blue", max_tokens=3, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices).split() == ["red", "green", "blue"]


def test_max_tokens_above_the_cap_is_clamped(gateway: Gateway) -> None:
    out = gateway.client().chat.completions.create(
        model="qwen-test", messages=[{"role": "user", "content": "a b c"}], max_tokens=1000)
    assert out.usage is not None and out.usage.completion_tokens == 64  # models.qwen-test.max_tokens_cap


def test_embeddings_float_and_base64(gateway: Gateway) -> None:
    client = gateway.client()
    out = client.embeddings.create(model="minilm", input=["a cat sits", "a dog runs"])  # SDK asks for base64
    assert len(out.data) == 2 and len(out.data[0].embedding) == 384
    plain = client.embeddings.create(model="minilm", input="a cat sits", encoding_format="float")
    assert plain.data[0].embedding == pytest.approx(out.data[0].embedding, abs=1e-5)
    assert plain.usage.prompt_tokens > 0


def test_speech_formats_and_content_types(gateway: Gateway) -> None:
    client = gateway.client()
    wav = client.audio.speech.create(model="voice", voice="alloy", input="Hello from the appliance.",
                                     response_format="wav")
    assert wav.response.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(wav.content)) as w:
        assert w.getnframes() > 0
    for fmt, ctype in (("mp3", "audio/mpeg"), ("flac", "audio/flac"), ("opus", "audio/ogg"), ("pcm", "audio/pcm")):
        out = client.audio.speech.create(model="voice", voice="alloy", input="Short.", response_format=fmt)
        assert out.response.headers["content-type"].startswith(ctype), fmt
        assert len(out.content) > 100
    # OpenAI's own model name goes to the configured speech model (what Open WebUI sends by default).
    alias = client.audio.speech.create(model="tts-1", voice="alloy", input="Hi.", response_format="wav")
    assert alias.content[:4] == b"RIFF"
    seconds = [r["audio_s"] for r in gateway.usage()["recent"] if r["model"] == "voice" and r["status"] == 200]
    assert seconds and all(s > 0 for s in seconds)


def test_voice_names_were_all_the_one_voice_now_mapped_per_model_or_refused(gateway: Gateway) -> None:
    import openai

    client = gateway.client()

    def say(voice: str) -> bytes:
        return client.audio.speech.create(model="voice", voice=voice, input="Good morning.",
                                          response_format="wav").content  # fmt: skip

    # models.voice.voices maps nova to espeak's German voice; alloy and echo are unmapped: the default voice
    assert say("alloy") == say("echo") != say("nova")
    assert say("nova") == say("de")
    with pytest.raises(openai.BadRequestError) as err:
        say("nobody-at-all")
    body = err.value.body
    assert isinstance(body, dict) and (body["param"], body["code"]) == ("voice", "unknown_voice")


def test_images_b64_with_size_seed_and_n(gateway: Gateway) -> None:
    client = gateway.client()
    out = client.images.generate(model="sd-turbo", prompt="a lighthouse", n=2, size="256x256",
                                 response_format="b64_json", extra_body={"seed": 7})
    assert len(out.data) == 2
    images = [base64.b64decode(d.b64_json or "") for d in out.data]
    assert all(png_size(i) == (256, 256) for i in images)
    again = client.images.generate(model="sd-turbo", prompt="a lighthouse", n=1, size="256x256",
                                   response_format="b64_json", extra_body={"seed": 7})
    assert png_pixels(base64.b64decode(again.data[0].b64_json or "")) == png_pixels(images[0])  # same seed
    other = client.images.generate(model="sd-turbo", prompt="a lighthouse", n=1, size="256x256",
                                   response_format="b64_json", extra_body={"seed": 8})
    assert png_pixels(base64.b64decode(other.data[0].b64_json or "")) != png_pixels(images[0])


def test_images_url_loads_without_key_and_is_signed(gateway: Gateway) -> None:
    out = gateway.client().images.generate(model="sd-plain", prompt="a boat", size="128x64")
    url = out.data[0].url
    assert url is not None and url.startswith(gateway.url + "/images/")
    with urllib.request.urlopen(url, timeout=10) as resp:  # no Authorization header: an <img> tag
        assert resp.headers["Content-Type"] == "image/png"
        assert png_size(resp.read()) == (128, 64)
    tampered = gateway.request("GET", url[len(gateway.url):].replace("sig=", "sig=0"), key=None)
    assert tampered.status == 403 and tampered.json()["error"]["message"]


def test_images_default_model_for_openai_names(gateway: Gateway) -> None:
    out = gateway.client().images.generate(model="dall-e-3", prompt="a tree", size="64x64",
                                           response_format="b64_json")
    assert png_size(base64.b64decode(out.data[0].b64_json or "")) == (64, 64)


def test_comfyui_node_error_names_node_and_input(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        gateway.client().images.generate(model="sd-broken", prompt="x", size="64x64")
    body = err.value.body
    assert isinstance(body, dict)
    assert "node 4 (CheckpointLoaderSimple)" in body["message"] and "ckpt_name" in body["message"]
    assert body["param"] == "4.ckpt_name"


def test_comfyui_execution_error_is_reported(gateway: Gateway) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        gateway.client().images.generate(model="sd-turbo", prompt="please EXPLODE", size="64x64")
    assert err.value.status_code == 502
    assert "KSampler" in err.value.message and "injected failure" in err.value.message


def test_usage_is_recorded_per_key_and_model(gateway: Gateway) -> None:
    gateway.client().chat.completions.create(model="qwen-test", messages=[{"role": "user", "content": "q"}],
                                             max_tokens=2)
    usage = gateway.usage()
    user_id = next(r["key_id"] for r in usage["recent"] if r["route"] == "/v1/chat/completions")
    totals = {(t["key_id"], t["model"]): t for t in usage["totals"]}
    text = totals[(user_id, "qwen-test")]
    assert text["requests"] >= 3 and text["tokens_out"] > 0 and text["tokens_in"] > 0 and text["gpu_s"] > 0
    assert totals[(user_id, "sd-turbo")]["images"] >= 3
    assert totals[(user_id, "minilm")]["tokens_in"] > 0
