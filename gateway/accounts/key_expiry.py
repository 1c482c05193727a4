"""Key expiry (spend controls): parsing `expires_at` and the one check of an expired key.

`expires_at` is an ISO 8601 instant (`2027-01-31T00:00:00Z`; no offset means UTC;
a bare date means its midnight UTC) or Unix seconds. It is stored as
`api_keys.expires_ms`; from that millisecond on the key gets 401 `key_expired`.
The check runs on every request against the caller's cached expiry, so it needs
no cache refresh: an expiry takes effect on every gateway at the same instant.
"""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.errors import KeyExpired

_MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


class ExpiryError(ValueError):
    """`expires_at` is malformed or not in the future."""


def parse_expires_at(value: object, now_ms: int) -> int | None:
    """`expires_at` as epoch milliseconds; None stays None. Refuses a past instant."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ExpiryError("expires_at must be an ISO 8601 instant or Unix seconds")
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").replace(".", "", 1).isdigit():
            ms = _seconds_ms(float(text))
        else:
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                raise ExpiryError(
                    f"expires_at {value!r} is not an ISO 8601 instant "
                    "(e.g. 2027-01-31T00:00:00Z) or Unix seconds") from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            ms = int(moment.timestamp() * 1000)
    else:
        ms = _seconds_ms(float(value))
    if ms <= now_ms:
        raise ExpiryError(f"expires_at {value!r} is not in the future")
    return ms


def _seconds_ms(seconds: float) -> int:
    ms = seconds * 1000
    if not ms < _MAX_MS:  # also refuses nan and inf
        raise ExpiryError("expires_at is out of range")
    return int(ms)


def check_expiry(expires_ms: int | None, now: float) -> None:
    """Raise 401 `key_expired` once `now` (seconds) reaches the key's expiry."""
    if expires_ms is not None and now * 1000 >= expires_ms:
        raise KeyExpired(f"This API key expired at {iso_ms(expires_ms)}; ask for a new key.")


def iso_ms(ms: int | None) -> str | None:
    """Epoch milliseconds as an ISO 8601 UTC instant, for listings."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")
