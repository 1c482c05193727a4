"""The flags every operator command shares, and how an operator error names them.

An error about a bad input speaks the CLI's language: the flag the operator
typed (`--cap`), not the API field behind it (`monthly_cap`).
"""

from __future__ import annotations

from typing import Annotated

import typer

from gateway.accounts.operator_input import InputError

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
DbFlag = Annotated[str | None, typer.Option("--database-url", help="Overrides BOOKBAG_DATABASE_URL.")]
PricingFlag = Annotated[str | None, typer.Option("--pricing", help="Overrides BOOKBAG_PRICING.")]
Ws = Annotated[str, typer.Argument(help="The workspace id.")]

# The API's field names as the CLI's flags say them (errors speak the CLI's language).
FLAGS = {"name": "NAME", "anchor_date": "--anchor", "credits": "--credits", "plan": "PLAN",
         "threshold": "--threshold", "amount": "--amount", "monthly_cap": "--cap",
         "events": "--event", "scopes": "--scope", "kind": "--kind", "agent_id": "--agent",
         "model": "--model", "rate_limit": "--rate-limit", "ref": "--ref"}


def cli_message(exc: Exception, **flags: str) -> str:
    """An operator error as one line; a bad input names the CLI flag, not the API field."""
    if isinstance(exc, InputError):
        base, _, index = exc.field.partition("[")
        flag = flags.get(base) or FLAGS.get(base) or exc.field
        return exc.for_flag(flag + (f" (item {int(index.rstrip(']')) + 1})" if index else ""))
    return str(exc)
