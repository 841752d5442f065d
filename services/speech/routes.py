"""OpenAI routes of the speech worker: /v1/audio/speech, /v1/audio/voices, /v1/models.

Owns request validation (input at most 4096 characters, voice one the model has, maps or one of
OpenAI's names (see `SpeechBackend.resolve_voice`; anything else is a 400 naming `voice`), speed
0.25-4.0, response_format wav, mp3, opus, flac or pcm; `instructions` and `stream_format: sse` are
refused, not ignored; a 400 names the field), the raw audio response
with its Content-Type and the voice it used (`X-Voice`), and the voices list (engine, voices, the
configured mapping, fallback reason). Synthesis runs on the model thread, sentence by sentence where the
engine allows, and stops between two sentences when the client goes away; encoding runs on a helper
thread.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from appliance.fields import MAX_SPEECH_CHARS, OPENAI_VOICES, opt_choice, opt_float, opt_str, require_str, speech_voice
from services.errors import bad_request
from services.protocol import Worker, check_model, read_json
from services.speech.audio import FORMATS, encode
from services.speech.backend import SpeechBackend, UnknownVoice
from services.speech.engines import Utterance
from services.speech.xtts_engine import UnknownLanguage


def add_routes(app: web.Application, worker: Worker, backend: SpeechBackend) -> None:
    model_id = worker.options.model_id

    async def speech(request: web.Request) -> web.Response:
        body = await read_json(request)
        check_model(body, worker)
        text = require_str(body, "input", max_len=MAX_SPEECH_CHARS)
        fmt = opt_choice(body, "response_format", FORMATS, "mp3")
        speed = opt_float(body, "speed", 1.0, lo=0.25, hi=4.0)
        language = opt_str(body, "language")
        if opt_str(body, "instructions"):
            raise bad_request("instructions", "'instructions' (voice direction) is not supported by this speech worker",
                              code="unsupported_parameter")  # fmt: skip
        opt_choice(body, "stream_format", ("audio",), "audio")  # no SSE audio stream
        requested = speech_voice(body)
        async with worker.serving(request) as job:
            try:
                voice = await worker.run(backend.resolve_voice, requested)
            except UnknownVoice as exc:
                raise bad_request("voice", str(exc), code="unknown_voice") from None
            utterance = Utterance(text=text, voice=voice, speed=speed, language=language)
            try:
                # stops between two sentences when the client goes away (Worker.run_job)
                audio = await worker.run_job(job, backend.synthesize, utterance, job.step)
            except UnknownLanguage as exc:
                raise bad_request("language", str(exc)) from None
        data, content_type = await asyncio.to_thread(encode, audio, fmt)
        return web.Response(body=data, headers={"Content-Type": content_type, "X-Voice": voice})

    async def voices(_: web.Request) -> web.Response:
        async with worker.serving():
            names = await worker.run(backend.voices)
        return web.json_response(
            {"engine": backend.engine.name, "voices": names, "openai_voices": list(OPENAI_VOICES),
             "voice_map": backend.voice_map, "fallback_reason": backend.fallback_reason}
        )  # fmt: skip

    async def models(_: web.Request) -> web.Response:
        card = {"id": model_id, "object": "model", "created": int(time.time()), "owned_by": "appliance"}
        return web.json_response({"object": "list", "data": [card]})

    app.router.add_post("/v1/audio/speech", speech)
    app.router.add_get("/v1/audio/voices", voices)
    app.router.add_get("/v1/models", models)
