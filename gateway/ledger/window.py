"""Time windows for usage and export: `start`/`end` in an IANA time zone, and its local days.

`start` and `end` are each a date (`YYYY-MM-DD`, a whole local day: a date
`end` includes that day), an ISO 8601 date-time (a naive one is local to
`tz`), or epoch seconds. The window is `[start, end)` in epoch milliseconds.
Days are cut at local midnight, so a day in a zone that changes its clocks
is 23 or 25 hours long, and days in `Asia/Kolkata` begin at :30 UTC.
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import itertools
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.errors import InvalidRequest

DAY = dt.timedelta(days=1)
DAY_MS = 86_400_000
EPOCH_DAY = dt.date(1970, 1, 1)
MAX_DAYS = 1100  # about three years: bounds what one request can ask of the database


def zone(name: str | None) -> ZoneInfo:
    """The IANA zone `name` (default UTC), or 400."""
    if not name:
        return ZoneInfo("UTC")
    if len(name) > 64 or name.startswith(("/", ".")) or ".." in name:
        raise InvalidRequest(f"Unknown time zone {name[:64]!r}.", param="tz")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidRequest(
            f"Unknown time zone {name!r}: use an IANA name such as Europe/Paris.", param="tz"
        ) from None


MAX_EPOCH = 32_503_680_000  # 3000-01-01: far enough, and every date computed from it is valid
# Any instant a window names lies within 1970..3000 give or take a day of time zone: years
# 1 and 9999 overflow once a zone's offset or a day is added (a 400, never a database error).
LOWEST_MS, HIGHEST_MS = -DAY_MS, MAX_EPOCH * 1000 + DAY_MS


def local_midnight(day: dt.date, tz: ZoneInfo) -> int:
    """Epoch ms where `day` begins in `tz` (if midnight is skipped, the first instant after)."""
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=tz).timestamp() * 1000)


def local_date(ms: int, tz: ZoneInfo) -> dt.date:
    return dt.datetime.fromtimestamp(ms / 1000, tz).date()


def _parse(value: str, tz: ZoneInfo, param: str, *, is_end: bool) -> int:
    value = value.strip()
    digits = value.removeprefix("-")
    if digits.isdigit():  # epoch seconds: ASCII digits ("¹".isdigit() too), 1970 to 3000
        if not digits.isascii() or len(digits) > 12 or not 0 <= int(value) <= MAX_EPOCH:
            raise InvalidRequest(f"`{param}` is not an epoch time from 1970 to 3000.",
                                 param=param)
        return int(value) * 1000
    try:
        if len(value) == 10:
            day = dt.date.fromisoformat(value)
            return _bounded(local_midnight(day + DAY if is_end else day, tz), param)
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, OverflowError):  # OverflowError: the day after 9999-12-31
        raise InvalidRequest(
            f"`{param}` must be a date (YYYY-MM-DD), an ISO 8601 date-time or epoch seconds.",
            param=param,
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return _bounded(int(moment.timestamp() * 1000), param)


def _bounded(ms: int, param: str) -> int:
    if not LOWEST_MS <= ms <= HIGHEST_MS:
        raise InvalidRequest(f"`{param}` must fall between the years 1970 and 3000.", param=param)
    return ms


@dataclass(frozen=True)
class Window:
    start_ms: int
    end_ms: int
    tz: ZoneInfo

    @functools.cached_property
    def _days(self) -> tuple[tuple[int, ...], tuple[str, ...]]:
        starts: list[int] = []
        labels: list[str] = []
        day = local_date(self.start_ms, self.tz)
        while True:
            begins = local_midnight(day, self.tz)
            if begins >= self.end_ms:
                break
            starts.append(begins)
            labels.append(day.isoformat())
            day += DAY
        return tuple(starts), tuple(labels)

    @property
    def day_starts(self) -> tuple[int, ...]:
        """Where each local day overlapping the window begins (the first may precede the window)."""
        return self._days[0]

    @property
    def day_labels(self) -> tuple[str, ...]:
        return self._days[1]

    def _offset(self, ms: int) -> int:
        offset = dt.datetime.fromtimestamp(ms / 1000, self.tz).utcoffset()
        return int(offset.total_seconds() * 1000) if offset is not None else 0

    @functools.cached_property
    def offsets(self) -> tuple[tuple[int, int], ...]:
        """(from ms, UTC offset ms) for each stretch of the window with one offset."""
        points = [*self.day_starts, self.end_ms]
        out = [(points[0], self._offset(points[0]))]
        for a, b in itertools.pairwise(points):
            if self._offset(b) != out[-1][1]:  # clocks changed in [a, b]: find the instant
                lo, hi = a, b
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    lo, hi = (mid, hi) if self._offset(mid) == out[-1][1] else (lo, mid)
                out.append((hi, self._offset(hi)))
        return tuple(out)

    def local_day_sql(self, column: str) -> tuple[str, list[int]]:
        """SQL for the local day number (days since 1970-01-01, local) of the instant `column`."""
        later = self.offsets[1:]
        if not later:
            return f"(({column} + CAST(? AS BIGINT)) / {DAY_MS})", [self.offsets[0][1]]
        cases = " ".join("WHEN " + column + " < CAST(? AS BIGINT) THEN CAST(? AS BIGINT)" for _ in later)
        params = [v for (start, _), (_, offset) in zip(later, self.offsets, strict=False)
                  for v in (start, offset)]
        return (f"(({column} + CASE {cases} ELSE CAST(? AS BIGINT) END) / {DAY_MS})",
                [*params, later[-1][1]])

    @staticmethod
    def day_label(number: int) -> str:
        return (EPOCH_DAY + dt.timedelta(days=int(number))).isoformat()

    @property
    def cuts(self) -> tuple[int, ...]:
        """Local midnights strictly inside the window."""
        return self.day_starts[1:]

    def day_of(self, ms: int) -> str:
        return self.day_labels[max(bisect.bisect_right(self.day_starts, ms) - 1, 0)]

    def iso(self, ms: int) -> str:
        return dt.datetime.fromtimestamp(ms / 1000, self.tz).isoformat()

    def describe(self) -> dict[str, str]:
        return {"start": self.iso(self.start_ms), "end": self.iso(self.end_ms), "tz": self.tz.key}


def window(start: str | None, end: str | None, tz_name: str | None, now: float,
           *, default_days: int = 7, max_days: int | None = MAX_DAYS) -> Window:
    """The window the parameters name; by default the last `default_days` local days, today included."""
    tz = zone(tz_name)
    today = dt.datetime.fromtimestamp(now, tz).date()
    end_ms = _parse(end, tz, "end", is_end=True) if end else local_midnight(today + DAY, tz)
    if start:
        start_ms = _parse(start, tz, "start", is_end=False)
    else:
        start_ms = local_midnight(local_date(end_ms - 1, tz) - (default_days - 1) * DAY, tz)
    if start_ms >= end_ms:
        raise InvalidRequest("`start` must be before `end`.", param="start")
    if max_days is not None and end_ms - start_ms > max_days * 86_400_000:
        raise InvalidRequest(f"The window is longer than {max_days} days.", param="start")
    return Window(start_ms, end_ms, tz)
