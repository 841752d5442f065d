"""OpenAI's attribute filters: comparison (eq, ne, gt, gte, lt, lte, in, nin) and compound (and, or).

`parse` checks a filter and names the bad field; `matches` evaluates it against one file's attributes
(attributes belong to a file attached to a store, so a filter selects files and the search runs over
their chunks). A comparison with a key the file lacks is false (ne and nin included). Pure.
It must not search.
"""

from __future__ import annotations

from typing import Any

COMPARISON = frozenset({"eq", "ne", "gt", "gte", "lt", "lte", "in", "nin"})
COMPOUND = frozenset({"and", "or"})
MAX_ATTRIBUTES = 16


class FilterError(ValueError):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


def _scalar(v: object) -> bool:
    return isinstance(v, str | int | float | bool)


def parse(value: object, param: str = "filters") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FilterError(param, "must be an object")
    kind = value.get("type")
    if kind in COMPOUND:
        subs = value.get("filters")
        if not isinstance(subs, list) or not subs:
            raise FilterError(f"{param}.filters", "must be a non-empty array of filters")
        return {"type": kind, "filters": [parse(f, f"{param}.filters[{i}]") for i, f in enumerate(subs)]}
    if kind not in COMPARISON:
        raise FilterError(f"{param}.type", f"must be one of {', '.join(sorted(COMPARISON | COMPOUND))}")
    key = value.get("key")
    if not isinstance(key, str) or not key:
        raise FilterError(f"{param}.key", "must be a non-empty string")
    target = value.get("value")
    if kind in ("in", "nin"):
        if not isinstance(target, list) or not all(_scalar(v) for v in target):
            raise FilterError(f"{param}.value", f"{kind} needs an array of strings, numbers or booleans")
    elif not _scalar(target):
        raise FilterError(f"{param}.value", "must be a string, number or boolean")
    elif kind in ("gt", "gte", "lt", "lte") and (isinstance(target, bool) or not isinstance(target, int | float)):
        raise FilterError(f"{param}.value", f"{kind} compares numbers")
    return {"type": kind, "key": key, "value": target}


def matches(flt: dict[str, Any], attributes: dict[str, Any]) -> bool:
    kind = flt["type"]
    if kind == "and":
        return all(matches(f, attributes) for f in flt["filters"])
    if kind == "or":
        return any(matches(f, attributes) for f in flt["filters"])
    if flt["key"] not in attributes:
        return False
    have, want = attributes[flt["key"]], flt["value"]
    if kind == "eq":
        return bool(have == want)
    if kind == "ne":
        return bool(have != want)
    if kind == "in":
        return have in want
    if kind == "nin":
        return have not in want
    if isinstance(have, bool) or not isinstance(have, int | float):
        return False
    result: bool = {"gt": have > want, "gte": have >= want, "lt": have < want, "lte": have <= want}[kind]
    return result


def check_attributes(value: object, param: str = "attributes") -> dict[str, Any]:
    """OpenAI's limits: at most 16 keys of up to 64 characters; strings up to 512; numbers; booleans."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FilterError(param, "must be an object")
    if len(value) > MAX_ATTRIBUTES:
        raise FilterError(param, f"at most {MAX_ATTRIBUTES} keys")
    for k, v in value.items():
        if not isinstance(k, str) or not 0 < len(k) <= 64:
            raise FilterError(param, "keys are strings of 1 to 64 characters")
        if not _scalar(v) or (isinstance(v, str) and len(v) > 512):
            raise FilterError(f"{param}.{k}", "must be a string (up to 512 characters), number or boolean")
    return dict(value)
