"""`bookbag-gateway webhook ...`: a workspace's endpoints, and its events' deliveries."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from gateway.cli.context import attempt, open_operations
from gateway.cli.options import DbFlag, JsonFlag, Ws
from gateway.cli.records import emit


def delivery_text(d: dict[str, Any]) -> str:
    """`wh_1: failed after 12 attempts (last error: HTTP 500)`."""
    attempts = f"{d['attempts']} attempt{'s' if d['attempts'] != 1 else ''}"
    text = f"{d['endpoint_id']}: {d['status']} after {attempts}"
    if d["status"] != "delivered" and d.get("last_error"):
        text += f" (last error: {d['last_error']})"
    return text


def create(
    workspace: Ws, url: Annotated[str, typer.Argument(help="Where events are POSTed.")],
    event: Annotated[list[str] | None, typer.Option(help="Only these event types.")] = None,
    as_json: JsonFlag = False, database_url: DbFlag = None,
) -> None:
    """Add an endpoint; prints its signing secret once."""
    o = open_operations(database_url)
    created = attempt(lambda: o.webhooks.create(workspace, url, event))
    emit({"id": created.id, "workspace_id": workspace, "url": created.url,
          "events": created.events, "secret": created.secret}, as_json,
         "webhook endpoint created: the secret is shown once")


def list_(workspace: Ws, as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
    """List a workspace's endpoints (secrets as fingerprints)."""
    o = open_operations(database_url)
    attempt(lambda: o.accounts.workspace(workspace))
    emit(o.webhooks.endpoints(workspace), as_json, "webhook endpoints")


def update(
    endpoint: Annotated[str, typer.Argument(help="The endpoint id (wh_...).")],
    url: Annotated[str | None, typer.Option()] = None,
    event: Annotated[list[str] | None, typer.Option(help="Only these event types.")] = None,
    enabled: Annotated[bool | None, typer.Option("--enable/--disable")] = None,
    as_json: JsonFlag = False, database_url: DbFlag = None,
) -> None:
    """Change an endpoint's URL, event types, or pause it."""
    o = open_operations(database_url)
    emit(attempt(lambda: o.webhooks.update(endpoint, url=url, events=event, enabled=enabled)),
         as_json, "webhook endpoint")


def delete(endpoint: str, as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
    """Remove an endpoint (its pending deliveries are dropped)."""
    o = open_operations(database_url)
    emit({"id": endpoint, "deleted": o.webhooks.delete(endpoint)}, as_json, "webhook endpoint")


def events(workspace: Ws, as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
    """The newest events of a workspace and how their deliveries stand."""
    o = open_operations(database_url)
    attempt(lambda: o.accounts.workspace(workspace))
    found = o.webhooks.events(workspace)
    if as_json:
        emit(found, True, None)
        return
    emit([{"id": e["id"], "type": e["type"], "created_ms": e["created_ms"],
           "deliveries": "; ".join(delivery_text(d) for d in e["deliveries"]) or "(none)"}
          for e in found], False, "webhook events")


def register(webhook_app: typer.Typer) -> None:
    """The `webhook` group's commands, in the order `--help` lists them."""
    webhook_app.command("create")(create)
    webhook_app.command("list")(list_)
    webhook_app.command("update")(update)
    webhook_app.command("delete")(delete)
    webhook_app.command("events")(events)

