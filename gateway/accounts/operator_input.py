"""Operator input, checked once for the CLI and the admin API alike.

Every check raises `InputError` (an `AccountError`): the admin API answers it
with a 400 naming the field, the CLI prints it on one line naming its flag.
Credit amounts are bounded by `MAX_CREDITS` (10^15), so two of them, or a
million, still fit a signed 64-bit integer in every store.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from typing import Any

MAX_CREDITS = 10**15
MAX_NAME = 200
MAX_WORKSPACE_ID = 40  # the column's length
MAX_REF = 64  # `<kind>:<workspace id>:<ref>` is a ledger request id (at most 128)
MAX_ACTOR = 100
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class AccountError(ValueError):
    """An operator request that cannot be carried out (unknown plan, workspace...)."""


class UnknownAccount(AccountError):
    """The workspace, key or endpoint named does not exist."""


class InputError(AccountError):
    """A bad operator input: `field` is the API's name for it, `problem` what is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"`{field}` {problem}")
        self.field = field
        self.problem = problem

    def for_flag(self, flag: str) -> str:
        return f"{flag} {self.problem}"


def credits(value: Any, field: str = "credits", *, minimum: int = 1,
            allow_zero: bool = False) -> int:
    """An integer number of credits in [minimum, MAX_CREDITS] (0 excluded unless allowed)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(field, "must be an integer number of credits")
    if value == 0 and not allow_zero:
        raise InputError(field, "must move at least one credit (it is 0)")
    if not minimum <= value <= MAX_CREDITS:
        raise InputError(field, f"must be between {minimum:,} and {MAX_CREDITS:,} credits")
    return value


def workspace_name(value: Any, field: str = "name") -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(field, "must be a non-empty name")
    if len(value) > MAX_NAME:
        raise InputError(field, f"must be at most {MAX_NAME} characters")
    return value.strip()


def anchor_date(value: Any, field: str = "anchor_date") -> str:
    """A real calendar date, YYYY-MM-DD."""
    if not isinstance(value, str) or not DATE_RE.match(value):
        raise InputError(field, "must be a date YYYY-MM-DD")
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        raise InputError(field, f"is not a calendar date: {value}") from None
    return value


def text(value: Any, field: str, max_length: int) -> str:
    """A non-empty string of at most `max_length` characters."""
    if not isinstance(value, str) or not value.strip():
        raise InputError(field, "must be a non-empty string")
    if len(value) > max_length:
        raise InputError(field, f"must be at most {max_length} characters")
    return value


def choice(value: Any, allowed: Iterable[str], field: str) -> str:
    options = tuple(allowed)
    if not isinstance(value, str) or value not in options:
        raise InputError(field, f"must be one of {', '.join(options)}")
    return value


def string_list(value: Any, field: str, allowed: Iterable[str] | None = None) -> list[str]:
    """A list whose items are each a string (and, given `allowed`, one of them)."""
    if not isinstance(value, list):
        raise InputError(field, "must be a list of strings")
    options = tuple(allowed) if allowed is not None else None
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise InputError(f"{field}[{i}]", "must be a non-empty string")
        if options is not None and item not in options:
            raise InputError(f"{field}[{i}]", f"must be one of {', '.join(options)}")
    return list(value)
