"""Alert thresholds (spend controls): a workspace's own balance thresholds for webhooks.

Each threshold is credits left (`500`: the balance is at or below 500) or a
percent of the allotment used (`80%`: at least 80 % of this period's allotment
is charged or held). Stored canonically as `credits:500` / `used:80`. Each
crossing emits one `credits.threshold` event per period and threshold; the
event id (type, workspace, period and threshold) makes it exactly once across
processes (`Webhooks.emit` inserts it once).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from gateway.accounts.workspaces import AccountError, UnknownAccount
from gateway.storage.schema import Workspace
from gateway.types import Balance

MAX_ALERTS = 20
MAX_CREDITS = 10**15


def parse_alerts(raw: str | list[Any] | None) -> tuple[str, ...]:
    """`[500, "80%"]` or `"500,80%"` -> ("credits:500", "used:80"); None or empty -> ()."""
    if raw is None:
        return ()
    if isinstance(raw, str):
        items: list[Any] = [p.strip() for p in raw.split(",") if p.strip()]
    elif isinstance(raw, list):
        items = raw
    else:
        raise AccountError("alert thresholds are a list like [500, \"80%\"] or a string \"500,80%\"")
    out: set[str] = set()
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise AccountError(f"an alert threshold is credits (500) or a percent (\"80%\"), got {item!r}")
        text = str(item).strip()
        if text.endswith("%"):
            try:
                pct = Decimal(text[:-1])
            except InvalidOperation:
                raise AccountError(f"an alert percent must be a number, got {text!r}") from None
            if not 0 < pct <= 100:
                raise AccountError(f"an alert percent of the allotment used is in (0, 100], got {text}")
            out.add(f"used:{format(pct.normalize(), 'f')}")
        else:
            if not text.isdigit() or int(text) > MAX_CREDITS:
                raise AccountError(
                    f"an alert in credits left is a whole number from 0 to {MAX_CREDITS}, got {text!r}")
            out.add(f"credits:{int(text)}")
    if len(out) > MAX_ALERTS:
        raise AccountError(f"at most {MAX_ALERTS} alert thresholds per workspace")
    return tuple(sorted(out))


def store_alerts(engine: Engine, workspace_id: str, raw: str | list[Any] | None) -> tuple[str, ...]:
    """Validate, then replace a workspace's alert thresholds (None or [] clears them)."""
    parsed = parse_alerts(raw)
    with Session(engine) as session:
        workspace = session.get(Workspace, workspace_id)
        if workspace is None:
            raise UnknownAccount(f"no workspace {workspace_id!r}")
        workspace.alert_thresholds = ",".join(parsed) or None
        session.add(workspace)
        session.commit()
    return parsed


def crossed(alerts: tuple[str, ...], balance: Balance) -> list[tuple[str, dict[str, Any]]]:
    """The thresholds the balance is past now: (threshold, event data)."""
    out = []
    used = balance.allotment - balance.allotment_remaining
    for alert in alerts:
        kind, _, value = alert.partition(":")
        if kind == "credits":
            past = balance.available <= int(value)
        else:
            past = balance.allotment > 0 and used * 100 >= Decimal(value) * balance.allotment
        if past:
            out.append((alert, {"threshold": alert, "kind": kind, "value": value,
                                "balance": balance.available, "allotment": balance.allotment,
                                "allotment_used": used}))
    return out
