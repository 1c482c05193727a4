"""What every translator shares: the JSON shape it works on and the refusal it raises."""

from __future__ import annotations

import json
from typing import Any

Json = dict[str, Any]


class Untranslatable(ValueError):
    """A request the target dialect cannot express; the edge answers 400 in the client's
    dialect (`unsupported_parameter`), never dropping the parameter silently."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def loads_object(text: str, where: str) -> Json:
    """Tool arguments as an object (Messages needs one; chat and Responses carry a string)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise Untranslatable(f"{where} is not valid JSON", where) from exc
    if not isinstance(value, dict):
        raise Untranslatable(f"{where} must be a JSON object", where)
    return value


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
