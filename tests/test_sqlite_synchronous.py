"""BOOKBAG_SQLITE_SYNCHRONOUS: the embedded store's fsync policy. `full` (each commit
fsynced, the default) unless the operator chooses `normal`; anything else stops the start."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import Settings, SettingsError
from gateway.storage.database import make_engine

FULL, NORMAL = 2, 1  # what `PRAGMA synchronous` reads back


def synchronous(engine_url: str, **kwargs: str) -> int:
    engine = make_engine(engine_url, **kwargs)
    try:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql("PRAGMA synchronous").scalar_one())
    finally:
        engine.dispose()


def test_full_unless_the_operator_says_normal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    assert Settings.from_env({}).sqlite_synchronous == "full"
    assert synchronous(url) == FULL
    chosen = Settings.from_env({"BOOKBAG_SQLITE_SYNCHRONOUS": " Normal "}).sqlite_synchronous
    assert chosen == "normal"
    assert synchronous(url, synchronous=chosen) == NORMAL


@pytest.mark.parametrize("value", ["off", "extra", "0", "fast"])
def test_anything_else_is_refused_by_name(value: str) -> None:
    with pytest.raises(SettingsError, match="BOOKBAG_SQLITE_SYNCHRONOUS"):
        Settings.from_env({"BOOKBAG_SQLITE_SYNCHRONOUS": value})
