"""The OpenAPI description of the `/v1` routes, which gateway.front serves outside FastAPI (so FastAPI
cannot describe them itself): paths with their request and response bodies, as plain JSON Schema.

Pure data: gateway.docs_ui merges it into `/api/openapi.json`. Other /v1 routes added later describe
themselves here too (tests/test_webui_api.py checks every route the front door serves is listed).
It must not import the route handlers, nor claim a parameter the handlers do not honour.
"""

from __future__ import annotations

from typing import Any

_ERR = {"description": "an OpenAI-style error", "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/Error"}}}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _post(summary: str, request: str, response: dict[str, Any], tag: str = "v1") -> dict[str, Any]:
    return {"post": {"summary": summary, "tags": [tag],
                     "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(request)}}},
                     "responses": {"200": response, "400": _ERR, "401": _ERR, "404": _ERR, "429": _ERR,
                                   "503": _ERR}}}


_STR = {"type": "string"}
_INT = {"type": "integer"}
_NUM = {"type": "number"}
_MESSAGE = {"type": "object", "required": ["role", "content"], "properties": {
    "role": {"type": "string", "enum": ["system", "user", "assistant", "tool"]},
    "content": {"oneOf": [_STR, {"type": "array", "items": {"type": "object"}}]}}}
_USAGE = {"type": "object", "properties": {"prompt_tokens": _INT, "completion_tokens": _INT, "total_tokens": _INT}}
_SAMPLING = {"max_tokens": _INT, "temperature": _NUM, "top_p": _NUM,
             "stream": {"type": "boolean", "description": "server-sent events, ending with data: [DONE]"},
             "seed": _INT, "n": _INT}

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
        "message": _STR, "type": _STR, "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}},
    "Model": {"type": "object", "properties": {
        "id": _STR, "object": {"const": "model"}, "created": _INT, "owned_by": _STR, "modality": _STR,
        "engine": _STR, "engine_kind": _STR, "voices": {"type": "array", "items": _STR},
        "tier": {"type": "string", "enum": ["vram", "host", "disk", "absent"]},
        "queued": _INT, "expected_load_s": {"type": "number"}}},
    "ModelList": {"type": "object", "properties": {"object": {"const": "list"},
                                                   "data": {"type": "array", "items": _ref("Model")}}},
    "ChatRequest": {"type": "object", "required": ["model", "messages"], "properties": {
        "model": _STR, "messages": {"type": "array", "items": _MESSAGE}, **_SAMPLING}},
    "ChatResponse": {"type": "object", "properties": {
        "id": _STR, "object": {"const": "chat.completion"}, "created": _INT, "model": _STR, "usage": _USAGE,
        "choices": {"type": "array", "items": {"type": "object", "properties": {
            "index": _INT, "message": _MESSAGE, "finish_reason": _STR}}}}},
    "CompletionRequest": {"type": "object", "required": ["model", "prompt"], "properties": {
        "model": _STR, "prompt": {"oneOf": [_STR, {"type": "array", "items": _STR}]}, **_SAMPLING}},
    "CompletionResponse": {"type": "object", "properties": {
        "id": _STR, "object": {"const": "text_completion"}, "created": _INT, "model": _STR, "usage": _USAGE,
        "choices": {"type": "array", "items": {"type": "object", "properties": {
            "index": _INT, "text": _STR, "finish_reason": _STR}}}}},
    "EmbeddingRequest": {"type": "object", "required": ["model", "input"], "properties": {
        "model": _STR, "input": {"oneOf": [_STR, {"type": "array", "items": _STR}]},
        "encoding_format": {"type": "string", "enum": ["float", "base64"]}, "dimensions": _INT}},
    "EmbeddingResponse": {"type": "object", "properties": {
        "object": {"const": "list"}, "model": _STR, "usage": _USAGE,
        "data": {"type": "array", "items": {"type": "object", "properties": {
            "object": {"const": "embedding"}, "index": _INT,
            "embedding": {"oneOf": [{"type": "array", "items": _NUM}, _STR]}}}}}},
    "ImageRequest": {"type": "object", "required": ["prompt"], "properties": {
        "model": _STR, "prompt": _STR, "n": _INT, "size": {"type": "string", "example": "512x512"},
        "response_format": {"type": "string", "enum": ["url", "b64_json"]}, "seed": _INT,
        "negative_prompt": _STR}},
    "ImageResponse": {"type": "object", "properties": {"created": _INT, "data": {"type": "array", "items": {
        "type": "object", "properties": {"url": {"type": "string", "description": "a signed, expiring URL"},
                                         "b64_json": _STR}}}}},
    "SpeechRequest": {"type": "object", "required": ["input"], "properties": {
        "model": _STR, "input": _STR, "voice": _STR, "speed": _NUM,
        "response_format": _STR}},
    "TranscriptionRequest": {"type": "object", "required": ["file", "model"], "properties": {
        "file": {"type": "string", "format": "binary"}, "model": _STR, "language": _STR, "prompt": _STR,
        "temperature": {"type": "number"},
        "response_format": {"type": "string", "enum": ["json", "text", "srt", "vtt", "verbose_json"]},
        "timestamp_granularities[]": {"type": "array", "items": {"type": "string", "enum": ["word", "segment"]}},
        "stream": {"type": "boolean"}}},
    "Transcription": {"type": "object", "properties": {"text": _STR, "language": _STR, "duration": {"type": "number"},
                                                       "segments": {"type": "array", "items": {"type": "object"}},
                                                       "words": {"type": "array", "items": {"type": "object"}}}},
    "JobRequest": {"type": "object", "required": ["route"], "description": "a route's own body plus 'route'",
                   "properties": {"route": {"type": "string", "enum": ["/v1/images/generations", "/v1/audio/speech",
                                                                        "/v1/chat/completions"]}},
                   "additionalProperties": True},
    "Job": {"type": "object", "properties": {
        "id": _STR, "route": _STR, "model": _STR, "state": _STR, "position": {"type": ["integer", "null"]},
        "attempts": _INT, "error": {"type": ["object", "null"]}, "result": {"type": ["object", "null"]}}},
}


