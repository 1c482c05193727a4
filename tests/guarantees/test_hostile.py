"""Hostile and malformed input (DESIGN invariant 10): the documented OpenAI-shaped error, never a
5xx, and no provider call, no hold, no charge.

A table of requests — bodies, headers, auth, methods, and raw-socket framing
(bare CR/LF and NUL in headers, folded headers, bad Content-Length, a body
sent one byte a second, bodies over the limit) — each with the status and
code it must get. Then schemathesis fuzzes every operation of the gateway's
own `/openapi.json` (never a 5xx), and a second pass with the catalog's model
ids so that some completions succeed: the ledger then has exactly one reply
entry per 200 the fuzzer saw on `POST /v1/chat/completions` (replays aside).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error

from gateway.accounts.keyring import generate_key
from tests.fake_provider import FakeProvider
from tests.guarantees.history import Figures
from tests.harness import RunningGateway, running, sqlite_settings
from tests.relay_pricing import relay_only_pricing

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
RESPONSES = "/v1/responses"
HELLO = [{"role": "user", "content": "hello"}]
LIMIT = 1024 * 1024
ADMIN = "admin-test-token"  # sqlite_settings' admin token


def j(value: Any) -> bytes:
    return orjson.dumps(value)


def chat(**fields: Any) -> bytes:
    return j({"model": "gpt-4o-mini", "messages": HELLO, **fields})


@dataclass(frozen=True)
class Case:
    """One hostile request. `raw` is sent as is on a socket ({key} is the workspace key)."""

    name: str
    status: int
    code: str
    body: bytes | None = None
    headers: dict[str, str] | None = None
    method: str = "POST"
    path: str = CHAT
    auth: str | None = "key"  # "key" | "read" | "admin" | a literal header value | None
    raw: bytes | None = None


def _raw(headers: bytes, body: bytes = b'{"model": "gpt-4o-mini"}', length: bytes | None = None
         ) -> bytes:
    size = str(len(body)).encode() if length is None else length
    return (b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n" + headers
            + b"Content-Length: " + size + b"\r\nConnection: close\r\n\r\n" + body)


DEEP = b'{"model": "gpt-4o-mini", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
DEEP_FORWARD = (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], '
                b'"tools": ' + b"[" * 300 + b"]" * 300 + b"}")

CASES = [
    # --- the body
    Case("bad JSON", 400, "invalid_request", b'{"model": "gpt-4o-mini", "messages": ['),
    Case("empty body", 400, "invalid_request", b""),
    Case("array body", 400, "invalid_request", b"[1, 2]"),
    Case("string body", 400, "invalid_request", b'"hello"'),
    Case("null body", 400, "invalid_request", b"null"),
    Case("missing model", 400, "invalid_request", j({"messages": HELLO})),
    Case("model is a number", 400, "invalid_request", j({"model": 4, "messages": HELLO})),
    Case("model is an object", 400, "invalid_request", j({"model": {"$ne": 1}, "messages": HELLO})),
    Case("missing messages", 400, "invalid_request", j({"model": "gpt-4o-mini"})),
    Case("messages is a string", 400, "invalid_request", chat(messages="hello")),
    Case("messages is empty", 400, "invalid_request", chat(messages=[])),
    Case("message is not an object", 400, "invalid_request", chat(messages=[[]])),
    Case("unknown role", 400, "invalid_request", chat(messages=[{"role": "root", "content": "x"}])),
    Case("content is a number", 400, "invalid_request",
         chat(messages=[{"role": "user", "content": 7}])),
    Case("content part without type", 400, "invalid_request",
         chat(messages=[{"role": "user", "content": [{"text": "x"}]}])),
    Case("unknown model", 400, "model_not_found", chat(model="gpt-5-ultra")),
    Case("100k-character model", 400, "model_not_found", chat(model="m" * 100_000)),
    Case("embedding model on chat", 400, "invalid_request", chat(model="text-embedding-3-small")),
    Case("stream is a string", 400, "invalid_request", chat(stream="yes")),
    Case("negative n", 400, "invalid_request", chat(n=-1)),
    Case("zero n", 400, "invalid_request", chat(n=0)),
    Case("giant n", 400, "invalid_request", b'{"model": "gpt-4o-mini", "messages": '
         b'[{"role": "user", "content": "x"}], "n": 100000000000000000000000000000}'),
    Case("fractional n", 400, "invalid_request", chat(n=1.5)),
    Case("boolean n", 400, "invalid_request", chat(n=True)),
    Case("number beyond float", 400, "invalid_request", b'{"model": "gpt-4o-mini", "messages": '
         b'[{"role": "user", "content": "x"}], "temperature": 1e400}'),
    Case("stream_options without stream", 400, "invalid_request",
         chat(stream_options={"include_usage": True})),
    Case("agent id with a path", 400, "invalid_request", chat(metadata={"agent_id": "../../etc"})),
    Case("duplicate keys (the last wins)", 400, "model_not_found",
         b'{"model": "gpt-4o-mini", "model": "no-such-model", "messages": '
         b'[{"role": "user", "content": "x"}]}'),
    Case("100k nested arrays", 400, "invalid_request", DEEP),
    Case("nested too deep to forward", 400, "invalid_request", DEEP_FORWARD),
    Case("non-UTF-8 bytes", 400, "invalid_request",
         b'{"model": "gpt-4o-mini\xff\xfe", "messages": [{"role": "user", "content": "x"}]}'),
    Case("lone surrogate", 400, "invalid_request",
         b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a\\ud800b"}]}'),
    Case("raw NUL in a string", 400, "invalid_request",
         b'{"model": "gpt-4o-mini\x00", "messages": [{"role": "user", "content": "x"}]}'),
    Case("tools on the local model", 400, "unsupported_parameter",
         j({"model": "bookbag-local", "messages": HELLO,
            "tools": [{"type": "function", "function": {"name": "f"}}]})),
    Case("provider key where BYO is not allowed", 400, "byo_not_allowed", chat(model="custom-llm"),
         headers={"X-Bookbag-Provider-Key": "sk-whatever"}),
    Case("blank provider key", 400, "invalid_request",
         raw=_raw(b"X-Bookbag-Provider-Key:   \r\n", body=chat())),
    # --- what would raise the provider's bill behind the fixed price (issue 12)
    Case("priority service tier", 400, "unsupported_parameter", chat(service_tier="priority")),
    Case("service tier is a number", 400, "invalid_request", chat(service_tier=3)),
    Case("hosted web search tool", 400, "unsupported_parameter",
         chat(tools=[{"type": "web_search"}])),
    Case("web_search_options", 400, "unsupported_parameter", chat(web_search_options={})),
    Case("max_tokens is a string", 400, "invalid_request", chat(max_tokens="all")),
    # --- read endpoints: input errors are 400, never "the database is unavailable"
    Case("usage window in year 9999", 400, "invalid_request", None, method="GET",
         path="/v1/usage?start=9999-12-31T00:00:00&end=9999-12-31T23:59:59-05:00", auth="read"),
    Case("ledger window in year 1", 400, "invalid_request", None, method="GET",
         path="/v1/ledger?start=0001-01-01&end=0001-01-05", auth="read"),
    Case("ledger cursor of 23 digits", 400, "invalid_request", None, method="GET",
         path="/v1/ledger?cursor=djE6OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk6MQ", auth="read"),
    # --- auth, headers, method, route
    Case("no Authorization", 401, "invalid_api_key", chat(), auth=None),
    Case("unknown key", 401, "invalid_api_key", chat(), auth="Bearer bk_" + "0" * 40),
    Case("Basic auth", 401, "invalid_api_key", chat(), auth="Basic dXNlcjpwYXNz"),
    Case("admin token on /v1", 401, "invalid_api_key", chat(), auth="admin"),
    Case("read-only key", 403, "insufficient_scope", chat(), auth="read"),
    Case("agent header with a path", 400, "invalid_request", chat(),
         headers={"X-Bookbag-Agent-Id": "../../etc/passwd"}),
    Case("256-character Idempotency-Key", 400, "invalid_request", chat(),
         headers={"Idempotency-Key": "k" * 256}),
    Case("Idempotency-Key with a control character", 400, "invalid_request", chat(),
         headers={"Idempotency-Key": "abc\x7fdef"}),
    Case("blank Idempotency-Key", 400, "invalid_request",
         raw=_raw(b"Idempotency-Key:  \t \r\n", body=chat())),
    Case("GET on completions", 405, "method_not_allowed", None, method="GET"),
    Case("DELETE on completions", 405, "method_not_allowed", None, method="DELETE"),
    Case("unsupported /v1 route", 404, "not_found", chat(), path="/v1/completions"),
    # --- framing, on a raw socket
    Case("bare CR in a header (injection)", 400, "invalid_request",
         raw=_raw(b"X-Request-Id: abc\rSet-Cookie: x=1\r\n")),
    Case("bare LF in a header (injection)", 400, "invalid_request",
         raw=_raw(b"X-Request-Id: abc\nSet-Cookie: x=1\r\n")),
    Case("NUL in a header", 400, "invalid_request", raw=_raw(b"X-Bookbag-Agent-Id: a\x00b\r\n")),
    Case("folded header line", 400, "invalid_request", raw=_raw(b"X-Request-Id: a\r\n folded\r\n")),
    Case("Content-Length not a number", 400, "invalid_request", raw=_raw(b"", length=b"abc")),
    Case("Content-Length negative", 400, "invalid_request", raw=_raw(b"", length=b"-5")),
    Case("body over the limit", 413, "request_too_large",
         chat(messages=[{"role": "user", "content": "x" * (LIMIT + 1)}])),
    Case("declared length over the limit", 413, "request_too_large",
         raw=_raw(b"", body=b"{}", length=str(LIMIT * 100).encode())),
]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, fake: FakeProvider
            ) -> Iterator[RunningGateway]:
    tmp = tmp_path_factory.mktemp("hostile")
    pricing = tmp / "pricing.toml"
    pricing.write_text(relay_only_pricing(fake))
    settings_ = sqlite_settings(tmp, pricing, BOOKBAG_BODY_TIMEOUT=1,
                                BOOKBAG_MAX_BODY_BYTES=LIMIT, BOOKBAG_SECRET_KEY=generate_key())
    with running(settings_) as gw:
        yield gw


@dataclass
class Target:
    gateway: RunningGateway
    workspace: str
    key: str
    read_key: str
    balance: dict[str, Any]


@pytest.fixture(scope="module")
def target(gateway: RunningGateway) -> Target:
    ws, key = gateway.workspace("free")
    read_key = gateway.key(ws, scopes=("read",))
    return Target(gateway, ws, key, read_key, gateway.balance(key))


def send_raw(port: int, data: bytes, *, pace: float = 0.0, timeout: float = 10.0) -> bytes:
    """Send bytes (one at a time every `pace` seconds if set); the whole response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            if pace:
                for i in range(len(data)):
                    sock.sendall(data[i:i + 1])
                    time.sleep(pace)
            else:
                sock.sendall(data)
        except OSError:
            pass  # the server answered and closed before the whole request went out
        received = b""
        while True:
            try:
                piece = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not piece:
                break
            received += piece
        return received


