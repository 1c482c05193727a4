"""One structured log line per request, and the ASGI middleware that observes every request.

`RequestObserver` wraps the app: it gives each request a `RequestRecord`
(reachable from handlers through `record_of(request)`), notes the status
and the gateway's `X-Request-Id` as the response starts, and just before
the last byte (or when the response fails or the client leaves) hands the
record to the metrics and to `RequestLog`.
The edge fills in who called (`authenticate`) and copies the model and the
ledger entry from the flow's report (gateway/flow/call.py), so the line
carries workspace, agent, model, billing mode, credits and latencies. It
never carries a key, a header or message content: the record holds none.

`BOOKBAG_LOG_JSON=1` prints each line as one JSON object (other log
records too); otherwise `key=value` pairs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.types import Caller, LedgerEntry

STATE_KEY = "bookbag_request"
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})  # probes and scrapes: debug level
_HANDLER_NAME = "bookbag-stderr"


@dataclass(slots=True)
class RequestRecord:
    method: str
    path: str
    started: float
    route: str = "unmatched"
    request_id: str | None = None
    status: int = 0
    caller: Caller | None = None
    entry: LedgerEntry | None = None
    total_ms: float = 0.0
    overhead_ms: float | None = None  # the flow's own figure (X-Bookbag-Overhead-Ms)
    model: str | None = None  # the resolved model, before there is a ledger entry

    @property
    def provider_ms(self) -> float | None:
        if self.entry is None or self.entry.latency_ms is None:
            return None
        return float(self.entry.latency_ms)

    @property
    def gateway_ms(self) -> float | None:
        """Request time minus provider time (requests that called a provider)."""
        if self.overhead_ms is not None:
            return self.overhead_ms
        provider = self.provider_ms
        return None if provider is None else max(self.total_ms - provider, 0.0)

    def fields(self) -> dict[str, Any]:
        entry, caller = self.entry, self.caller
        return {
            "request_id": self.request_id,
            "method": self.method,
            "route": self.route,
            "status": self.status,
            "workspace": entry.workspace_id if entry else caller.workspace_id if caller else None,
            "key_id": caller.key_id if caller else None,
            "agent": entry.agent_id if entry else caller.agent_id if caller else None,
            "conversation": entry.conversation_id if entry else None,
            "model": entry.model if entry else self.model,
            "billing_mode": str(entry.billing_mode) if entry and entry.billing_mode else None,
            "credits": entry.credits if entry else None,
            "replies": entry.replies if entry else None,
            "total_ms": round(self.total_ms, 2),
            "provider_ms": self.provider_ms,
            "overhead_ms": None if self.gateway_ms is None else round(self.gateway_ms, 2),
        }


def record_of(request: Request) -> RequestRecord | None:
    record = request.scope.get("state", {}).get(STATE_KEY)
    return record if isinstance(record, RequestRecord) else None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "request", None)
        line: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if isinstance(fields, dict):
            line.update(event="request", **fields)
        else:
            line["message"] = record.getMessage()
            if record.exc_info:
                line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def _plain(fields: dict[str, Any]) -> str:
    return " ".join(f"{k}={'-' if v is None else v}" for k, v in fields.items())


def configure(level: str, as_json: bool) -> None:
    """Give the `bookbag` loggers one stderr handler (once per process) at `level`."""
    logger = logging.getLogger("bookbag")
    logger.setLevel(level.upper())
    for handler in logger.handlers:
        if handler.get_name() == _HANDLER_NAME:
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if as_json else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)


class RequestLog:
    def __init__(self, as_json: bool) -> None:
        self._json = as_json
        self._log = logging.getLogger("bookbag.request")

    def emit(self, record: RequestRecord) -> None:
        level = logging.DEBUG if record.route in QUIET_ROUTES else logging.INFO
        if not self._log.isEnabledFor(level):
            return
        fields = record.fields()
        # The JSON formatter renders `request`; a plain handler prints the message.
        self._log.log(level, "%s", _plain(fields), extra={"request": fields})


Observer = Callable[[RequestRecord], None]


class RequestObserver:
    """ASGI middleware: a record per HTTP request, observed as its last byte goes out."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = RequestRecord(scope["method"], scope["path"], time.perf_counter())
        scope.setdefault("state", {})[STATE_KEY] = record
        observed = False

        def observe() -> None:
            nonlocal observed
            if observed:
                return
            observed = True
            record.total_ms = (time.perf_counter() - record.started) * 1000
            record.route = getattr(scope.get("route"), "path", "unmatched")
            observer: Observer | None = getattr(scope["app"].state, "observe_request", None)
            if observer is None:
                return
            try:
                observer(record)
            except Exception:
                logging.getLogger("bookbag.request").warning("observing a request failed", exc_info=True)

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                for name, value in message.get("headers", ()):
                    if name == b"x-request-id":
                        record.request_id = value.decode("latin-1")
                    elif name == b"x-bookbag-overhead-ms":
                        with contextlib.suppress(ValueError):
                            record.overhead_ms = float(value)
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                observe()  # before the last byte: a client that has its reply sees it counted
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except BaseException:
            record.status = record.status or 500
            raise
        finally:
            observe()  # the response never ended (an error, or the client left)
