"""The small checks a Responses body is validated with, worded as the real API words them
("Invalid type for 'input': expected ..., but got an object instead."), each naming the
parameter (`param`) so the SDKs' error objects point at it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gateway.errors import InvalidRequest


def kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def invalid_type(param: str, expected: str, value: Any) -> InvalidRequest:
    return InvalidRequest(f"Invalid type for '{param}': expected {expected}, but got "
                          f"{kind_of(value)} instead.", param=param)


def missing(param: str) -> InvalidRequest:
    return InvalidRequest(f"Missing required parameter: '{param}'.", param=param)


def invalid_value(param: str, value: Any, allowed: Iterable[str]) -> InvalidRequest:
    names = [f"'{a}'" for a in allowed]
    listed = ", ".join(names[:-1]) + f", and {names[-1]}" if len(names) > 1 else names[0]
    return InvalidRequest(f"Invalid value: '{str(value)[:64]}'. Supported values are: "
                          f"{listed}.", param=param)


def string(body: Mapping[str, Any], key: str, where: str = "", *,
           required: bool = False) -> str | None:
    """`body[key]`, a string (or absent / null unless required)."""
    param = f"{where}.{key}" if where else key
    value = body.get(key)
    if value is None:
        if required:
            raise missing(param)
        return None
    if not isinstance(value, str):
        raise invalid_type(param, "a string", value)
    return value


def boolean(body: Mapping[str, Any], key: str, where: str = "") -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise invalid_type(f"{where}.{key}" if where else key, "a boolean", value)
    return value


def obj(body: Mapping[str, Any], key: str, where: str = "") -> dict[str, Any] | None:
    value = body.get(key)
    if value is not None and not isinstance(value, dict):
        raise invalid_type(f"{where}.{key}" if where else key, "an object", value)
    return value


def choice(body: Mapping[str, Any], key: str, allowed: tuple[str, ...],
           where: str = "") -> str | None:
    param = f"{where}.{key}" if where else key
    value = body.get(key)
    if value is not None and value not in allowed:
        if not isinstance(value, str):
            raise invalid_type(param, "a string", value)
        raise invalid_value(param, value, allowed)
    return value


def integer(body: Mapping[str, Any], key: str, *, low: int, high: int | None = None) -> None:
    value = body.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_type(key, "an integer", value)
    if value < low:
        raise InvalidRequest(f"Invalid '{key}': integer below minimum value. Expected a value "
                             f">= {low}, but got {value} instead.", param=key)
    if high is not None and value > high:
        raise InvalidRequest(f"Invalid '{key}': integer above maximum value. Expected a value "
                             f"<= {high}, but got {value} instead.", param=key)


def number(body: Mapping[str, Any], key: str, *, low: float, high: float) -> None:
    value = body.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid_type(key, "a number", value)
    if not low <= value <= high:
        raise InvalidRequest(f"Invalid '{key}': expected a value between {low:g} and "
                             f"{high:g}, but got {value:g} instead.", param=key)
