"""Schema migrations (Alembic, in `gateway/storage/migrations/`), on SQLite and PostgreSQL alike.

`prepare(engine)` is what the server and the operator commands call: an
empty database gets the whole schema (the migrations up to head, which also
stamps it); a database at head passes; anything else is refused with
`SchemaOutdated`, whose message says to run `bookbag-gateway db upgrade`
(`upgrade(engine)`). Migrations run in one transaction under a lock (the
SQLite write lock, a PostgreSQL advisory lock), so gateways starting together
on one database apply them once.

A change to `gateway/storage/schema/` needs a revision: `bookbag-gateway db revision
"what changed"` writes one from the difference (tests/test_migrations.py
fails until it exists).
"""

from __future__ import annotations

import enum
import functools
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, create_engine, inspect, text
from sqlalchemy.exc import DBAPIError

from gateway.storage.schema import metadata

if TYPE_CHECKING:  # alembic (with mako) costs ~11 MB and ~0.1 s: imported only to migrate
    from alembic.config import Config

SCRIPTS = Path(__file__).resolve().parent / "migrations"
BASELINE = "0001"  # the schema as `create_all` made it before migrations existed
_PG_LOCK_KEY = 0x626F6F6B626167  # pg_advisory_xact_lock key: "bookbag"
UPGRADE_HINT = "run `bookbag-gateway db upgrade` (with the same BOOKBAG_DATABASE_URL) first"


class SchemaError(RuntimeError):
    """The schema cannot be used, checked or migrated; the message says what to do."""


class SchemaOutdated(SchemaError):
    """The database's schema is not the one this gateway was built for."""


class SchemaState(enum.StrEnum):
    EMPTY = "empty"  # none of the gateway's tables
    CURRENT = "current"  # at head
    OUTDATED = "outdated"  # an older revision: `db upgrade` brings it to head
    UNVERSIONED = "unversioned"  # tables made before migrations existed: `db upgrade` adopts them
    AHEAD = "ahead"  # a revision this gateway does not know: a newer gateway migrated it


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except DBAPIError as exc:  # unreachable, refused, or a migration the database rejected
        reason = str(exc.orig) if exc.orig is not None else type(exc).__name__
        raise SchemaError(f"database error: {reason.strip()}") from exc


def _config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


_ASSIGNMENT = re.compile(r"^(revision|down_revision)\s*(?::[^=]*)?=\s*(?:['\"]([\w-]+)['\"]|None)",
                         re.MULTILINE)


@functools.cache
def _revisions() -> dict[str, str | None]:
    """Each shipped revision and the one it follows, read from the scripts' assignments.

    The server only checks that a database is at head, so it reads these two lines of
    each script instead of importing alembic (tests/test_migrations.py compares the
    result with alembic's own reading).
    """
    found: dict[str, str | None] = {}
    for script in sorted((SCRIPTS / "versions").glob("*.py")):
        names = {m[1]: m[2] or None for m in _ASSIGNMENT.finditer(script.read_text())}
        if "revision" in names and names["revision"] is not None:
            found[names["revision"]] = names.get("down_revision")
    return found


def head() -> str:
    """The revision this code expects: the one no other revision follows."""
    revisions = _revisions()
    heads = set(revisions) - {down for down in revisions.values() if down is not None}
    if len(heads) != 1:  # pragma: no cover - the package always ships one line of revisions
        raise SchemaError(f"expected one head revision in {SCRIPTS}, found {sorted(heads)}")
    return heads.pop()


def _revision(conn: Connection) -> str | None:
    if "alembic_version" not in inspect(conn).get_table_names():
        return None
    found = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return None if found is None else str(found)


def _has_tables(conn: Connection) -> bool:
    present = set(inspect(conn).get_table_names())
    return any(name in present for name in metadata.tables)


def _known(revision: str) -> bool:
    return revision in _revisions()


def current(engine: Engine) -> str | None:
    """The database's revision; None when it has none (empty, or made before migrations)."""
    with _translated(), engine.connect() as conn:
        return _revision(conn)


def state(engine: Engine) -> SchemaState:
    with _translated(), engine.connect() as conn:
        revision = _revision(conn)
        if revision is None:
            return SchemaState.UNVERSIONED if _has_tables(conn) else SchemaState.EMPTY
    if revision == head():
        return SchemaState.CURRENT
    return SchemaState.OUTDATED if _known(revision) else SchemaState.AHEAD


def check(engine: Engine) -> SchemaState:
    """The database's state; raises SchemaOutdated unless it is empty or at head."""
    found = state(engine)
    if found is SchemaState.OUTDATED:
        raise SchemaOutdated(
            f"the database schema is at revision {current(engine)} and this gateway needs "
            f"{head()}: {UPGRADE_HINT}"
        )
    if found is SchemaState.UNVERSIONED:
        raise SchemaOutdated(
            f"the database was created before schema migrations existed: {UPGRADE_HINT}"
        )
    if found is SchemaState.AHEAD:
        raise SchemaOutdated(
            f"the database schema is at revision {current(engine)}, which this gateway does "
            f"not know (it needs {head()}): a newer gateway version migrated it; run that version"
        )
    return found


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Apply every migration up to head; returns (revision before, revision after)."""
    from alembic import command

    if state(engine) is SchemaState.AHEAD:
        check(engine)  # raises: never touch what a newer gateway wrote
    with _translated(), engine.begin() as conn:  # SQLite: the write lock (BEGIN IMMEDIATE)
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        before = _revision(conn)
        cfg = _config(conn)
        if before is None and _has_tables(conn):
            command.stamp(cfg, BASELINE)  # adopt a database `create_all` made
        command.upgrade(cfg, "head")
        after = _revision(conn)
    if after is None:  # pragma: no cover - alembic always stamps
        raise SchemaError("the migrations did not record a revision")
    return before, after


def prepare(engine: Engine) -> bool:
    """Create an empty database's schema (True), or check it is at head (False)."""
    if check(engine) is SchemaState.EMPTY:
        upgrade(engine)
        return True
    return False


def revision(message: str) -> Path:
    """Write the next revision from the difference between head and `gateway/storage/schema/`.

    For developers (an editable install): the difference is computed against a
    scratch SQLite database at head; review the file, and run the migration
    tests, which compare SQLite and PostgreSQL with the models.
    """
    from alembic import command

    number = len(_revisions()) + 1
    with tempfile.TemporaryDirectory() as scratch:
        engine = create_engine(f"sqlite:///{Path(scratch) / 'head.db'}")
        try:
            upgrade(engine)
            with engine.begin() as conn:
                script = command.revision(_config(conn), message=message, autogenerate=True,
                                          rev_id=f"{number:04d}")
        finally:
            engine.dispose()
    if script is None or isinstance(script, list):  # pragma: no cover - one head, one script
        raise SchemaError("alembic wrote no single revision")
    path = Path(script.path)
    for args in (["format"], ["check", "--fix", "--select", "I"]):  # the project's style
        subprocess.run([sys.executable, "-m", "ruff", *args, str(path)], capture_output=True,
                       check=False)
    return path
