"""The load client: chat completions with idempotent retries, every attempt recorded.

`run_op` sends one operation until it is resolved or its deadline passes:
a reset, a timeout, a refused connection (the gateway is being restarted) or
a `charge_unconfirmed` error is an indeterminate attempt, retried with the
same Idempotency-Key; a 409
`idempotency_in_progress` waits and retries; a 200 ends it; another error
ends it too, unless it is a 5xx and `retry_failures` (the key was released, or
kept if the charge may have happened: the retry runs anew, or replays).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from tests.guarantees.history import BUSY, FAIL, INDETERMINATE, OK, Attempt, History, Op

CHAT = "/v1/chat/completions"
UNCONFIRMED = "charge_unconfirmed"  # a 503 (or in-band error) whose charge may have happened


@dataclass(frozen=True)
class Account:
    workspace_id: str
    key: str
    key_id: str = ""
    cap: int | None = None  # the key's spend cap per period, if it has one


def body_of(op: Op) -> dict[str, Any]:
    return {"model": op.model, "messages": [{"role": "user", "content": f"operation {op.id}"}],
            "stream": op.stream}


def _error_code(content: bytes) -> str | None:
    try:
        return str(orjson.loads(content)["error"]["code"])
    except Exception:
        return None


async def attempt(client: httpx.AsyncClient, op: Op, account: Account,
                  extra_headers: dict[str, str] | None = None) -> Attempt:
    headers = {"Authorization": f"Bearer {account.key}", "X-Bookbag-Conversation-Id": op.id,
               **(extra_headers or {})}
    if op.key is not None:
        headers["Idempotency-Key"] = op.key
    started = time.monotonic()
    status: int | None = None
    request_id: str | None = None
    try:
        async with client.stream("POST", CHAT, json=body_of(op), headers=headers) as r:
            status, request_id = r.status_code, r.headers.get("x-request-id")
            content = await r.aread()
            replayed = r.headers.get("idempotent-replayed") == "true"
            charged = r.headers.get("x-bookbag-original-request-id") if replayed else request_id
            if status == 200:
                if not op.stream or content.rstrip().endswith(b"data: [DONE]"):
                    return Attempt(started, time.monotonic(), OK, status, request_id, charged,
                                   replayed=replayed)
                if b'data: {"error"' in content:  # the gateway says: broken off, not charged
                    code = _error_code(content.split(b"data: ")[-1])
                    outcome = INDETERMINATE if code == UNCONFIRMED else FAIL
                    return Attempt(started, time.monotonic(), outcome, status, request_id,
                                   code=code)
                return Attempt(started, time.monotonic(), INDETERMINATE, status, request_id,
                               code="stream_cut")
            code = _error_code(content)
            if status == 409 and code == "idempotency_in_progress":
                return Attempt(started, time.monotonic(), BUSY, status, request_id, code=code)
            if code == UNCONFIRMED:  # the gateway says: charged once or not at all
                return Attempt(started, time.monotonic(), INDETERMINATE, status, request_id,
                               code=code)
            if status == 409 and code == "idempotency_response_unavailable":
                # Charged once, its response not kept: ok, whatever its entry's id.
                return Attempt(started, time.monotonic(), OK, status, request_id, None, code=code)
            return Attempt(started, time.monotonic(), FAIL, status, request_id, code=code)
    except (httpx.TransportError, httpx.StreamError) as exc:
        return Attempt(started, time.monotonic(), INDETERMINATE, status, request_id,
                       code=type(exc).__name__)


async def run_op(client: httpx.AsyncClient, op: Op, account: Account, *,
                 deadline: float, retry_failures: bool = False, pause: float = 0.2,
                 extra_headers: dict[str, str] | None = None) -> Op:
    """Attempts until ok, a final failure, or `deadline` (time.monotonic)."""
    while True:
        result = await attempt(client, op, account, extra_headers)
        op.attempts.append(result)
        if result.outcome == OK:
            return op
        if result.outcome == FAIL and not (
                retry_failures and op.key is not None and (result.status or 0) >= 500):
            return op  # a 4xx (402...) stays a 4xx
        if op.key is None and result.outcome == INDETERMINATE:
            return op  # no key: a retry would be a new operation
        if time.monotonic() > deadline:
            return op
        await asyncio.sleep(pause if result.outcome != BUSY else max(pause, 0.5))


# The guarantees catalog's fallback chain (conftest.py `pricing`): what each of its models
# charges. The primary is the cheaper, so every one of its replies settles a trimmed hold
# (the hold is the dearest member's), and a provider fault makes the fallback answer.
CHAIN = "chain-mini"
CHAINS: dict[str, dict[str, int]] = {CHAIN: {CHAIN: 1, "gpt-4o": 5}}


def new_op(history: History, account: Account, model: str, cost: int, *, stream: bool = False,
           keyed: bool = True, prefix: str = "op") -> Op:
    op_id = f"{prefix}-{uuid.uuid4().hex[:16]}"
    return history.op(op_id, account.workspace_id, cost, stream=stream,
                      key=f"key-{op_id}" if keyed else None, model=model,
                      prices=CHAINS.get(model))


def make_client(url: str, timeout: float = 10.0) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=0)
    return httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits)


Mix = list[tuple[str, int]]  # (model, credits per reply) chosen in turn


async def load(url: str, history: History, accounts: list[Account], mix: Mix, *,
               until: float, concurrency: int = 8, stream_every: int = 3,
               deadline_slack: float = 30.0, retry_failures: bool = True,
               keyed: bool = True, client_timeout: float = 10.0,
               busy: Callable[[], bool] | None = None) -> None:
    """`concurrency` workers sending operations until `until` (and while `busy()`, e.g. a
    fault still in progress); each op is retried up to `deadline_slack` after that."""
    counter = iter(range(10**9))

    def going() -> bool:
        return time.monotonic() < until or (busy is not None and busy())

    async def worker() -> None:
        async with make_client(url, client_timeout) as client:
            while going():
                i = next(counter)
                account = accounts[i % len(accounts)]
                model, cost = mix[(i // len(accounts)) % len(mix)]  # every account gets each
                op = new_op(history, account, model, cost, stream=i % stream_every == 0,
                            keyed=keyed)
                deadline = max(until, time.monotonic()) + deadline_slack
                await run_op(client, op, account, deadline=deadline,
                             retry_failures=retry_failures)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def resolve(url: str, history: History, accounts: list[Account],
                  seconds: float = 30.0) -> None:
    """Retry every unresolved keyed operation (same key) on a healthy gateway."""
    by_id = {a.workspace_id: a for a in accounts}
    deadline = time.monotonic() + seconds
    async with make_client(url) as client:
        await asyncio.gather(*(
            run_op(client, op, by_id[op.workspace_id], deadline=deadline, retry_failures=True)
            for op in history.ops if op.outcome == INDETERMINATE and op.key is not None))
