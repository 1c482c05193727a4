"""How the CLI shows records: stable columns (id and name first), dates, plain lists.

`--json` prints the API's shape (the same fields as `GET /admin/...`), in a
fixed order; tables show the same records for people: `*_ms` times as UTC
dates, lists as comma lists, nested records as `field value` pairs.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gateway.storage.schema import ApiKey, Workspace

console = Console()  # the CLI's stdout (tests narrow or widen it)

FIRST = ("id", "workspace_id", "name")
WORKSPACE_FIELDS = ("id", "name", "plan", "custom_allotment", "suspended", "anchor_date",
                    "rate_limit", "byo_enabled", "responses_store", "low_fractions",
                    "alert_thresholds", "pending_plan", "pending_custom_allotment",
                    "pending_from", "created_ms")
# `workspace list` as a table: what tells workspaces apart (`--json` and `show` have every field)
WORKSPACE_COLUMNS = ("id", "name", "plan", "suspended", "anchor_date", "pending_plan",
                     "created_ms")
TIMES = frozenset({"created_ms", "expires_ms", "revoked_ms", "updated_ms", "delivered_ms", "next_attempt_ms"})
KEY_FIELDS = ("id", "workspace_id", "prefix", "agent_id", "scopes", "rate_limit", "created_ms",
              "expires_ms", "revoked_ms")


def ordered(data: Any) -> Any:
    """Records with their id and name first, the rest in the order given, recursively."""
    if isinstance(data, Mapping):
        keys = [k for k in FIRST if k in data] + [k for k in data if k not in FIRST]
        return {k: ordered(data[k]) for k in keys}
    if isinstance(data, list | tuple):
        return [ordered(item) for item in data]
    return data


def workspace_record(ws: Workspace) -> dict[str, Any]:
    return {name: getattr(ws, name) for name in WORKSPACE_FIELDS}


def key_record(key: ApiKey) -> dict[str, Any]:
    return {name: getattr(key, name) for name in KEY_FIELDS}


def workspace_view(ws: Workspace, balance: dict[str, Any] | None, recharge: dict[str, Any],
                   byo_keys: list[dict[str, Any]]) -> dict[str, Any]:
    """What `GET /admin/workspaces/{id}` and `workspace show` return."""
    shown = None if balance is None else {k: v for k, v in balance.items() if k != "workspace_id"}
    return {**workspace_record(ws), "balance": shown, "recharge": recharge, "byo_keys": byo_keys}


def when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def cell(value: Any) -> str:
    """One value as a table shows it: never a Python repr."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {cell(v)}" for k, v in display(value).items())
    if isinstance(value, list | tuple | set | frozenset):
        return ", ".join(cell(v) for v in value) or "(none)"
    return str(value)


def display(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record's fields for a table: `created_ms` -> `created` as a UTC date."""
    out: dict[str, Any] = {}
    for name, value in ordered(dict(record)).items():
        if name in TIMES:
            out[name[:-3]] = when(value) if isinstance(value, int) else value
        else:
            out[name] = value
    return out


def emit(data: Any, as_json: bool, title: str | None = None) -> None:
    if as_json:
        print(json.dumps(ordered(data), indent=2, default=str))
        return
    if isinstance(data, dict):  # one record: a field per line, values never cut short
        table = Table(title=title, show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        for name, value in display(data).items():
            table.add_row(str(name), escape(cell(value)))
        console.print(table)
        return
    if not data:
        console.print("(none)")
        return
    rows = [display(row) for row in data]
    table = Table(title=title)
    for column in rows[0]:
        # ids never wrap; other values wrap, never an ellipsis
        table.add_column(str(column), overflow="fold", no_wrap=column in ("id", "workspace_id"))
    for row in rows:
        table.add_row(*(escape(cell(v)) for v in row.values()))
    console.print(table)
