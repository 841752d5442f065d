"""OpenAI routes of the STT worker: /v1/audio/transcriptions, /v1/audio/translations, /v1/models.

Owns reading the multipart form (the rules are `appliance.transcription`'s, shared with the gateway:
a 400 names the field), decoding the upload on a helper thread (`decode`: an undecodable file or one
over `--max-audio-s` is a 400 on `file`), asking the engine whether it can do the task (a language or a
translation it cannot do is a 400, never ignored), and answering in the requested format, or as
server-sent `transcript.text.delta` events, one per decoded segment, then `transcript.text.done`.
Decoding runs on the model thread, segment by segment, and stops between two segments when the client
goes away (`Worker.run_job`). Every answer of 200 carries `X-Audio-Seconds`, the decoded audio's length,
which the gateway meters (usage and metrics) whatever the response format.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import numpy as np
from aiohttp import web

from appliance.transcription import MAX_UPLOAD_BYTES, check_transcription, parse_form, refuse_unknown
from services.errors import OpenAIError, bad_request
from services.jobs import Cancelled, Job
from services.protocol import Worker, check_model
from services.stt import formats
from services.stt.backend import SttBackend
from services.stt.decode import TooLong, UnsupportedAudio, decode
from services.stt.transcript import SAMPLE_RATE, Segment, Task, Transcript, UnsupportedTask

log = logging.getLogger("services.stt")
AUDIO_SECONDS_HEADER = "X-Audio-Seconds"  # the gateway reads it (appliance.gateway.upstream) for usage


def _audio_seconds(audio: np.ndarray) -> str:
    return f"{len(audio) / SAMPLE_RATE:.3f}"


def add_routes(app: web.Application, worker: Worker, backend: SttBackend, max_audio_s: float,
               max_upload_bytes: int = MAX_UPLOAD_BYTES) -> None:  # fmt: skip
    model_id = worker.options.model_id

    async def handle(request: web.Request, translate: bool) -> web.StreamResponse:
        body = await request.read()
        form = parse_form(request.headers.get("Content-Type", ""), body)
        refuse_unknown(form)
        req = check_transcription(form, translation=translate, max_upload_bytes=max_upload_bytes)
        check_model({"model": req.model} if req.model is not None else {}, worker)
        task = Task(translate=translate, language=req.language, prompt=req.prompt, temperature=req.temperature,
                    words="word" in req.granularities)  # fmt: skip
        try:
            backend.check(task)
        except UnsupportedTask as exc:
            raise bad_request(exc.field, str(exc), code="unsupported_parameter") from None
        try:
            audio = await asyncio.to_thread(decode, req.upload.data, req.upload.filename, max_audio_s)
        except UnsupportedAudio as exc:
            raise bad_request("file", str(exc), code="unsupported_format") from None
        except TooLong as exc:
            raise bad_request("file", str(exc), code="audio_too_long") from None
        task_name = "translate" if translate else "transcribe"
        async with worker.serving(request) as job:
            if req.stream:
                return await _stream(request, worker, backend, job, audio, task)

            def on_segment(_: Segment) -> None:
                job.step()

            transcript = await worker.run_job(job, backend.transcribe, audio, task, on_segment)
        data, content_type = formats.render(transcript, req.response_format, task_name, req.granularities)
        return web.Response(body=data, headers={"Content-Type": f"{content_type}; charset=utf-8",
                                                AUDIO_SECONDS_HEADER: _audio_seconds(audio)})  # fmt: skip

    async def transcriptions(request: web.Request) -> web.StreamResponse:
        return await handle(request, translate=False)

    async def translations(request: web.Request) -> web.StreamResponse:
        return await handle(request, translate=True)

    async def models(_: web.Request) -> web.Response:
        card = {"id": model_id, "object": "model", "created": int(time.time()), "owned_by": "appliance",
                "engine": backend.engine.name, "fallback_reason": backend.fallback_reason}  # fmt: skip
        return web.json_response({"object": "list", "data": [card]})

    app.router.add_post("/v1/audio/transcriptions", transcriptions)
    app.router.add_post("/v1/audio/translations", translations)
    app.router.add_get("/v1/models", models)


async def _stream(request: web.Request, worker: Worker, backend: SttBackend, job: Job, audio: np.ndarray,
                  task: Task) -> web.StreamResponse:  # fmt: skip
    """Server-sent events: a delta per decoded segment, then the whole text; the client hanging up
    cancels the decoding between two segments."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Segment | None] = asyncio.Queue()

    def on_segment(segment: Segment) -> None:  # model thread
        job.step()
        loop.call_soon_threadsafe(queue.put_nowait, segment)

    work: asyncio.Future[Transcript] = asyncio.ensure_future(
        worker.run_job(job, backend.transcribe, audio, task, on_segment))
    work.add_done_callback(lambda _: queue.put_nowait(None))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache",
                                           AUDIO_SECONDS_HEADER: _audio_seconds(audio)})  # fmt: skip
    try:
        await response.prepare(request)
        first = True
        while (segment := await queue.get()) is not None:
            text = segment.text.strip()
            if text:
                await response.write(formats.delta_event(text if first else " " + text))
                first = False
        try:
            transcript = await work
        except OpenAIError as exc:
            await response.write(formats.sse(exc.envelope()))
            return response
        except Cancelled:  # cancelled through /cancel: nobody reads this stream any more
            return response
        except Exception:  # the stream has begun: the error goes in an event; its text goes to the log only
            log.exception("transcription stream failed (request id %s)", job.request_id or "none")
            await response.write(formats.sse(OpenAIError(500, "internal error in the worker: see its log").envelope()))
            return response
        await response.write(formats.done_event(transcript))
        await response.write_eof()
        return response
    finally:
        if not work.done():
            work.cancel()  # run_job cancels the job and waits for the model thread to let go
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work



