"""`bookbag-gateway db upgrade | current | revision`: the schema's migrations."""

from __future__ import annotations

from typing import Annotated

import typer

from gateway.cli.context import fail, load_settings
from gateway.cli.options import DbFlag, JsonFlag
from gateway.cli.records import console, emit
from gateway.storage import migrate
from gateway.storage.database import make_engine


def upgrade(as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
    """Apply the schema migrations (creates the schema of an empty database)."""
    engine = make_engine(load_settings(database_url).database_url)
    try:
        before, after = migrate.upgrade(engine)
    except migrate.SchemaError as exc:
        fail(str(exc))
    finally:
        engine.dispose()
    emit({"from": before, "to": after, "changed": before != after}, as_json,
         "schema upgraded" if before != after else "schema already at head")


def current(as_json: JsonFlag = False, database_url: DbFlag = None) -> None:
    """Show the database's schema revision and the one this gateway needs."""
    engine = make_engine(load_settings(database_url).database_url)
    try:
        data = {"revision": migrate.current(engine), "head": migrate.head(),
                "state": str(migrate.state(engine))}
    except migrate.SchemaError as exc:
        fail(str(exc))
    finally:
        engine.dispose()
    emit(data, as_json, "schema")


def revision(message: Annotated[str, typer.Argument(help="What changed.")]) -> None:
    """(Developers) write the next migration from the change to gateway/storage/schema/."""
    console.print(f"wrote {migrate.revision(message)}: review it, then run the migration tests")


def register(db_app: typer.Typer) -> None:
    """The `db` group's commands; `revision` is for developers, hidden from `--help`."""
    db_app.command("upgrade")(upgrade)
    db_app.command("current")(current)
    db_app.command("revision", hidden=True)(revision)
