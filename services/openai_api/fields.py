"""Typed reads of a JSON request body: each refuses a wrong type or range with
a 400 that names the param, as OpenAI's API does. ``None`` (JSON null) and an
absent key both mean "not given"."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from services.openai_api.api_errors import ApiError, invalid, missing, unknown_param, unsupported

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
Body = Mapping[str, Any]


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or 400."""
    try:
        value = json.loads(raw.decode("utf-8")) if raw else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from exc
    if not isinstance(value, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return value


def reject_unknown(body: Body, known: Iterable[str], prefix: str = "") -> None:
    """400 naming the first key this endpoint does not know (OpenAI refuses them too)."""
    allowed = set(known)
    for key in body:
        if key not in allowed:
            raise unknown_param(prefix + key)


def require_neutral(body: Body, neutral: Mapping[str, tuple[Any, ...]], why: Mapping[str, str]) -> None:
    """Fields we accept only with a value that changes nothing (e.g. ``logprobs: false``):
    any other value asks for something this server cannot do."""
    for name, allowed in neutral.items():
        value = body.get(name)
        if value is None:
            continue
        if not any(value == ok and type(value) is type(ok) for ok in allowed):
            raise unsupported(name, why[name])


def get_str(body: Body, name: str, *, required: bool = False, max_chars: int | None = None) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise missing(name)
        return None
    if not isinstance(value, str):
        raise invalid(name, f"must be a string, got {_json_type(value)}", code="invalid_type")
    if max_chars is not None and len(value) > max_chars:
        raise invalid(name, f"is {len(value)} characters; the limit is {max_chars}")
    return value


def get_bool(body: Body, name: str) -> bool | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise invalid(name, f"must be true or false, got {_json_type(value)}", code="invalid_type")
    return value


def get_int(body: Body, name: str, *, low: int = INT64_MIN, high: int = INT64_MAX) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # some clients write 2.0 for 2
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(name, f"must be an integer, got {_json_type(value)}", code="invalid_type")
    if not low <= value <= high:
        raise invalid(name, f"must be in [{low}, {high}], got {value}")
    return value


def get_number(body: Body, name: str, *, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(name, f"must be a number, got {_json_type(value)}", code="invalid_type")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise invalid(name, f"must be in [{low:g}, {high:g}], got {value}")
    return number


def get_str_list(body: Body, name: str) -> list[str]:
    """A string or a list of strings (as ``stop`` is); ``[]`` when not given."""
    value = body.get(name)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise invalid(name, "must be a string or a list of strings", code="invalid_type")


def get_str_map(body: Body, name: str, *, max_entries: int, max_key_chars: int, max_value_chars: int) -> dict[str, str]:
    """An object of string values (OpenAI's ``metadata``); ``{}`` when not given."""
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(name, f"must be an object of strings, got {_json_type(value)}", code="invalid_type")
    if len(value) > max_entries:
        raise invalid(name, f"has {len(value)} entries; the limit is {max_entries}")
    for key, item in value.items():
        if not isinstance(item, str):
            raise invalid(f"{name}.{key}", f"must be a string, got {_json_type(item)}", code="invalid_type")
        if len(key) > max_key_chars or len(item) > max_value_chars:
            raise invalid(
                f"{name}.{key}", f"keys are limited to {max_key_chars} and values to {max_value_chars} characters"
            )
    return dict(value)


def get_object(body: Body, name: str) -> dict[str, Any] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid(name, f"must be an object, got {_json_type(value)}", code="invalid_type")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
