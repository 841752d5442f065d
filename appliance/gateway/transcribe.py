"""The gateway's side of /v1/audio/transcriptions and /v1/audio/translations: the multipart upload
checked with the rules the STT worker shares (`appliance.transcription`: a `FieldError` becomes the
gateway's 400 naming the field), OpenAI's default model names (`whisper-1`, `gpt-4o-transcribe`, ...)
meaning the first configured transcription model, and the form written again for the worker with the
configured model's id in `model`. Pure over bytes; must not hold leases or talk to engines (the
route in gateway.openai does), nor decode audio (the worker does).
"""

from __future__ import annotations

from ..fields import FieldError
from ..transcription import MAX_UPLOAD_BYTES, Form, TranscriptionRequest, check_transcription, encode_form, parse_form
from ..transcription import refuse_unknown as _refuse_unknown
from .errors import InvalidRequest

ALIASES = ("whisper", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")
FORM_OVERHEAD_BYTES = 64 * 1024  # the form's other fields and part headers, beyond the upload itself


def parse(content_type: bytes | None, raw: bytes) -> Form:
    """The multipart form; `InvalidRequest` on `file` when the body is not one."""
    try:
        return parse_form((content_type or b"").decode("latin-1"), raw)
    except FieldError as exc:
        raise InvalidRequest(exc.message, param=exc.field, code=exc.code) from None


def check_form(form: Form, translate: bool, max_body: int) -> TranscriptionRequest:
    """The checked request of a parsed form; `InvalidRequest` names the field at fault."""
    try:
        _refuse_unknown(form)
        return check_transcription(form, translation=translate, max_upload_bytes=min(MAX_UPLOAD_BYTES, max_body))
    except FieldError as exc:
        raise InvalidRequest(exc.message, param=exc.field, code=exc.code) from None


def check(content_type: bytes | None, raw: bytes, translate: bool, max_body: int) -> tuple[Form, TranscriptionRequest]:
    """The parsed form and its checked request; `InvalidRequest` names the field at fault."""
    form = parse(content_type, raw)
    return form, check_form(form, translate, max_body)


def forward(form: Form, model: str) -> tuple[bytes, bytes]:
    """(body, Content-Type) for the worker: the same form, `model` the configured id it serves."""
    return encode_form(form, model)