def parse_raw(data: bytes) -> httpx.Response:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines and lines[0].startswith(b"HTTP/1.1 "), data[:300]
    headers = [tuple(line.split(b":", 1)) for line in lines[1:] if b":" in line]
    return httpx.Response(int(lines[0].split()[1]), headers=[(k.strip(), v.strip())
                                                             for k, v in headers], content=body)


def assert_openai_error(r: httpx.Response, status: int, code: str, what: str) -> None:
    assert r.status_code == status, f"{what}: {r.status_code} {r.text[:300]}"
    assert r.headers.get("content-type", "").startswith("application/json"), what
    body = r.json()
    assert list(body) == ["error"], what
    assert set(body["error"]) == {"message", "type", "param", "code"}, what
    assert body["error"]["code"] == code, f"{what}: {body}"
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], what


def call(t: Target, case: Case) -> httpx.Response:
    if case.raw is not None:
        return parse_raw(send_raw(t.gateway.port, case.raw.replace(b"{key}", t.key.encode())))
    headers = {"content-type": "application/json", **(case.headers or {})}
    auth = {"key": f"Bearer {t.key}", "read": f"Bearer {t.read_key}",
            "admin": f"Bearer {ADMIN}"}.get(case.auth or "", case.auth)
    if auth is not None:
        headers["Authorization"] = auth
    with httpx.Client(base_url=t.gateway.url, timeout=30) as c:
        return c.request(case.method, case.path, content=case.body, headers=headers)


