"""Schema migrations: on empty SQLite and PostgreSQL they build exactly the models' schema;
serve creates an empty database's schema and refuses an outdated one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect
from typer.testing import CliRunner

from gateway.cli.app import app
from gateway.storage import migrate
from gateway.storage.database import create_schema, make_engine
from gateway.storage.schema import metadata
from tests.conftest import GatewayFactory
from tests.postgres import fresh_database

HINT = "bookbag-gateway db upgrade"
runner = CliRunner()
NEW_REVISION_HINT = (
    "gateway/storage/schema/ and the migrations differ: run `bookbag-gateway db revision \"what changed\"`"
    " and review the file it writes in gateway/storage/migrations/versions/"
)


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    yield engine
    engine.dispose()


@pytest.fixture
def pg_engine() -> Iterator[Engine]:
    with fresh_database() as url:
        engine = make_engine(url)
        yield engine
        engine.dispose()


def schema_of(engine: Engine) -> dict[str, Any]:
    """Tables, their columns, indexes and unique constraints, as the database reports them."""
    insp = inspect(engine)
    out: dict[str, Any] = {}
    for table in sorted(insp.get_table_names()):
        if table == "alembic_version":
            continue
        out[table] = {
            "columns": sorted(c["name"] for c in insp.get_columns(table)),
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]))
                              for i in insp.get_indexes(table)),
            "unique": sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(table)),
            "primary_key": tuple(insp.get_pk_constraint(table)["constrained_columns"]),
        }
    return out


def diff(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        result: list[Any] = compare_metadata(context, metadata)
        return result


def models_schema(tmp_path: Path) -> dict[str, Any]:
    """What `create_all` makes from the models, on SQLite (the reference for the columns)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'models.db'}")
    metadata.create_all(engine)
    try:
        return schema_of(engine)
    finally:
        engine.dispose()


def test_a_database_without_the_schema_differs_from_the_models(sqlite_engine: Engine) -> None:
    # The comparison below is not vacuous: it sees every missing table.
    missing = {op[1].name for op in diff(sqlite_engine) if op[0] == "add_table"}
    assert missing == set(metadata.tables)


def test_migrations_build_the_models_schema_on_sqlite(sqlite_engine: Engine, tmp_path: Path) -> None:
    assert migrate.state(sqlite_engine) is migrate.SchemaState.EMPTY
    assert create_schema(sqlite_engine) is True
    assert migrate.current(sqlite_engine) == migrate.head()
    assert migrate.state(sqlite_engine) is migrate.SchemaState.CURRENT
    assert diff(sqlite_engine) == [], NEW_REVISION_HINT
    assert schema_of(sqlite_engine) == models_schema(tmp_path), NEW_REVISION_HINT
    assert create_schema(sqlite_engine) is False  # at head: nothing to do


def test_migrations_build_the_models_schema_on_postgresql(pg_engine: Engine,
                                                           sqlite_engine: Engine) -> None:
    assert create_schema(pg_engine) is True
    assert migrate.current(pg_engine) == migrate.head()
    assert diff(pg_engine) == [], NEW_REVISION_HINT
    create_schema(sqlite_engine)
    # Same tables, columns, indexes and unique constraints on both databases (names of
    # unnamed unique constraints are the database's own, so compare their columns).
    pg, lite = schema_of(pg_engine), schema_of(sqlite_engine)
    assert pg.keys() == lite.keys()
    for table in pg:
        assert pg[table]["columns"] == lite[table]["columns"], table
        assert pg[table]["primary_key"] == lite[table]["primary_key"], table
        assert {i for i in pg[table]["indexes"] if i[0].startswith("ix_")} == \
            {i for i in lite[table]["indexes"] if i[0].startswith("ix_")}, table
        pg_unique = set(pg[table]["unique"]) | {i[1] for i in pg[table]["indexes"] if i[2]}
        lite_unique = set(lite[table]["unique"]) | {i[1] for i in lite[table]["indexes"] if i[2]}
        assert pg_unique == lite_unique, table


def test_every_revision_downgrades_and_upgrades_again(sqlite_engine: Engine) -> None:
    migrate.upgrade(sqlite_engine)
    with sqlite_engine.begin() as conn:
        command.downgrade(migrate._config(conn), "base")
    assert migrate.state(sqlite_engine) is migrate.SchemaState.EMPTY
    assert migrate.upgrade(sqlite_engine) == (None, migrate.head())
    assert diff(sqlite_engine) == []


def outdate(engine: Engine) -> None:
    """Bring a database back to the first revision, as an older gateway left it."""
    migrate.upgrade(engine)
    with engine.begin() as conn:
        command.downgrade(migrate._config(conn), migrate.BASELINE)


def test_an_outdated_database_is_refused_until_db_upgrade(sqlite_engine: Engine) -> None:
    outdate(sqlite_engine)
    assert migrate.state(sqlite_engine) is migrate.SchemaState.OUTDATED
    with pytest.raises(migrate.SchemaOutdated, match=HINT):
        create_schema(sqlite_engine)
    assert migrate.upgrade(sqlite_engine) == (migrate.BASELINE, migrate.head())
    assert create_schema(sqlite_engine) is False
    assert diff(sqlite_engine) == []


