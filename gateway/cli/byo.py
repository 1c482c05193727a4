"""`bookbag-gateway byo ...`: a workspace's own provider keys, their toggle, and the
re-encryption of every stored secret under a new BOOKBAG_SECRET_KEY."""

from __future__ import annotations

from typing import Annotated

import typer

from gateway.accounts.keyring import generate_key
from gateway.cli.context import attempt, open_operations
from gateway.cli.options import DbFlag, JsonFlag, PricingFlag, Ws
from gateway.cli.records import emit


def set_(
    workspace: Ws, provider: Annotated[str, typer.Argument(help="openai, anthropic, ...")],
    key: Annotated[str, typer.Option(prompt="Provider key", hide_input=True,
                                     help="Prompted for (hidden) when omitted.")],
    as_json: JsonFlag = False, database_url: DbFlag = None, pricing: PricingFlag = None,
) -> None:
    """Store the workspace's key for a provider (encrypted; only its fingerprint is shown)."""
    o = open_operations(database_url, pricing)
    stored = attempt(lambda: o.byo.set_key(workspace, provider, key, actor="cli"))
    emit({"workspace_id": workspace, "provider": stored.provider,
          "fingerprint": stored.fingerprint}, as_json, "BYO key stored")


def delete(workspace: Ws, provider: str, as_json: JsonFlag = False,
           database_url: DbFlag = None) -> None:
    """Delete the workspace's key for a provider."""
    o = open_operations(database_url)
    deleted = attempt(lambda: o.byo.delete_key(workspace, provider))
    emit({"workspace_id": workspace, "provider": provider, "deleted": deleted}, as_json,
         "BYO key")


def list_(workspace: Ws, as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
    """The toggle and the stored keys' fingerprints."""
    o = open_operations(database_url)
    status = attempt(lambda: o.byo.status(workspace))
    if as_json:
        emit(status, True, None)
    else:
        emit({"workspace_id": workspace, "enabled": status["enabled"]}, False, "BYO")
        emit(status["keys"], False, "stored keys")


def _set_enabled(workspace: str, enabled: bool, as_json: bool, database_url: str | None) -> None:
    o = open_operations(database_url)
    attempt(lambda: o.byo.set_enabled(workspace, enabled))
    emit(attempt(lambda: o.byo.status(workspace)), as_json, "BYO")


def enable(workspace: Ws, as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
    """Turn BYO on: replies on models of providers with a stored key use it, uncharged."""
    _set_enabled(workspace, True, as_json, database_url)


def disable(workspace: Ws, as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
    """Turn BYO off (the stored keys are kept)."""
    _set_enabled(workspace, False, as_json, database_url)


def rotate(as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
    """Re-encrypt every stored secret under the first key of BOOKBAG_SECRET_KEY."""
    o = open_operations(database_url)
    keys = attempt(o.byo.rotate)
    secrets = attempt(o.webhooks.rotate)
    emit({"byo_keys": keys, "webhook_secrets": secrets}, as_json, "re-encrypted")


def generate() -> None:
    """Print a new key for BOOKBAG_SECRET_KEY."""
    print(generate_key())


def register(byo_app: typer.Typer) -> None:
    """The `byo` group's commands, in the order `--help` lists them."""
    byo_app.command("set")(set_)
    byo_app.command("delete")(delete)
    byo_app.command("list")(list_)
    byo_app.command("enable")(enable)
    byo_app.command("disable")(disable)
    byo_app.command("rotate")(rotate)
    byo_app.command("generate-key")(generate)
