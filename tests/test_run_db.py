"""`run_db`: a database call off the loop whose failure is a 503, on every route that reads or
writes the database (the operator API included), in the OpenAI error shape."""

from __future__ import annotations

import asyncio
import sqlite3

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from gateway.errors import InsufficientCredits, ServiceUnavailable
from gateway.storage.offload import BALANCES, is_database_error, run_db
from tests.harness import RunningGateway
from tests.lifecycle_support import admin


def fail(exc: BaseException) -> None:
    raise exc


def test_a_database_failure_becomes_a_503_naming_the_store() -> None:
    with pytest.raises(ServiceUnavailable) as caught:
        asyncio.run(run_db(fail, sqlite3.OperationalError("database is locked"), store=BALANCES))
    assert caught.value.message == "The balance store is unavailable; retry shortly."
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)


@pytest.mark.parametrize("exc", [InsufficientCredits("no credits"), ValueError("bad input"),
                                 KeyError("bug")])
def test_what_is_not_an_outage_passes_through(exc: Exception) -> None:
    with pytest.raises(type(exc)) as caught:
        asyncio.run(run_db(fail, exc))
    assert caught.value is exc


def test_the_result_comes_back_from_the_worker_thread() -> None:
    assert asyncio.run(run_db(lambda a, b: a + b, 2, 3)) == 5


def test_database_errors_are_recognised_by_driver_and_sqlalchemy() -> None:
    assert is_database_error(sqlite3.OperationalError("disk I/O error"))
    assert is_database_error(OperationalError("SELECT 1", {}, Exception("gone")))
    assert is_database_error(ConnectionRefusedError())
    assert not is_database_error(ValueError("x"))
    assert not is_database_error(RuntimeError("x"))


def test_a_database_failure_on_an_admin_route_is_a_503_in_the_openai_shape(
        gateway: RunningGateway) -> None:
    ws, _ = gateway.workspace("free")
    with gateway.engine.begin() as conn:  # the keys gone: every read of them fails in the database
        conn.exec_driver_sql("ALTER TABLE api_keys RENAME TO api_keys_elsewhere")
    try:
        with admin(gateway) as c:
            for r in (c.get(f"/admin/workspaces/{ws}/keys"),
                      c.post(f"/admin/workspaces/{ws}/keys", json={"scopes": ["read"]})):
                assert r.status_code == 503, r.text
                error = r.json()["error"]
                assert error == {"message": "The ledger database is unavailable; retry shortly.",
                                 "type": "api_error", "param": None,
                                 "code": "service_unavailable"}
    finally:
        with gateway.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE api_keys_elsewhere RENAME TO api_keys")
    with admin(gateway) as c:  # and the route answers again once the database does
        assert c.get(f"/admin/workspaces/{ws}/keys").status_code == 200


def test_operator_errors_keep_their_status(gateway: RunningGateway) -> None:
    """Only database failures become 503: an unknown workspace stays a 404, no token a 401."""
    with admin(gateway) as c:
        assert c.get("/admin/workspaces/ws_nope").status_code == 404
    assert httpx.get(gateway.url + "/admin/workspaces").status_code == 401
