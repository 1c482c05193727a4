"""What every route of the fake provider shares: the rejection it raises, SSE framing,
word counting (the fake's "tokens") and the OpenAI-style type words of its messages."""

from __future__ import annotations

import json
import re
from typing import Any

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class _Invalid(Exception):
    """A request the provider rejects; rendered in the provider's error shape."""

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None,
        status: int = 400, etype: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.etype = (
            message, param, code, status, etype,
        )


def _words(text: str) -> int:
    return len(text.split())


def _pieces(text: str) -> list[str]:
    """Word pieces whose concatenation is `text` ("Hello ", "from ", ...)."""
    return re.findall(r"\S+\s*", text) or [text]


def _sse(data: Any, event: str | None = None) -> bytes:
    payload = json.dumps(data, separators=(",", ":"))
    return (f"event: {event}\n" if event else "").encode() + f"data: {payload}\n\n".encode()


def _type_word(value: Any) -> str:
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
    return "an array" if isinstance(value, list) else "an object"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _missing(param: str) -> _Invalid:
    return _Invalid(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


def _bounded(body: dict[str, Any], name: str, lo: float, hi: float | None,
             integers: tuple[str, ...]) -> None:
    """OpenAI's range check of a numeric parameter (`integers` are named "integer" in the
    message, the rest "decimal"), as its chat and Responses routes word it."""
    value = body.get(name)
    if value is None:
        return
    kind = "integer" if _is_int(value) and name in integers else "decimal"
    if value < lo:
        raise _Invalid(
            f"Invalid '{name}': {kind} below minimum value. Expected a value >= {lo:g}, but "
            f"got {value} instead.", param=name, code=f"{kind}_below_min_value",
        )
    if hi is not None and value > hi:
        raise _Invalid(
            f"Invalid '{name}': {kind} above maximum value. Expected a value <= {hi:g}, but "
            f"got {value} instead.", param=name, code=f"{kind}_above_max_value",
        )
