"""The shared multipart rules of /v1/audio/transcriptions (appliance.transcription): parsing what clients
send, writing it again for the worker, and each bad field named."""

from __future__ import annotations

import pytest

from appliance.fields import FieldError
from appliance.transcription import check_transcription, encode_form, parse_form, refuse_unknown

CT = "multipart/form-data; boundary=XyZ"


def form_body(*parts: tuple[str, bytes, str | None]) -> bytes:
    out = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--XyZ\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
    return out + b"--XyZ--\r\n"


def test_fields_repeated_fields_and_the_file() -> None:
    audio = b"RIFF\r\n--Xy not the boundary\r\n\x00\xff"
    body = form_body(("model", b"whisper-1", None), ("timestamp_granularities[]", b"word", None),
                     ("timestamp_granularities[]", b"segment", None), ("response_format", b"verbose_json", None),
                     ("file", audio, 'my \\"talk\\"; take 2.wav'))  # fmt: skip (quotes escaped, as clients send them)
    form = parse_form(CT, body)
    req = check_transcription(form)
    assert req.upload.data == audio and req.upload.filename == 'my "talk"; take 2.wav'
    assert req.granularities == ("word", "segment") and req.model == "whisper-1" and not req.stream
    again, content_type = encode_form(form, model="sphinx")
    reparsed = check_transcription(parse_form(content_type.decode(), again))
    assert reparsed.upload.data == audio and reparsed.model == "sphinx" and reparsed.granularities == req.granularities


@pytest.mark.parametrize(("content_type", "body", "field"), [
    ("application/json", b"{}", "file"),
    ("multipart/form-data", b"--x--", "file"),
    ("multipart/form-data; boundary=\"a\r\nInjected: 1\"", b"", "file"),
    (CT, form_body(("model", b"m", None)), "file"),
    (CT, form_body(("file", b"", "a.wav")), "file"),
    (CT, form_body(("file", b"x", "a.wav"), ("language", b"xx", None)), "language"),
    (CT, form_body(("file", b"x", "a.wav"), ("temperature", b"hot", None)), "temperature"),
    (CT, form_body(("file", b"x", "a.wav"), ("temperature", b"1.5", None)), "temperature"),
    (CT, form_body(("file", b"x", "a.wav"), ("stream", b"maybe", None)), "stream"),
    (CT, form_body(("file", b"x", "a.wav"), ("stream", b"true", None), ("response_format", b"vtt", None)), "stream"),
    (CT, form_body(("file", b"x", "a.wav"), ("timestamp_granularities[]", b"word", None)), "timestamp_granularities"),
])  # fmt: skip
def test_each_bad_field_is_named(content_type: str, body: bytes, field: str) -> None:
    with pytest.raises(FieldError) as err:
        check_transcription(parse_form(content_type, body))
    assert err.value.field == field


def test_size_limit_translation_rules_and_unknown_fields() -> None:
    form = parse_form(CT, form_body(("file", b"x" * 101, "a.wav")))
    with pytest.raises(FieldError) as err:
        check_transcription(form, max_upload_bytes=100)
    assert err.value.code == "file_too_large"
    # a translation may declare the language spoken (the engine decides whether it can translate it)
    declared = check_transcription(parse_form(CT, form_body(("file", b"x", "a.wav"), ("language", b"de", None),
                                                            ("stream", b"true", None))), translation=True)  # fmt: skip
    assert declared.language == "de" and declared.stream
    with pytest.raises(FieldError) as err:
        check_transcription(parse_form(CT, form_body(("file", b"x", "a.wav"), ("language", b"xx", None))),
                            translation=True)  # fmt: skip
    assert err.value.field == "language"
    with pytest.raises(FieldError) as err:
        refuse_unknown(parse_form(CT, form_body(("file", b"x", "a.wav"), ("diarize", b"true", None))))
    assert err.value.field == "diarize" and err.value.code == "unknown_parameter"