def assert_untouched(t: Target, provider: FakeProvider, calls: int) -> None:
    assert provider.count() == calls, "a hostile request reached the provider"
    assert t.gateway.ledger(t.workspace) == [], "a hostile request was recorded"
    after = t.gateway.balance(t.key)
    assert (after["balance"], after["reserved"]) == (t.balance["balance"], 0)


def test_the_table_has_enough_cases() -> None:
    assert len(CASES) >= 25
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_request(target: Target, provider: FakeProvider, case: Case) -> None:
    calls = provider.count()
    assert_openai_error(call(target, case), case.status, case.code, case.name)
    assert_untouched(target, provider, calls)


def test_a_body_sent_one_byte_a_second(target: Target, provider: FakeProvider) -> None:
    """BOOKBAG_BODY_TIMEOUT=1: the body must arrive within a second; a trickle gets 408."""
    calls = provider.count()
    body = chat()
    head = (f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {target.key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", target.gateway.port), timeout=10) as sock:
        sock.sendall(head)
        started = time.monotonic()
        received = b""
        sock.settimeout(1.0)
        for i in range(len(body)):
            try:
                sock.sendall(body[i:i + 1])
            except OSError:
                break
            try:
                received += sock.recv(65536)
            except TimeoutError:
                continue
            if received:
                break
        sock.settimeout(5)
        while b"\r\n\r\n" not in received or not received.endswith(b"}"):
            piece = sock.recv(65536)
            if not piece:
                break
            received += piece
    assert time.monotonic() - started < len(body), "the trickle was never cut off"
    assert_openai_error(parse_raw(received), 408, "request_timeout", "one byte a second")
    assert_untouched(target, provider, calls)


# --- schemathesis ------------------------------------------------------------------------


def _fuzz(url: str, document: dict[str, Any], headers_for: Any, examples: int,
          only: set[str] | None = None, fixed: bool = True) -> dict[tuple[str, str], list[int]]:
    """Every operation of the document, `examples` cases each; never a 5xx."""
    schema = schemathesis.openapi.from_dict(document)
    schema.config.update(base_url=url)
    seen: dict[tuple[str, str], list[int]] = {}
    replays = seen.setdefault(("replayed", CHAT), [])

    def fuzz(operation: Any) -> None:
        statuses = seen.setdefault((operation.method.upper(), operation.path), [])

        @given(case=operation.as_strategy())
        @settings(max_examples=examples, deadline=None, database=None, derandomize=fixed,
                  print_blob=True,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            response = case.call(headers=headers_for(operation.path), timeout=30)
            statuses.append(response.status_code)
            if response.headers.get("idempotent-replayed") in ("true", ["true"]):
                replays.append(response.status_code)
            case.validate_response(response, checks=(not_a_server_error,))

        run()

    for result in schema.get_all_operations():
        operation = result.ok()
        if only is None or operation.path in only:
            fuzz(operation)
    return seen


def _with_catalog_models(document: dict[str, Any], models: list[str]) -> dict[str, Any]:
    """The served document narrowed so that completions can succeed: a catalog model, plain
    messages, and a few Idempotency-Keys (so that some requests replay or conflict)."""
    request = document["components"]["schemas"]["ChatCompletionRequest"]
    request["properties"] = {
        "model": {"enum": models},
        "messages": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
            "type": "object", "required": ["role", "content"], "additionalProperties": False,
            "properties": {"role": {"enum": ["user", "system"]},
                           "content": {"type": "string", "maxLength": 40}}}},
        "stream": {"type": "boolean"},
        "n": {"type": "integer", "minimum": 1, "maximum": 3},
    }
    request["additionalProperties"] = False
    chat_op = document["paths"][CHAT]["post"]
    chat_op["parameters"] = [{"name": "Idempotency-Key", "in": "header", "required": False,
                              "schema": {"enum": ["key-a", "key-b", "key-c"]}}]
    return document


def _with_real_ids(document: dict[str, Any], ids: dict[str, str]) -> dict[str, Any]:
    """The served document with its path parameters narrowed to ids that exist, so that the
    admin operations' bodies reach their validation instead of a 404."""
    for item in document["paths"].values():
        for operation in item.values():
            for param in operation.get("parameters", []) if isinstance(operation, dict) else []:
                if param.get("in") == "path" and param.get("name") in ids:
                    param["schema"] = {"enum": [ids[param["name"]]]}
    return document


def _admin_ids(gw: RunningGateway) -> dict[str, str]:
    """A throwaway workspace (not the one whose ledger is checked), its key and webhook."""
    ws, _ = gw.workspace("free")
    with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {ADMIN}"},
                      timeout=10) as c:
        key = c.post(f"/admin/workspaces/{ws}/keys", json={}).json()
        hook = c.post(f"/admin/workspaces/{ws}/webhooks", json={"url": "https://hooks.example/h"})
    assert hook.status_code == 201, hook.text
    return {"workspace_id": ws, "key_id": key["id"], "endpoint_id": hook.json()["id"],
            "provider": "openai"}


