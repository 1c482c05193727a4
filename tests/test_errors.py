"""SPEC.md's error table over raw HTTP: exact OpenAI shape, status and code, and in
every case no provider call, no ledger row and the balance unchanged."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests import harness
from tests.conftest import GatewayFactory
from tests.fake_provider import FakeProvider
from tests.harness import RunningGateway, running, sqlite_settings

CHAT = "/v1/chat/completions"
HELLO: list[Any] = [{"role": "user", "content": "hello"}]
OK_BODY: dict[str, Any] = {"model": "gpt-4o-mini", "messages": HELLO}


def assert_error(r: httpx.Response, status: int, code: str, *, type_: str | None = None,
                 param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert list(body) == ["error"]
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert error["code"] == code
    if type_ is not None:
        assert error["type"] == type_
    if param is not None:
        assert error["param"] == param
    return error


class Untouched:
    """Checks that a request left no trace: no provider call, no ledger row, same balance."""

    def __init__(self, gateway: RunningGateway, provider: FakeProvider, key: str, ws: str) -> None:
        self.gateway, self.provider, self.key, self.ws = gateway, provider, key, ws
        self.calls = provider.count()
        self.balance = gateway.balance(key)

    def check(self) -> None:
        assert self.provider.count() == self.calls
        assert self.gateway.ledger(self.ws) == []
        after = self.gateway.balance(self.key)
        assert after["balance"] == self.balance["balance"]
        assert after["reserved"] == 0


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, fake: FakeProvider) -> Iterator[RunningGateway]:
    """One gateway for the module (each test has its own workspace): error cases are many."""
    tmp = tmp_path_factory.mktemp("errors")
    pricing = tmp / "pricing.toml"
    pricing.write_text(harness.test_pricing(fake))
    with running(sqlite_settings(tmp, pricing)) as gw:
        yield gw


@pytest.fixture
def account(gateway: RunningGateway) -> tuple[str, str]:
    return gateway.workspace("free")


@pytest.fixture
def untouched(gateway: RunningGateway, provider: FakeProvider,
              account: tuple[str, str]) -> Iterator[Untouched]:
    ws, key = account
    state = Untouched(gateway, provider, key, ws)
    yield state
    state.check()


def post(gateway: RunningGateway, key: str | None, body: Any = None, *,
         content: bytes | None = None, headers: dict[str, str] | None = None,
         path: str = CHAT) -> httpx.Response:
    with gateway.client(key) as c:
        if content is not None:
            return c.post(path, content=content,
                          headers={"content-type": "application/json", **(headers or {})})
        return c.post(path, json=body, headers=headers)


# ---- 400: the body

@pytest.mark.parametrize(("content", "fragment"), [
    (b"{not json", "parse"),
    (b'{"model": "gpt-4o-mini", "messages": [', "parse"),
    (b"", "empty"),
    (b"   ", "empty"),
    (b"\xff\xfe{}", "parse"),
    (b"[1, 2]", "object"),
    (b'"a string"', "object"),
    (b"null", "object"),
    (b"42", "object"),
])
def test_unparseable_or_non_object_body(
    gateway: RunningGateway, account: tuple[str, str], untouched: Untouched,
    content: bytes, fragment: str,
) -> None:
    error = assert_error(post(gateway, account[1], content=content), 400, "invalid_request",
                         type_="invalid_request_error")
    assert fragment in error["message"].lower()


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": HELLO}, "model"),
    ({"model": None, "messages": HELLO}, "model"),
    ({"model": 5, "messages": HELLO}, "model"),
    ({"model": "", "messages": HELLO}, "model"),
    ({"model": ["gpt-4o"], "messages": HELLO}, "model"),
    ({"model": "gpt-4o-mini"}, "messages"),
    ({"model": "gpt-4o-mini", "messages": []}, "messages"),
    ({"model": "gpt-4o-mini", "messages": "hello"}, "messages"),
    ({"model": "gpt-4o-mini", "messages": {"role": "user"}}, "messages"),
    ({"model": "gpt-4o-mini", "messages": ["hello"]}, "messages[0]"),
    ({"model": "gpt-4o-mini", "messages": [{"content": "hi"}]}, "messages[0].role"),
    ({"model": "gpt-4o-mini", "messages": [{"role": "robot", "content": "hi"}]},
     "messages[0].role"),
    ({"model": "gpt-4o-mini", "messages": [{"role": "user"}]}, "messages[0].content"),
    ({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": 12}]},
     "messages[0].content"),
    ({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": ["text"]}]},
     "messages[0].content[0]"),
    ({**OK_BODY, "n": 0}, "n"),
    ({**OK_BODY, "n": 129}, "n"),
    ({**OK_BODY, "n": "2"}, "n"),
    ({**OK_BODY, "n": 2.5}, "n"),
    ({**OK_BODY, "n": True}, "n"),
    ({**OK_BODY, "stream": "yes"}, "stream"),
    ({**OK_BODY, "stream": 1}, "stream"),
    ({**OK_BODY, "stream_options": {"include_usage": True}}, "stream_options"),
    ({**OK_BODY, "stream": False, "stream_options": {"include_usage": True}}, "stream_options"),
    ({**OK_BODY, "stream": True, "stream_options": "usage"}, "stream_options"),
    ({**OK_BODY, "stream": True, "stream_options": {"include_usage": "yes"}},
     "stream_options.include_usage"),
    ({**OK_BODY, "metadata": "agent"}, "metadata"),
])
def test_bad_fields(
    gateway: RunningGateway, account: tuple[str, str], untouched: Untouched,
    body: dict[str, Any], param: str,
) -> None:
    assert_error(post(gateway, account[1], body), 400, "invalid_request",
                 type_="invalid_request_error", param=param)


@pytest.mark.parametrize("name", ["gpt-5-turbo", "GPT 4o", "bookbag-local-2", "x" * 5000])
def test_unknown_model(gateway: RunningGateway, account: tuple[str, str], untouched: Untouched,
                       name: str) -> None:
    error = assert_error(post(gateway, account[1], {"model": name, "messages": HELLO}), 400,
                         "model_not_found", type_="invalid_request_error", param="model")
    assert len(error["message"]) < 1000


def test_embedding_model_on_chat_is_refused(
    gateway: RunningGateway, account: tuple[str, str], untouched: Untouched
) -> None:
    assert_error(post(gateway, account[1], {"model": "text-embedding-3-small", "messages": HELLO}),
                 400, "invalid_request", param="model")


@pytest.mark.parametrize(("param", "value"), [
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
    ("response_format", {"type": "json_object"}),
    ("n", 2),
])
def test_parameter_the_local_model_cannot_honour(
    gateway: RunningGateway, account: tuple[str, str], untouched: Untouched,
    param: str, value: Any,
) -> None:
    body = {"model": "bookbag-local", "messages": HELLO, param: value}
    assert_error(post(gateway, account[1], body), 400, "unsupported_parameter", param=param)


def test_parameter_the_anthropic_route_cannot_honour(
    gateway: RunningGateway, account: tuple[str, str], untouched: Untouched
) -> None:
    body = {"model": "claude-haiku-4-5", "messages": HELLO, "max_tokens": 10, "logit_bias": {"1": 2}}
    assert_error(post(gateway, account[1], body), 400, "unsupported_parameter", param="logit_bias")


def test_byo_header_on_a_custom_api_base_model(
    gateway: RunningGateway, account: tuple[str, str], untouched: Untouched
) -> None:
    body = {"model": "custom-llm", "messages": HELLO}
    assert_error(post(gateway, account[1], body, headers={"X-Bookbag-Provider-Key": "sk-mine-1"}),
                 400, "byo_not_allowed", param="x-bookbag-provider-key")


def test_empty_byo_header(gateway: RunningGateway, account: tuple[str, str],
                          untouched: Untouched) -> None:
    assert_error(post(gateway, account[1], OK_BODY, headers={"X-Bookbag-Provider-Key": ""}),
                 400, "invalid_request")


def test_embeddings_bad_body(gateway: RunningGateway, account: tuple[str, str],
                             untouched: Untouched) -> None:
    key = account[1]
    assert_error(post(gateway, key, {"input": "x"}, path="/v1/embeddings"), 400, "invalid_request")
    assert_error(post(gateway, key, {"model": "text-embedding-3-small"}, path="/v1/embeddings"),
                 400, "invalid_request", param="input")
    assert_error(post(gateway, key, {"model": "nope", "input": "x"}, path="/v1/embeddings"),
                 400, "model_not_found")
    assert_error(post(gateway, key, {"model": "gpt-4o", "input": "x"}, path="/v1/embeddings"),
                 400, "invalid_request", param="model")
    assert_error(post(gateway, key, content=b"[", path="/v1/embeddings"), 400, "invalid_request")


# ---- 401 / 403: who is calling

@pytest.mark.parametrize("authorization", [
    None, "", "Bearer", "Basic Ym9iOnNlY3JldA==", "bk_no_scheme",
    "Bearer bk_unknownkey0000000000000000000000000000000", "Bearer sk-openai-style-key",
    "Bearer bk_" + "a" * 400,
])
def test_missing_or_unknown_key(gateway: RunningGateway, untouched: Untouched,
                                authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    with gateway.client() as c:
        for path, method in ((CHAT, "POST"), ("/v1/models", "GET"), ("/v1/balance", "GET"),
                             ("/v1/embeddings", "POST"), ("/v1/chat/completions/preview", "POST")):
            r = c.request(method, path, json=OK_BODY, headers=headers)
            assert_error(r, 401, "invalid_api_key", type_="invalid_request_error")


def test_key_is_checked_before_the_body(gateway: RunningGateway, untouched: Untouched) -> None:
    with gateway.client() as c:
        r = c.post(CHAT, json={"model": "nope"})
    assert_error(r, 401, "invalid_api_key")


def test_revoked_key_stops_within_seconds(gateway: RunningGateway, provider: FakeProvider) -> None:
    ws, _ = gateway.workspace("free")
    created = gateway.accounts.create_key(ws)
    with gateway.client(created.key) as c:
        assert c.post(CHAT, json=OK_BODY).status_code == 200
        gateway.accounts.revoke_key(created.id)
        deadline = time.monotonic() + 5
        while (r := c.post(CHAT, json=OK_BODY)).status_code == 200:
            assert time.monotonic() < deadline, "a revoked key still works after 5 s"
            time.sleep(0.1)
    assert_error(r, 401, "invalid_api_key")
    calls = provider.count()
    rows = len(gateway.ledger(ws))
    with gateway.client(created.key) as c:
        assert_error(c.post(CHAT, json=OK_BODY), 401, "invalid_api_key")
    assert provider.count() == calls and len(gateway.ledger(ws)) == rows


def test_read_scope_key_cannot_infer(gateway: RunningGateway, account: tuple[str, str],
                                     untouched: Untouched) -> None:
    key = gateway.key(account[0], scopes=("read",))
    with gateway.client(key) as c:
        for method, path in (("POST", CHAT), ("POST", "/v1/embeddings"),
                             ("POST", "/v1/chat/completions/preview"), ("GET", "/v1/models")):
            r = c.request(method, path, json=OK_BODY)
            assert_error(r, 403, "insufficient_scope", type_="permission_error")
        assert c.get("/v1/balance").status_code == 200


def test_inference_scope_key_cannot_read(gateway: RunningGateway, account: tuple[str, str],
                                         untouched: Untouched) -> None:
    key = gateway.key(account[0], scopes=("inference",))
    with gateway.client(key) as c:
        assert_error(c.get("/v1/balance"), 403, "insufficient_scope")


def test_admin_token_is_refused_on_v1(gateway: RunningGateway, untouched: Untouched) -> None:
    with gateway.client("admin-test-token") as c:
        assert_error(c.post(CHAT, json=OK_BODY), 401, "invalid_api_key")
        assert_error(c.get("/v1/balance"), 401, "invalid_api_key")
        assert_error(c.get("/v1/models"), 401, "invalid_api_key")


def test_suspended_workspace(gateway: RunningGateway, provider: FakeProvider) -> None:
    ws, key = gateway.workspace("free")
    with gateway.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE workspaces SET suspended = 1 WHERE id = ?", (ws,))
    with gateway.client(key) as c:
        r = c.post(CHAT, json=OK_BODY)
    assert_error(r, 403, "workspace_suspended")
    assert provider.count() == 0 and gateway.ledger(ws) == []


# ---- 404 / 405: routes

@pytest.mark.parametrize("path", ["/v1/images/generations", "/v1/completions", "/v1/audio/speech",
                                  "/v1/chat/completions/extra", "/v1/"])
def test_unknown_v1_route(gateway: RunningGateway, account: tuple[str, str],
                          untouched: Untouched, path: str) -> None:
    with gateway.client(account[1]) as c:
        error = assert_error(c.post(path, json=OK_BODY), 404, "not_found",
                             type_="invalid_request_error")
    assert "not supported" in error["message"]


def test_unknown_route_without_a_key_is_404(gateway: RunningGateway, untouched: Untouched) -> None:
    with gateway.client() as c:
        assert_error(c.get("/v1/images/generations"), 404, "not_found")


@pytest.mark.parametrize(("method", "path"), [
    ("GET", CHAT), ("PUT", CHAT), ("DELETE", "/v1/models"), ("POST", "/v1/balance"),
    ("GET", "/v1/embeddings"),
])
def test_wrong_method(gateway: RunningGateway, account: tuple[str, str], untouched: Untouched,
                      method: str, path: str) -> None:
    with gateway.client(account[1]) as c:
        assert_error(c.request(method, path), 405, "method_not_allowed")


# ---- 413 / 408: the body's size and pace

def test_body_over_the_limit(make_gateway: GatewayFactory, provider: FakeProvider) -> None:
    gateway = make_gateway(BOOKBAG_MAX_BODY_BYTES=2000)
    ws, key = gateway.workspace("free")
    state = Untouched(gateway, provider, key, ws)
    big = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 3000}]}
    assert_error(post(gateway, key, big), 413, "request_too_large")

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 500
        yield b'"}]}'

    with gateway.client(key) as c:
        r = c.post(CHAT, content=chunked(), headers={"content-type": "application/json"})
    assert_error(r, 413, "request_too_large")
    assert post(gateway, key, OK_BODY).status_code == 200  # under the limit: fine
    assert provider.count() == state.calls + 1


def raw_request(port: int, head: bytes, body: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body)
        data = b""
        while True:
            try:
                piece = sock.recv(65536)
            except TimeoutError:
                break
            if not piece:
                break
            data += piece
            if b"\r\n\r\n" in data:
                header, _, rest = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in header.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), None)
                if length is not None and len(rest) >= length:
                    break
        return data


def test_body_that_never_finishes_arriving(make_gateway: GatewayFactory,
                                           provider: FakeProvider) -> None:
    gateway = make_gateway(BOOKBAG_BODY_TIMEOUT=0.5)
    ws, key = gateway.workspace("free")
    state = Untouched(gateway, provider, key, ws)
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hel'
    head = (f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body) + 100}\r\n\r\n").encode()
    data = raw_request(gateway.port, head, body)
    status_line, _, rest = data.partition(b"\r\n")
    assert status_line.split()[1] == b"408", data
    payload = rest.partition(b"\r\n\r\n")[2]
    response = httpx.Response(408, content=payload, headers={"content-type": "application/json"})
    assert_error(response, 408, "request_timeout")
    state.check()


# ---- 402: the balance

def test_insufficient_credits(gateway: RunningGateway, provider: FakeProvider) -> None:
    ws, key = gateway.workspace("enterprise", custom_allotment=7)
    with gateway.client(key) as c:
        assert c.post(CHAT, json={"model": "gpt-4o", "messages": HELLO}).status_code == 200
    rows = gateway.wait_ledger(ws, 1)
    state = Untouched(gateway, provider, key, ws)
    period_end = state.balance["period_end"]
    with gateway.client(key) as c:
        r = c.post(CHAT, json={"model": "gpt-4o", "messages": HELLO})
        streamed = c.post(CHAT, json={"model": "gpt-4o-mini", "messages": HELLO, "n": 3,
                                      "stream": True})
    error = assert_error(r, 402, "insufficient_credits", type_="insufficient_quota")
    assert r.headers["x-should-retry"] == "false"
    assert r.headers["x-request-id"].startswith("req_")
    message = error["message"]
    assert "costs 5 credits" in message and "balance is 2" in message
    assert period_end in message
    stream_error = assert_error(streamed, 402, "insufficient_credits", type_="insufficient_quota")
    assert "costs 3 credits" in stream_error["message"]
    assert provider.count() == state.calls
    assert gateway.ledger(ws) == rows
    after = gateway.balance(key)
    assert (after["balance"], after["reserved"]) == (2, 0)
    with gateway.client(key) as c:  # what the balance covers still works
        assert c.post(CHAT, json={"model": "gpt-4o-mini", "messages": HELLO, "n": 2}).status_code \
            == 200
    assert gateway.balance(key)["balance"] == 0


def test_no_error_is_a_server_error(gateway: RunningGateway, account: tuple[str, str],
                                    untouched: Untouched) -> None:
    """Hostile bodies get a 4xx, never a 5xx."""
    key = account[1]
    bodies: list[Any] = [
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [{"type": 1}]}]},
        {"model": "gpt-4o-mini", "messages": [[]]},
        {"model": {"$ne": 1}, "messages": HELLO},
        {"model": "gpt-4o-mini", "messages": HELLO, "n": 10**30},
        {"model": "gpt-4o-mini", "messages": HELLO, "n": -1},
        {"model": "bookbag-local", "messages": HELLO, "temperature": "hot"},
        {"model": "bookbag-local", "messages": [{"role": "user", "content": None}]},
    ]
    for body in bodies:
        r = post(gateway, key, body)
        assert 400 <= r.status_code < 500, (body, r.text)
    deep = b'{"model": "gpt-4o-mini", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert 400 <= post(gateway, key, content=deep).status_code < 500


def test_a_bug_on_the_chat_route_is_an_openai_shaped_500_and_counted(
        gateway: RunningGateway, account: tuple[str, str], untouched: Untouched,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The chat route runs outside Starlette's error middleware (gateway/edge/asgi.py): an
    unexpected exception still answers the documented 500 body and reaches the metrics."""
    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(gateway.gw.pipeline, "chat", broken)
    r = post(gateway, account[1], OK_BODY)
    assert_error(r, 500, "internal_error")
    assert "a bug" not in r.text
    with gateway.client() as c:
        scraped = c.get("/metrics").text
    assert any(line.startswith("bookbag_requests_total{")
               and 'route="/v1/chat/completions"' in line and 'status="500"' in line
               for line in scraped.splitlines()), scraped
    untouched.check()
