"""The `bookbag-gateway` command: serve, and the operator commands on the same database.

Every command reads the same settings as the server (environment, then
flags) and prints a readable table, or JSON with `--json`. This module builds
the command tree: the root, its groups, and each module's commands, in the
order `--help` lists them; the commands live in one module per concern.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from gateway.cli import byo, caps, credits, db, keys, recharge, serve, usage, webhooks, workspaces
from gateway.cli.records import console
from gateway.settings import Settings

__all__ = ["app", "app_from_env", "console", "main"]  # console: tests narrow or widen it here

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="Bookbag Gateway: an OpenAI-compatible proxy that meters credits.")
workspace_app = typer.Typer(no_args_is_help=True, help="Create and inspect workspaces.")
key_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API keys.")
db_app = typer.Typer(no_args_is_help=True, help="Schema migrations (SQLite and PostgreSQL).")
byo_app = typer.Typer(no_args_is_help=True, help="Workspace BYO provider keys and toggle.")
recharge_app = typer.Typer(no_args_is_help=True, help="Auto-recharge settings.")
webhook_app = typer.Typer(no_args_is_help=True, help="Webhook endpoints and events.")
ledger_app = typer.Typer(no_args_is_help=True, help="Read the ledger.")
app.add_typer(workspace_app, name="workspace")
app.add_typer(key_app, name="key")
app.add_typer(db_app, name="db")
app.add_typer(byo_app, name="byo")
app.add_typer(recharge_app, name="recharge")
app.add_typer(webhook_app, name="webhook")
app.add_typer(ledger_app, name="ledger")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"bookbag-gateway {version('bookbag-gateway')}")
        raise typer.Exit()


@app.callback()
def root(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
         ) -> None:
    """Bookbag Gateway: an OpenAI-compatible proxy that meters credits."""


def app_from_env() -> Any:
    """The ASGI app as uvicorn builds it in each worker process."""
    from gateway.app import create_app  # noqa: TID251 -- serve starts the composition root

    return create_app(Settings.from_env(), tune_gc=True)


# workspace: create, list, plan, show, suspend, resume, set (gateway/cli/workspaces.py)
workspaces.register(workspace_app)
# key: create, list, revoke (gateway/cli/keys.py), then the spend caps (gateway/cli/caps.py)
keys.register(key_app)
caps.register(key_app)
# balance, topup, reconcile (gateway/cli/credits.py)
credits.register(app)
# db: upgrade, current, revision (gateway/cli/db.py)
db.register(db_app)
# byo, recharge, webhook (gateway/cli/byo.py, recharge.py, webhooks.py)
byo.register(byo_app)
recharge.register(recharge_app)
webhooks.register(webhook_app)
# usage and ledger export (gateway/cli/usage.py)
usage.register(app, ledger_app)
# serve: its checks and startup summary (gateway/cli/serve.py)
serve.register(app)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