def run_fuzzer(gw: RunningGateway, examples: int, success_examples: int, *, admin: bool,
               name: str, fixed: bool = True) -> None:
    """`fixed`: the same cases every run (CI); else new ones each run (hypothesis prints how
    to reproduce a failure)."""
    ws, key = gw.workspace("enterprise", custom_allotment=10**6)

    def headers_for(path: str) -> dict[str, str]:
        token = ADMIN if admin and path.startswith("/admin") else key
        return {"Authorization": f"Bearer {token}"}

    before = len(gw.ledger(None))
    document = httpx.get(gw.url + "/openapi.json", timeout=10).json()
    paths = None if admin else {p for p in document["paths"] if not p.startswith("/admin")}
    seen = _fuzz(gw.url, document, headers_for, examples, paths, fixed)
    operations = {(method.upper(), path) for path, item in document["paths"].items()
                  if paths is None or path in paths for method in item
                  if method in ("get", "post", "put", "patch", "delete")}
    unfuzzed = sorted(op for op in operations if not seen.get(op))
    assert not unfuzzed, f"operations of /openapi.json the fuzzer never called: {unfuzzed}"
    if admin:
        real = _fuzz(gw.url, _with_real_ids(document, _admin_ids(gw)), headers_for, examples,
                     {p for p in document["paths"] if p.startswith("/admin/") and "{" in p}, fixed)
        for op, statuses in real.items():
            seen.setdefault(op, []).extend(statuses)
        document = httpx.get(gw.url + "/openapi.json", timeout=10).json()
    models = [m["id"] for m in httpx.get(gw.url + "/v1/models", headers=headers_for("/v1"),
                                         timeout=10).json()["data"]
              if m.get("kind", "chat") == "chat"]
    more = _fuzz(gw.url, _with_catalog_models(document, models), headers_for, success_examples,
                 {CHAT}, fixed)
    for op, statuses in more.items():
        seen.setdefault(op, []).extend(statuses)
    # A reply is a 200 on any reply route (a fuzzed /v1/messages or /v1/responses can
    # succeed too).
    oks = sum(1 for route in (CHAT, MESSAGES, RESPONSES)
              for s in seen.get(("POST", route), []) if s == 200)
    replayed = len(seen[("replayed", CHAT)])
    rows = gw.wait_ledger(ws, oks - replayed) if oks else []
    all_rows = gw.ledger(None)
    statuses = [s for op, ss in seen.items() if op[0] != "replayed" for s in ss]
    figures = Figures(name, ops=len(statuses), ok=oks, fail=sum(1 for s in statuses if s >= 400),
                      entries=len(all_rows) - before,
                      charged=sum(r["credits"] for r in rows),
                      extra={"operations": len(seen) - 1, "replayed": replayed,
                             "server_errors": sum(1 for s in statuses if s >= 500)})
    if len(all_rows) - before != oks - replayed:
        figures.violations.append(f"{oks} completions answered 200 ({replayed} replays) but "
                                  f"{len(all_rows) - before} ledger entries were written")
    figures.emit()
    figures.assert_clean()
    assert oks > 0, "no fuzzed completion succeeded: the ledger check proved nothing"


def test_schemathesis_never_a_server_error_and_the_ledger_matches(gateway: RunningGateway) -> None:
    run_fuzzer(gateway, examples=8, success_examples=40, admin=True, name="hostile-fuzz")


@pytest.mark.slow
def test_schemathesis_long(gateway: RunningGateway) -> None:
    run_fuzzer(gateway, examples=40, success_examples=200, admin=True, name="hostile-fuzz-long",
               fixed=False)
