"""The admission dry-run (spend controls): every verdict a real request would meet, in the
order it would meet them, consuming nothing (no rate-limit token, no hold, no ledger row).

Checks: key expiry (401), workspace suspension (403), the key's rate limit (429), the
request's parameters (400: billed features the model's entry does not enable, parameters
the route cannot honour), then for metered requests the balance (402
insufficient_credits) and each spend cap (402 spend_cap_reached). `refusal` is the first
that fails: the error the request would get.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.accounts.key_expiry import check_expiry
from gateway.accounts.spend_caps import cap_view, refusal
from gateway.errors import Forbidden, GatewayError, RateLimited
from gateway.metering.base import insufficient
from gateway.types import Caller

if TYPE_CHECKING:
    from gateway.flow.pipeline import Pipeline


def _verdict(check: str, error: GatewayError | None, **detail: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"check": check, "ok": error is None, **detail}
    if error is not None:
        out.update(status=error.status, code=error.code, message=error.message)
    return out


async def dry_run(p: Pipeline, caller: Caller, preview: dict[str, Any]) -> dict[str, Any]:
    """`preview` (the flow's cost estimate) with the verdicts added."""
    verdicts = []
    try:
        check_expiry(caller.expires_ms, p.clock.now())
        expired = None
    except GatewayError as exc:
        expired = exc
    verdicts.append(_verdict("key_expiry", expired))
    verdicts.append(_verdict("suspension", Forbidden(
        "This workspace is suspended.", code="workspace_suspended") if caller.suspended else None))
    limit, seen = await p.limiter.peek(caller) if p.limiter is not None else (None, None)
    limited = None
    if limit is not None and seen is not None and not seen.allowed:
        limited = RateLimited(f"Rate limit reached for this key: {limit.requests} requests per "
                              f"{limit.seconds:g} seconds; retry after "
                              f"{seen.headers()['retry-after']} s.")
    verdicts.append(_verdict("rate_limit", limited,
                             remaining=None if seen is None else max(seen.remaining, 0)))
    parameters: GatewayError | None = preview.pop("parameters_refusal", None)
    verdicts.append(_verdict("parameters", parameters))
    cost = int(preview["credits_if_sent"])
    if preview["billing_mode"] == "metered":
        try:
            balance = await p.meter.balance(caller.workspace_id)
        except GatewayError as exc:
            verdicts.append(_verdict("balance", exc))
        else:
            short = cost > balance.available
            verdicts.append(_verdict("balance", insufficient(balance.available, cost,
                                                             balance.period_end) if short else None))
            if caller.caps:
                usage = await p.meter.cap_usage(caller.workspace_id, caller.caps)
                for cap in caller.caps:
                    used = usage[cap.subject]
                    over = refusal(cap, used, cost, balance.period_end) \
                        if used + cost > cap.credits else None
                    verdicts.append(_verdict(f"{cap.subject.partition(':')[0]}_cap", over,
                                             **cap_view(cap, used, balance.period_end)))
    failed = [v for v in verdicts if not v["ok"]]
    return {**preview, "verdicts": verdicts, "would_be_refused": bool(failed),
            "refusal": failed[0] if failed else None}
