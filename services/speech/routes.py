"""OpenAI routes of the speech worker: /v1/audio/speech, /v1/audio/voices, /v1/models.

Owns request validation (input at most 4096 characters, speed 0.25-4.0, response_format wav, mp3, opus,
flac or pcm; a 400 names the field), the raw audio response with its Content-Type, and the voices list
(engine, voices, fallback reason). Synthesis runs on the model thread, sentence by sentence where the
engine allows, and stops between two sentences when the client goes away; encoding runs on a helper
thread.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from services.errors import bad_request, optional_choice, optional_float, optional_str, require_str
from services.protocol import Worker, check_model, read_json
from services.speech.audio import FORMATS, encode
from services.speech.backend import SpeechBackend
from services.speech.engines import Utterance
from services.speech.xtts_engine import UnknownLanguage

MAX_INPUT_CHARS = 4096
DEFAULT_VOICE = "alloy"


def add_routes(app: web.Application, worker: Worker, backend: SpeechBackend) -> None:
    model_id = worker.options.model_id

    async def speech(request: web.Request) -> web.Response:
        body = await read_json(request)
        check_model(body, worker)
        text = require_str(body, "input", max_len=MAX_INPUT_CHARS)
        voice = optional_str(body, "voice", DEFAULT_VOICE) or DEFAULT_VOICE
        fmt = optional_choice(body, "response_format", FORMATS, "mp3")
        speed = optional_float(body, "speed", 1.0, lo=0.25, hi=4.0)
        language = optional_str(body, "language")
        utterance = Utterance(text=text, voice=voice, speed=speed, language=language)
        async with worker.serving(request) as job:
            try:  # stops between two sentences when the client goes away (Worker.run_job)
                audio = await worker.run_job(job, backend.synthesize, utterance, job.step)
            except UnknownLanguage as exc:
                raise bad_request("language", str(exc)) from None
        data, content_type = await asyncio.to_thread(encode, audio, fmt)
        return web.Response(body=data, headers={"Content-Type": content_type})

    async def voices(_: web.Request) -> web.Response:
        async with worker.serving():
            names = await worker.run(backend.voices)
        return web.json_response(
            {"engine": backend.engine.name, "voices": names, "fallback_reason": backend.fallback_reason}
        )

    async def models(_: web.Request) -> web.Response:
        card = {"id": model_id, "object": "model", "created": int(time.time()), "owned_by": "appliance"}
        return web.json_response({"object": "list", "data": [card]})

    app.router.add_post("/v1/audio/speech", speech)
    app.router.add_get("/v1/audio/voices", voices)
    app.router.add_get("/v1/models", models)