def test_a_database_made_before_migrations_is_adopted_by_db_upgrade(sqlite_engine: Engine) -> None:
    outdate(sqlite_engine)
    with sqlite_engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE alembic_version")  # as the create_all era left it
    assert migrate.state(sqlite_engine) is migrate.SchemaState.UNVERSIONED
    with pytest.raises(migrate.SchemaOutdated, match=HINT):
        create_schema(sqlite_engine)
    migrate.upgrade(sqlite_engine)
    assert migrate.state(sqlite_engine) is migrate.SchemaState.CURRENT
    assert diff(sqlite_engine) == []


def test_a_database_from_a_newer_gateway_is_refused(sqlite_engine: Engine) -> None:
    migrate.upgrade(sqlite_engine)
    with sqlite_engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    assert migrate.state(sqlite_engine) is migrate.SchemaState.AHEAD
    with pytest.raises(migrate.SchemaOutdated, match="newer gateway"):
        create_schema(sqlite_engine)
    with pytest.raises(migrate.SchemaOutdated, match="newer gateway"):
        migrate.upgrade(sqlite_engine)


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60, check=False)


def test_serve_refuses_an_outdated_database_and_db_upgrade_fixes_it(
    sqlite_engine: Engine, tmp_path: Path, pricing: Path
) -> None:
    outdate(sqlite_engine)
    env = {"BOOKBAG_DATABASE_URL": str(sqlite_engine.url), "BOOKBAG_PRICING": str(pricing)}
    refused = cli("serve", "--port", "1", env=env)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    message = " ".join(refused.stderr.split())
    assert HINT in message and "needs" in message, message
    assert migrate.state(sqlite_engine) is migrate.SchemaState.OUTDATED  # serve changed nothing

    url = env["BOOKBAG_DATABASE_URL"]
    upgraded = runner.invoke(app, ["db", "upgrade", "--json", "--database-url", url])
    assert upgraded.exit_code == 0, upgraded.output
    assert json.loads(upgraded.stdout) == {"from": migrate.BASELINE, "to": migrate.head(),
                                           "changed": True}
    current = runner.invoke(app, ["db", "current", "--json", "--database-url", url])
    assert json.loads(current.stdout) == {"revision": migrate.head(), "head": migrate.head(),
                                          "state": "current"}


def test_the_gateway_refuses_to_start_on_an_outdated_database(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'gateway.db'}")  # the harness's database
    outdate(engine)
    engine.dispose()
    with pytest.raises(migrate.SchemaOutdated, match=HINT):
        make_gateway()


def test_db_upgrade_creates_the_schema_of_an_empty_postgresql_database(pg_engine: Engine) -> None:
    url = pg_engine.url.render_as_string(hide_password=False)
    result = runner.invoke(app, ["db", "upgrade", "--database-url", url])
    assert result.exit_code == 0, result.output
    assert migrate.state(pg_engine) is migrate.SchemaState.CURRENT
    again = runner.invoke(app, ["db", "upgrade", "--json", "--database-url", url])
    assert json.loads(again.stdout)["changed"] is False


def test_db_upgrade_of_an_unreachable_database_says_so() -> None:
    url = "postgresql://postgres@127.0.0.1:1/nowhere"
    result = runner.invoke(app, ["db", "upgrade", "--database-url", url])
    assert result.exit_code == 2
    assert "database error" in result.stderr and "Traceback" not in result.output


def test_the_head_the_server_reads_is_alembics_head() -> None:
    """The server reads the scripts' revision lines instead of importing alembic: same answer."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(migrate._config())
    assert migrate.head() == scripts.get_current_head()
    assert set(migrate._revisions()) == {s.revision for s in scripts.walk_revisions()}
    for script in scripts.walk_revisions():
        assert migrate._revisions()[script.revision] == script.down_revision


def test_serving_does_not_import_alembic(tmp_path: Path) -> None:
    """A gateway whose database is at head starts without alembic in memory (~11 MB)."""
    url = f"sqlite:///{tmp_path / 'g.db'}"
    engine = make_engine(url)
    create_schema(engine)  # an empty database: migrated (alembic runs here, in this process)
    engine.dispose()
    code = (
        "import sys\n"
        "import gateway.app, gateway.cli\n"
        "from gateway.storage.database import create_schema, make_engine\n"
        f"engine = make_engine({url!r})\n"
        "assert create_schema(engine) is False\n"  # at head: checked, nothing to create
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'mako')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_0008_adds_key_expiry_and_keeps_existing_keys_unexpiring(sqlite_engine: Engine) -> None:
    migrate.upgrade(sqlite_engine)
    with sqlite_engine.begin() as conn:
        command.downgrade(migrate._config(conn), "0007")
        conn.exec_driver_sql(
            "INSERT INTO workspaces (id, name, plan, anchor_date, suspended, byo_enabled, created_ms) "
            "VALUES ('ws_a', 'a', 'free', '2026-01-01', 0, 0, 1)")
        conn.exec_driver_sql(
            "INSERT INTO api_keys (id, workspace_id, key_hash, prefix, scopes, created_ms) "
            "VALUES ('key_a', 'ws_a', 'h', 'bk_', 'inference', 1)")
    migrate.upgrade(sqlite_engine)
    with sqlite_engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT id, expires_ms FROM api_keys").fetchall()
    assert [tuple(r) for r in rows] == [("key_a", None)]
    assert diff(sqlite_engine) == []