def _multipart(summary: str) -> dict[str, Any]:
    ok = {"description": "the text (json, verbose_json) or the text itself (text, srt, vtt)", "content": {
        "application/json": {"schema": _ref("Transcription")}, "text/plain": {"schema": _STR}}}
    return {"post": {"summary": summary, "tags": ["v1"],
                     "requestBody": {"required": True, "content": {
                         "multipart/form-data": {"schema": _ref("TranscriptionRequest")}}},
                     "responses": {"200": ok, "400": _ERR, "401": _ERR, "404": _ERR, "413": _ERR, "503": _ERR}}}


def _paths() -> dict[str, Any]:
    model_param = {"name": "model", "in": "path", "required": True, "schema": _STR}
    job_param = {"name": "job_id", "in": "path", "required": True, "schema": _STR}
    return {
        "/v1/models": {"get": {"summary": "List the models this box serves, with their tier", "tags": ["v1"],
                               "responses": {"200": _json("ModelList"), "401": _ERR}}},
        "/v1/models/{model}": {"get": {"summary": "One model", "tags": ["v1"], "parameters": [model_param],
                                       "responses": {"200": _json("Model"), "404": _ERR}}},
        "/v1/residency": {"get": {"summary": "This box's residency summary (docs/fleet.md): each model's tier, "
                                             "whether it is resident or loadable, its queue; free VRAM; a "
                                             "generation counter; the box's readiness", "tags": ["v1"],
                                  "responses": {"200": {"description": "the summary", "content": {
                                      "application/json": {"schema": {"type": "object"}}}}, "401": _ERR}}},
        "/v1/chat/completions": _post("Chat completion (streams with stream=true)", "ChatRequest",
                                      _json("ChatResponse")),
        "/v1/completions": _post("Text completion (streams with stream=true)", "CompletionRequest",
                                 _json("CompletionResponse")),
        "/v1/embeddings": _post("Embeddings", "EmbeddingRequest", _json("EmbeddingResponse")),
        "/v1/images/generations": _post("Generate images", "ImageRequest", _json("ImageResponse")),
        "/v1/audio/speech": _post("Text to speech", "SpeechRequest", {
            "description": "the audio", "content": {f"audio/{f}": {"schema": {"type": "string", "format": "binary"}}
                                                    for f in ("wav", "mpeg", "ogg", "flac")}}),
        "/v1/audio/transcriptions": _multipart("Speech to text (multipart upload; streams with stream=true)"),
        "/v1/audio/translations": _multipart("Speech to English text (multipart upload)"),
        "/v1/jobs": {"post": {"summary": "Submit a job (asynchronous call of a /v1 route)", "tags": ["v1 jobs"],
                              "parameters": [{"name": "Idempotency-Key", "in": "header", "schema": _STR}],
                              "requestBody": {"required": True, "content": {
                                  "application/json": {"schema": _ref("JobRequest")}}},
                              "responses": {"202": _json("Job", "queued"), "200": _json("Job", "seen before"),
                                            "400": _ERR, "409": _ERR}}},
        "/v1/jobs/{job_id}": {
            "get": {"summary": "A job's state, queue position and result", "tags": ["v1 jobs"],
                    "parameters": [job_param], "responses": {"200": _json("Job"), "404": _ERR}},
            "delete": {"summary": "Cancel a queued or running job", "tags": ["v1 jobs"], "parameters": [job_param],
                       "responses": {"200": _json("Job"), "404": _ERR, "409": _ERR}}},
        "/v1/jobs/{job_id}/content": {"get": {
            "summary": "The audio of a finished speech job", "tags": ["v1 jobs"], "parameters": [job_param],
            "responses": {"200": {"description": "the audio"}, "404": _ERR}}},
    }


def v1_openapi() -> dict[str, Any]:
    """{"paths": ..., "schemas": ...} for the /v1 routes."""
    return {"paths": _paths(), "schemas": SCHEMAS}
