"""The request-field rules shared by the gateway and the workers (appliance.fields), as pure functions."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.fields import (
    CHARS_PER_TOKEN_BOUND,
    FieldError,
    check_text_length,
    opt_int,
    parse_size,
    refuse_unhonoured,
    speech_voice,
)


@pytest.mark.parametrize("body", [
    {}, {"tools": []}, {"tool_choice": "none"}, {"tool_choice": "auto"}, {"presence_penalty": 0},
    {"frequency_penalty": 0.0}, {"response_format": {"type": "text"}}, {"parallel_tool_calls": True},
    {"modalities": ["text"]}, {"logit_bias": {}}, {"best_of": 1}, {"user": "u", "seed": 3},
])  # fmt: skip
def test_neutral_values_ask_for_nothing(body: dict[str, Any]) -> None:
    refuse_unhonoured(body, "text worker")


@pytest.mark.parametrize(("body", "field"), [
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"presence_penalty": False}, "presence_penalty"),
    ({"repetition_penalty": 1.2}, "repetition_penalty"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"response_format": "json"}, "response_format"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"guided_json": {}}, "guided_json"),
    ({"best_of": 2}, "best_of"),
])  # fmt: skip
def test_what_cannot_be_honoured_is_refused_naming_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(FieldError) as err:
        refuse_unhonoured(body, "text worker")
    assert (err.value.field, err.value.code) == (field, "unsupported_parameter")
    assert "text worker" in err.value.message


def test_length_bound_refuses_only_what_cannot_fit() -> None:
    check_text_length(100 * CHARS_PER_TOKEN_BOUND, 100, "prompt")
    check_text_length(10**9, 0, "prompt")  # unknown context: no opinion
    with pytest.raises(FieldError) as err:
        check_text_length(100 * CHARS_PER_TOKEN_BOUND + 1, 100, "prompt")
    assert err.value.field == "prompt" and err.value.code == "context_length_exceeded"


def test_field_rules_name_the_field() -> None:
    assert opt_int({"n": 3}, "n", 1, lo=1, hi=10) == 3 and opt_int({}, "n", 1) == 1
    for bad in ({"n": True}, {"n": 1.5}, {"n": 0}):
        with pytest.raises(FieldError, match="'n'"):
            opt_int(bad, "n", 1, lo=1, hi=10)
    assert parse_size("auto") is None and parse_size("512x768", 16) == (512, 768)
    with pytest.raises(FieldError) as err:
        parse_size("500x500", 16)
    assert err.value.field == "size"
    assert speech_voice({"voice": {"id": "v1"}}) == "v1" and speech_voice({"voice": "nova"}) == "nova"
    with pytest.raises(FieldError) as missing:
        speech_voice({"voice": ""})
    assert missing.value.field == "voice"
