"""Billing periods: monthly from a workspace's anchor date (UTC).

An anchor on the 31st renews on the last day of shorter months, and returns
to the 31st when the month has one.
"""

from __future__ import annotations

import calendar
import datetime as dt


def _add_months(anchor: dt.date, months: int) -> dt.date:
    total = anchor.year * 12 + (anchor.month - 1) + months
    year, month = divmod(total, 12)
    last = calendar.monthrange(year, month + 1)[1]
    return dt.date(year, month + 1, min(anchor.day, last))


def period_of(anchor: str, at: float) -> tuple[str, str]:
    """(start, end) ISO dates of the period containing epoch second `at`; end is exclusive."""
    anchor_date = dt.date.fromisoformat(anchor)
    today = dt.datetime.fromtimestamp(at, dt.UTC).date()
    months = (today.year - anchor_date.year) * 12 + (today.month - anchor_date.month)
    start = _add_months(anchor_date, months)
    if start > today:
        months -= 1
        start = _add_months(anchor_date, months)
    if months < 0:  # before the anchor: the first period
        start, months = anchor_date, 0
    return start.isoformat(), _add_months(anchor_date, months + 1).isoformat()


def today(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).date().isoformat()
