"""Hostile input on the Responses and Messages routes (and count_tokens): a 4xx in the
route's dialect (OpenAI's error shape on /v1/responses, Anthropic's on /v1/messages*),
never a 5xx, never a traceback in the log, nothing charged and the balance unmoved
(SPEC "Three dialects, one meter"). Each table runs on `bookbag-local`, on an
OpenAI-backed model (Responses relayed, Messages translated), on an Anthropic-backed
model (Messages relayed, Responses translated) and on a chat-only upstream (both
translated).

Found by this file (each fixed where the check belongs): a `service_tier` list or object
on /v1/messages (and on chat) was a 500 (an unhashable value met a set lookup), as was a
Responses content part whose `type` was a list or object, and a chat message whose `role`
was one; a Messages `text` block whose text was not a string went to the upstream as is,
and a `system` block other than text was dropped on translated routes; `input_image`
fields of the wrong type reached the upstream or a vague 400; a request refused by the
HTTP parser under /v1/messages got OpenAI's error shape.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.fake_provider import FakeProvider
from tests.harness import RunningGateway, exchange, running_catalog, speaks_responses
from tests.messages.conftest import pricing_text as messages_pricing

LOCAL, OPENAI, ANTHROPIC, CHAT_ONLY = "bookbag-local", "gpt-4o-mini", "claude-haiku-4-5", "custom-llm"
MODELS = (LOCAL, OPENAI, ANTHROPIC, CHAT_ONLY)
MESSAGES, COUNT, RESPONSES = "/v1/messages", "/v1/messages/count_tokens", "/v1/responses"
HI: list[Any] = [{"role": "user", "content": "hi"}]
ANTHROPIC_TYPES = {"invalid_request_error", "authentication_error", "permission_error",
                   "not_found_error", "rate_limit_error", "api_error", "overloaded_error",
                   "billing_error"}


def pricing_text(fake: FakeProvider) -> str:
    """The Messages tests' catalog (two betas and a thinking cap on Claude), with
    gpt-4o-mini marked as OpenAI itself: Responses relayed to it."""
    return speaks_responses(messages_pricing(fake))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, fake: FakeProvider
            ) -> Iterator[RunningGateway]:
    with running_catalog(tmp_path_factory.mktemp("dialects-hostile"),
                         pricing_text(fake)) as gw:
        yield gw


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logged_errors() -> Iterator[list[logging.LogRecord]]:
    """What the gateway logged at ERROR (an unhandled exception is logged there) during the
    test; the fake provider's own server logs are left out."""
    handler = _Errors()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler.records
    root.removeHandler(handler)


def without_fake(records: list[logging.LogRecord]) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in records if not r.name.startswith("aiohttp")]


def send(gateway: RunningGateway, path: str, key: str, *, body: Any = None,
         content: bytes | None = None, headers: dict[str, str] | None = None,
         params: dict[str, str] | None = None) -> httpx.Response:
    sent = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    if path.startswith(MESSAGES):
        sent["anthropic-version"] = "2023-06-01"
    sent.update(headers or {})
    with httpx.Client(base_url=gateway.url, timeout=15) as c:
        return c.post(path, content=orjson.dumps(body) if content is None else content,
                      headers=sent, params=params)


def anthropic_error(r: httpx.Response, status: int, kind: str = "invalid_request_error") -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"type", "error"} and body["type"] == "error", body
    assert set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == kind, body
    message: str = body["error"]["message"]
    return message


def openai_error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    return error


class Books:
    """The workspace every refused request of this module is sent with, and what must hold
    after each: still no ledger entry, the balance never moved, nothing logged at ERROR by
    the gateway during the test. (One workspace for the module: a fresh one per test cost
    half the file's time; a request wrongly charged is still caught, by the first test
    after it at the latest.)"""

    def __init__(self, gateway: RunningGateway, account: tuple[str, str, int],
                 errors: list[logging.LogRecord]) -> None:
        self.gateway, self.errors = gateway, errors
        self.ws, self.key, self.balance = account

    def unmoved(self) -> None:
        assert self.gateway.ledger(self.ws) == []
        after = self.gateway.balance(self.key)
        assert after["balance"] == self.balance and after["reserved"] == 0, after
        assert without_fake(self.errors) == []


@pytest.fixture(scope="module")
def refused_account(gateway: RunningGateway) -> tuple[str, str, int]:
    ws, key = gateway.workspace("free")
    return ws, key, gateway.balance(key)["balance"]


@pytest.fixture
def books(gateway: RunningGateway, provider: FakeProvider,
          refused_account: tuple[str, str, int],
          logged_errors: list[logging.LogRecord]) -> Books:
    return Books(gateway, refused_account, logged_errors)


def refused_in_the_routes_shape(r: httpx.Response, path: str, provider: FakeProvider,
                                books: Books) -> None:
    """A 400 in the route's error shape; nothing reached a provider or the books."""
    if path == RESPONSES:
        openai_error(r, 400)
    else:
        anthropic_error(r, 400)
    assert provider.count() == 0
    books.unmoved()


_DROP = object()  # a field taken out of the body


def messages_body(model: str, fields: dict[str, Any] | None = None, **more: Any
                  ) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": 32, "messages": HI}
    for name, value in {**(fields or {}), **more}.items():
        if value is _DROP:
            body.pop(name, None)
        else:
            body[name] = value
    return body


def turn(*blocks: Any, role: str = "user") -> list[Any]:
    return [{"role": role, "content": list(blocks)}]


# (id, fields, a word the message names) -- refused by the gateway itself on every model
# and on both Messages routes, before anything reaches a provider.
MESSAGES_REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("text block: text an integer", {"messages": turn({"type": "text", "text": 5})}, "text"),
    ("text block: text null", {"messages": turn({"type": "text", "text": None})}, "text"),
    ("text block: no text", {"messages": turn({"type": "text"})}, "text"),
    ("block without type", {"messages": turn({"text": "x"})}, "type"),
    ("block a string", {"messages": turn("x")}, "type"),
    ("block type a list", {"messages": turn({"type": ["text"], "text": "x"})}, "type"),
    ("content an integer", {"messages": [{"role": "user", "content": 5}]}, "content"),
    ("content null", {"messages": [{"role": "user", "content": None}]}, "content"),
    ("content an object", {"messages": [{"role": "user", "content": {}}]}, "content"),
    ("role missing", {"messages": [{"content": "x"}]}, "role"),
    ("role a list", {"messages": [{"role": ["user"], "content": "x"}]}, "role"),
    ("role system", {"messages": [{"role": "system", "content": "x"}]}, "role"),
    ("message a string", {"messages": ["hi"]}, "messages.0"),
    ("messages an object", {"messages": {"role": "user"}}, "messages"),
    ("messages empty", {"messages": []}, "messages"),
    ("system an integer", {"system": 5}, "system"),
    ("system an object", {"system": {}}, "system"),
    ("system block text an integer", {"system": [{"type": "text", "text": 5}]}, "system.0.text"),
    ("system block without text", {"system": [{"type": "text"}]}, "system.0.text"),
    ("system image block", {"system": [{"type": "image", "source": {}}]}, "system.0"),
    ("system list of strings", {"system": ["x"]}, "system.0"),
    ("tools a string", {"tools": "x"}, "tools"),
    ("tools an object", {"tools": {"name": "x"}}, "tools"),
    ("tool a number", {"tools": [1]}, "tools.0"),
    ("tool a string", {"tools": ["lookup"]}, "tools.0"),
    ("stop_sequences a string", {"stop_sequences": "x"}, "stop_sequences"),
    ("tool_choice a string", {"tool_choice": "auto"}, "tool_choice"),
    ("tool_choice a list", {"tool_choice": [{"type": "auto"}]}, "tool_choice"),
    ("tool_choice without type", {"tool_choice": {}}, "tool_choice.type"),
    ("tool_choice type a list", {"tool_choice": {"type": ["auto"]}}, "tool_choice.type"),
    ("tool_choice unknown type", {"tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
    ("tool_choice tool without name", {"tool_choice": {"type": "tool"}}, "tool_choice.name"),
    ("thinking a string", {"thinking": "x"}, "thinking"),
    ("thinking a list", {"thinking": [1]}, "thinking"),
    ("metadata a string", {"metadata": "x"}, "metadata"),
    ("metadata.agent_id an integer", {"metadata": {"agent_id": 5}}, "agent_id"),
    ("metadata.agent_id a path", {"metadata": {"agent_id": "../../x"}}, "agent_id"),
    ("model empty", {"model": ""}, "model"),
    ("model an integer", {"model": 5}, "model"),
    ("model a list", {"model": [ANTHROPIC]}, "model"),
    ("model unknown", {"model": "no-such-model"}, "no-such-model"),
    ("model an embedding model", {"model": "text-embedding-3-small"}, "embedding"),
]
# Only on /v1/messages (count_tokens takes neither `max_tokens` nor `stream`, and runs
# no billing checks).
MESSAGES_ONLY_REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("max_tokens missing", {"max_tokens": _DROP}, "max_tokens"),
    ("max_tokens negative", {"max_tokens": -1}, "max_tokens"),
    ("max_tokens zero", {"max_tokens": 0}, "max_tokens"),
    ("max_tokens a float", {"max_tokens": 1.5}, "max_tokens"),
    ("max_tokens a whole float", {"max_tokens": 10.0}, "max_tokens"),
    ("max_tokens a boolean", {"max_tokens": True}, "max_tokens"),
    ("max_tokens a string", {"max_tokens": "10"}, "max_tokens"),
    ("max_tokens null", {"max_tokens": None}, "max_tokens"),
    ("stream a string", {"stream": "true"}, "stream"),
    ("stream a number", {"stream": 1}, "stream"),
    ("service_tier a list", {"service_tier": ["auto"]}, "service_tier"),
    ("service_tier an object", {"service_tier": {"tier": "auto"}}, "service_tier"),
    ("service_tier a number", {"service_tier": 5}, "service_tier"),
    ("service_tier priority", {"service_tier": "priority"}, "service_tier"),
    ("thinking budget a string", {"thinking": {"type": "enabled", "budget_tokens": "x"}},
     "thinking"),
    ("thinking without a budget", {"thinking": {"type": "enabled"}}, "thinking"),
    ("mcp_servers", {"mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}]},
     "mcp"),
    ("server tool", {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
     "web_search"),
    ("tool type an integer", {"tools": [{"type": 5, "name": "a"}]}, "tool"),
]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(("path", "fields", "hint"), [
    pytest.param(path, fields, hint, id=f"{route}-{name}")
    for path, route, table in ((MESSAGES, "messages", MESSAGES_REFUSED + MESSAGES_ONLY_REFUSED),
                               (COUNT, "count_tokens", MESSAGES_REFUSED))
    for name, fields, hint in table])
def test_bad_messages_input_is_an_anthropic_400(gateway: RunningGateway, provider: FakeProvider,
                                                books: Books, model: str, path: str,
                                                fields: dict[str, Any], hint: str) -> None:
    body = messages_body(model, fields)
    if path == COUNT:
        body.pop("max_tokens", None)
    message = anthropic_error(send(gateway, path, books.key, body=body), 400)
    assert hint.lower() in message.lower(), message
    assert provider.count() == 0
    books.unmoved()


@pytest.mark.parametrize("model", MODELS)
def test_a_refused_stream_is_a_json_400_too(gateway: RunningGateway, provider: FakeProvider,
                                            books: Books, model: str) -> None:
    body = messages_body(model, stream=True, messages=turn({"type": "text", "text": 5}))
    anthropic_error(send(gateway, MESSAGES, books.key, body=body), 400)
    body = {"model": model, "input": [{"role": "user", "content": [{"type": ["x"]}]}],
            "stream": True}
    openai_error(send(gateway, RESPONSES, books.key, body=body), 400)
    assert provider.count() == 0
    books.unmoved()


def item(*parts: Any, role: str = "user") -> list[Any]:
    return [{"role": role, "content": list(parts)}]


# (id, fields, the `param` of the error) -- refused by the gateway on every model.
RESPONSES_REFUSED: list[tuple[str, dict[str, Any], str | None]] = [
    ("no input", {"input": _DROP}, "input"),
    ("input an integer", {"input": 5}, "input"),
    ("input an object", {"input": {}}, "input"),
    ("input item a number", {"input": [1]}, "input[0]"),
    ("item type an integer", {"input": [{"type": 5}]}, "input[0].type"),
    ("message without role", {"input": [{"type": "message", "content": "x"}]},
     "input[0].role"),
    ("role a list", {"input": [{"role": ["user"], "content": "x"}]}, "input[0].role"),
    ("content null", {"input": [{"role": "user", "content": None}]}, "input[0].content"),
    ("content an integer", {"input": [{"role": "user", "content": 5}]}, "input[0].content"),
    ("part a number", {"input": item(5)}, "input[0].content[0]"),
    ("part a string", {"input": item("x")}, "input[0].content[0]"),
    ("part type a list", {"input": item({"type": ["input_text"], "text": "x"})},
     "input[0].content[0].type"),
    ("part type an object", {"input": item({"type": {"a": 1}})}, "input[0].content[0].type"),
    ("part type unknown", {"input": item({"type": "input_video"})},
     "input[0].content[0].type"),
    ("input_text text an integer", {"input": item({"type": "input_text", "text": 5})},
     "input[0].content[0].text"),
    ("input_image url an integer", {"input": item({"type": "input_image", "image_url": 5})},
     "input[0].content[0].image_url"),
    ("input_image url an object", {"input": item({"type": "input_image",
                                                  "image_url": {"url": "https://x/a.png"}})},
     "input[0].content[0].image_url"),
    ("input_image detail an integer", {"input": item({"type": "input_image", "detail": 5,
                                                     "image_url": "https://x/a.png"})},
     "input[0].content[0].detail"),
    ("input_image file_id a list", {"input": item({"type": "input_image", "file_id": ["f"]})},
     "input[0].content[0].file_id"),
    ("output_text without text", {"input": item({"type": "output_text"}, role="assistant")},
     "input[0].content[0].text"),
    ("function_call arguments an object", {"input": [
        {"type": "function_call", "call_id": "c", "name": "n", "arguments": {}}]},
     "input[0].arguments"),
    ("function_call_output without call_id", {"input": [
        {"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
    ("function_call_output output an object", {"input": [
        {"type": "function_call_output", "call_id": "c", "output": {}}]}, "input[0].output"),
    ("reasoning summary a string", {"input": [{"type": "reasoning", "summary": "x"}]},
     "input[0].summary"),
    ("tools a string", {"tools": "x"}, "tools"),
    ("tool a number", {"tools": [1]}, "tools[0]"),
    ("tool without type", {"tools": [{"name": "f"}]}, "tools[0].type"),
    ("function tool without name", {"tools": [{"type": "function"}]}, "tools[0].name"),
    ("function tool with a bad name", {"tools": [{"type": "function", "name": "bad name!"}]},
     "tools[0].name"),
    ("function tool parameters a string", {"tools": [
        {"type": "function", "name": "f", "parameters": "x"}]}, "tools[0].parameters"),
    ("tool_choice a number", {"tool_choice": 5}, "tool_choice"),
    ("tool_choice a list", {"tool_choice": ["auto"]}, "tool_choice"),
    ("tool_choice unknown mode", {"tool_choice": "sometimes"}, "tool_choice"),
    ("tool_choice without type", {"tool_choice": {}}, "tool_choice.type"),
    ("tool_choice function without name", {"tool_choice": {"type": "function"}},
     "tool_choice.name"),
    ("max_output_tokens negative", {"max_output_tokens": -1}, "max_output_tokens"),
    ("max_output_tokens zero", {"max_output_tokens": 0}, "max_output_tokens"),
    ("max_output_tokens 15", {"max_output_tokens": 15}, "max_output_tokens"),
    ("max_output_tokens a float", {"max_output_tokens": 16.0}, "max_output_tokens"),
    ("max_output_tokens a boolean", {"max_output_tokens": True}, "max_output_tokens"),
    ("max_output_tokens a string", {"max_output_tokens": "100"}, "max_output_tokens"),
    ("stream a string", {"stream": "true"}, "stream"),
    ("stream a number", {"stream": 1}, "stream"),
    ("stream_options without stream", {"stream_options": {}}, "stream_options"),
    ("metadata a string", {"metadata": "x"}, "metadata"),
    ("metadata value an integer", {"metadata": {"k": 5}}, "metadata.k"),
    ("metadata value null", {"metadata": {"k": None}}, "metadata.k"),
    ("metadata value an object", {"metadata": {"k": {"a": 1}}}, "metadata.k"),
    ("metadata with 17 pairs", {"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ("metadata.agent_id an integer", {"metadata": {"agent_id": 5}}, "metadata.agent_id"),
    ("instructions a list", {"instructions": []}, "instructions"),
    ("previous_response_id a number", {"previous_response_id": 5}, "previous_response_id"),
    ("background true", {"background": True}, "background"),
    ("background a string", {"background": "true"}, "background"),
    ("temperature a string", {"temperature": "x"}, "temperature"),
    ("temperature 3", {"temperature": 3}, "temperature"),
    ("reasoning a string", {"reasoning": "x"}, "reasoning"),
    ("reasoning effort unknown", {"reasoning": {"effort": "max"}}, "reasoning.effort"),
    ("text a string", {"text": "x"}, "text"),
    ("text.format without type", {"text": {"format": {}}}, "text.format.type"),
    ("json_schema without name", {"text": {"format": {"type": "json_schema"}}},
     "text.format.name"),
    ("include a string", {"include": "x"}, "include"),
    ("store a string", {"store": "x"}, "store"),
    ("truncation a number", {"truncation": 5}, "truncation"),
    ("service_tier a number", {"service_tier": 5}, "service_tier"),
    ("service_tier a list", {"service_tier": ["auto"]}, "service_tier"),
    ("parallel_tool_calls a string", {"parallel_tool_calls": "x"}, "parallel_tool_calls"),
    ("top_logprobs 50", {"top_logprobs": 50}, "top_logprobs"),
    ("model empty", {"model": ""}, "model"),
    ("model a number", {"model": 5}, "model"),
    ("model a list", {"model": [OPENAI]}, "model"),
]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(("fields", "param"), [
    pytest.param(fields, param, id=name) for name, fields, param in RESPONSES_REFUSED])
def test_bad_responses_input_is_an_openai_400(gateway: RunningGateway, provider: FakeProvider,
                                              books: Books, model: str,
                                              fields: dict[str, Any], param: str) -> None:
    body: dict[str, Any] = {"model": model, "input": "hi"}
    for name, value in fields.items():
        if value is _DROP:
            body.pop(name)
        else:
            body[name] = value
    error = openai_error(send(gateway, RESPONSES, books.key, body=body), 400)
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"
    assert provider.count() == 0
    books.unmoved()


RAW_BODIES: list[tuple[str, bytes]] = [
    ("an array", b"[1, 2]"),
    ("empty", b""),
    ("whitespace", b"  \n"),
    ("null", b"null"),
    ("a string", b'"hi"'),
    ("not JSON", b"{not json"),
    ("NaN", b'{"model": "%s", "max_tokens": NaN, "input": "hi", "messages": []}'),
    ("Infinity", b'{"model": "%s", "max_tokens": Infinity, "input": "hi", "messages": []}'),
    ("beyond a double", b'{"model": "%s", "temperature": 1e400, "input": "hi"}'),
    ("a lone surrogate", b'{"model": "%s", "max_tokens": 9, "input": "a\\ud800b", '
                         b'"messages": [{"role": "user", "content": "a\\ud800b"}]}'),
    ("not UTF-8", b'{"model": "%s\xff\xfe", "max_tokens": 9, "input": "hi"}'),
    ("nested too deep to forward", b'{"model": "%s", "max_tokens": 9, "input": "hi", "z": '
     + b"[" * 300 + b"]" * 300 + b"}"),
    ("nested past the parser", b'{"model": "%s", "z": ' + b"[" * 2000 + b"]" * 2000 + b"}"),
    ("duplicate keys, the last an unknown model",
     b'{"model": "%s", "model": "no-such-model", "max_tokens": 9, "input": "hi", '
     b'"messages": [{"role": "user", "content": "hi"}]}'),
]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("path", [MESSAGES, COUNT, RESPONSES])
@pytest.mark.parametrize("raw", [pytest.param(raw, id=name) for name, raw in RAW_BODIES])
def test_a_malformed_body_is_a_400_in_the_routes_shape(
        gateway: RunningGateway, provider: FakeProvider, books: Books, model: str, path: str,
        raw: bytes) -> None:
    r = send(gateway, path, books.key, content=raw.replace(b"%s", model.encode()))
    refused_in_the_routes_shape(r, path, provider, books)


@pytest.mark.parametrize("path", [MESSAGES, COUNT, RESPONSES])
def test_a_gzipped_body_is_refused_not_guessed(gateway: RunningGateway, provider: FakeProvider,
                                               books: Books, path: str) -> None:
    """No content-encoding is decoded: a gzipped body is not JSON, 400 in the route's shape."""
    body = orjson.dumps(messages_body(OPENAI, input="hi"))
    r = send(gateway, path, books.key, content=gzip.compress(body),
             headers={"content-encoding": "gzip"})
    refused_in_the_routes_shape(r, path, provider, books)


@pytest.mark.parametrize("path", [MESSAGES, COUNT, RESPONSES])
@pytest.mark.parametrize("header", [
    pytest.param(b"anthropic-version: 2023\x01-06-01\r\n", id="control character"),
    pytest.param(b"anthropic-beta: a\x00b\r\n", id="NUL"),
    pytest.param(b"X-Folded: a\r\n  b\r\n", id="folded line"),
    pytest.param(b"".join(b"X-H%d: v\r\n" % i for i in range(150)), id="too many headers"),
])
def test_a_request_the_http_parser_refuses_gets_the_routes_shape(
        gateway: RunningGateway, provider: FakeProvider, books: Books, path: str,
        header: bytes) -> None:
    body = orjson.dumps(messages_body(OPENAI, input="hi"))
    raw = exchange(gateway.port, b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                    b"Authorization: Bearer " + books.key.encode() + b"\r\n" + header
                    + b"Content-Type: application/json\r\nContent-Length: "
                    + str(len(body)).encode() + b"\r\n\r\n" + body)
    head, _, payload = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    assert status in (400, 431), raw
    error = orjson.loads(payload)
    if path == RESPONSES:
        assert set(error) == {"error"} and error["error"]["type"] == "invalid_request_error"
    else:
        assert error["type"] == "error" and set(error["error"]) == {"type", "message"}, error
        assert error["error"]["type"] == "invalid_request_error"
    assert provider.count() == 0
    books.unmoved()


# --- headers ------------------------------------------------------------------------------

BETAS = ["garbage", "a,,, ,b", ",".join(["x"] * 500),
         "interleaved-thinking-2025-05-14,not-allowed"]


@pytest.mark.parametrize("model", [OPENAI, ANTHROPIC])
@pytest.mark.parametrize("beta", BETAS)
def test_an_anthropic_beta_outside_the_allowlist_is_a_400(
        gateway: RunningGateway, provider: FakeProvider, books: Books, model: str,
        beta: str) -> None:
    r = send(gateway, MESSAGES, books.key, body=messages_body(model),
             headers={"anthropic-beta": beta})
    assert "not enabled" in anthropic_error(r, 400)
    assert provider.count() == 0
    books.unmoved()


@pytest.mark.parametrize("model", [OPENAI, ANTHROPIC])
@pytest.mark.parametrize("beta", BETAS)
def test_count_tokens_sends_only_allowed_betas(gateway: RunningGateway, provider: FakeProvider,
                                               books: Books, model: str, beta: str) -> None:
    """count_tokens is never charged: betas outside the allowlist are left out of the
    provider's count (Anthropic) or change nothing (an estimate)."""
    r = send(gateway, COUNT, books.key, body={"model": model, "messages": HI},
             headers={"anthropic-beta": beta})
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["input_tokens"], int)
    if model == ANTHROPIC:
        (sent,) = provider.received
        allowed = [b for b in sent.headers.get("anthropic-beta", "").split(",") if b]
        assert set(allowed) <= {"interleaved-thinking-2025-05-14"}, allowed
    else:
        assert provider.count() == 0 and r.json()["estimated"] is True
    books.unmoved()


@pytest.mark.parametrize("path", [MESSAGES, COUNT])
def test_two_different_keys_are_a_401(gateway: RunningGateway, provider: FakeProvider,
                                      books: Books, path: str) -> None:
    r = send(gateway, path, books.key, body=messages_body(ANTHROPIC),
             headers={"x-api-key": "bk_someone_else"})
    anthropic_error(r, 401, "authentication_error")
    assert provider.count() == 0
    books.unmoved()


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", {"model": OPENAI, "messages": HI}),
    (RESPONSES, {"model": OPENAI, "input": "hi"}),
])
def test_two_different_keys_are_a_401_on_the_openai_routes_too(
    gateway: RunningGateway, provider: FakeProvider, books: Books, path: str,
    body: dict[str, Any],
) -> None:
    """The SPEC's rule holds on every route: the same key in both headers is fine, two keys
    are a 401 (in the route's shape), and an x-api-key alone is no key on OpenAI's routes."""
    r = send(gateway, path, books.key, body=body, headers={"x-api-key": "bk_someone_else"})
    assert openai_error(r, 401)["code"] == "invalid_api_key"
    with gateway.client(books.key) as c:
        r = c.get("/v1/models", headers={"x-api-key": "bk_someone_else"})
        assert openai_error(r, 401)["code"] == "invalid_api_key"
        r = c.get("/v1/models", headers={"x-api-key": "bk_someone_else",
                                         "anthropic-version": "2023-06-01"})
        anthropic_error(r, 401, "authentication_error")
        r = c.get("/v1/balance", headers={"x-api-key": "bk_someone_else"})
        assert openai_error(r, 401)["code"] == "invalid_api_key"
    assert provider.count() == 0
    books.unmoved()
    with gateway.client(None) as c:
        r = c.post(path, json=body, headers={"x-api-key": books.key})
    assert openai_error(r, 401)["code"] in {"missing_api_key", "invalid_api_key"}
    _, key = gateway.workspace()  # the same key in both: served (elsewhere: the books stay)
    assert send(gateway, path, key, body=body, headers={"x-api-key": key}).status_code == 200


@pytest.mark.parametrize("path", [MESSAGES, RESPONSES])
@pytest.mark.parametrize("idempotency_key", ["k" * 256, "a\tb"])
def test_a_bad_idempotency_key_is_a_400(gateway: RunningGateway, provider: FakeProvider,
                                        books: Books, path: str, idempotency_key: str) -> None:
    headers = {"idempotency-key": idempotency_key}
    if path == RESPONSES:
        r = send(gateway, path, books.key, body={"model": OPENAI, "input": "hi"},
                 headers=headers)
        openai_error(r, 400)
    else:
        anthropic_error(send(gateway, path, books.key, body=messages_body(ANTHROPIC),
                             headers=headers), 400)
    assert provider.count() == 0
    books.unmoved()


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("headers", [
    pytest.param({"anthropic-version": ""}, id="no anthropic-version"),
    pytest.param({"anthropic-version": "garbage"}, id="garbage anthropic-version"),
    pytest.param({"content-type": "text/plain"}, id="text/plain"),
    pytest.param({"content-type": ""}, id="no content-type"),
])
def test_odd_but_harmless_headers_change_nothing(gateway: RunningGateway,
                                                 logged_errors: list[logging.LogRecord],
                                                 model: str, headers: dict[str, str]) -> None:
    """The version header is not checked (the upstream gets its own) and the body is JSON
    whatever its declared type: one reply, charged once; `?beta=true` likewise."""
    ws, key = gateway.workspace("free")
    r = send(gateway, MESSAGES, key, body=messages_body(model), headers=headers,
             params={"beta": "true"})
    assert r.status_code == 200, r.text
    assert r.json()["type"] == "message"
    rows = gateway.wait_ledger(ws, 1)
    assert len(rows) == 1
    assert without_fake(logged_errors) == []


# --- state across tenants -----------------------------------------------------------------

def test_previous_response_id_of_another_workspace_is_not_found(
        gateway: RunningGateway, provider: FakeProvider, books: Books) -> None:
    _, owner = gateway.workspace("free")
    first = send(gateway, RESPONSES, owner, body={"model": OPENAI, "input": "hi"})
    assert first.status_code == 200, first.text
    issued = first.json()["id"]
    provider.reset()
    for body in ({"model": OPENAI, "input": "again", "previous_response_id": issued},
                 {"model": OPENAI, "previous_response_id": issued},
                 {"model": OPENAI, "input": "x", "previous_response_id": issued, "stream": True},
                 {"model": OPENAI, "input": "x", "previous_response_id": "resp_\x00'\"; --"},
                 {"model": OPENAI, "input": "x", "previous_response_id": "r" * 10_000}):
        error = openai_error(send(gateway, RESPONSES, books.key, body=body), 400)
        assert error["code"] == "previous_response_not_found", error
        assert error["param"] == "previous_response_id"
    assert provider.count() == 0
    books.unmoved()


# --- what the upstream judges comes back uncharged ----------------------------------------

@pytest.mark.parametrize("path", [MESSAGES, COUNT])
def test_a_relayed_400_from_anthropic_is_not_charged(gateway: RunningGateway,
                                                     provider: FakeProvider, books: Books,
                                                     path: str) -> None:
    """Relayed as sent: Anthropic judges a `tool_result` id of the wrong type (400 in its
    shape, its type kept), and a thinking budget above max_tokens."""
    for fields in ({"messages": turn({"type": "tool_result", "tool_use_id": 5,
                                      "content": "x"})},
                   {"thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 100}):
        body = messages_body(ANTHROPIC, fields)
        if path == COUNT:
            if "thinking" in fields:
                continue  # count_tokens has no max_tokens to compare with
            body.pop("max_tokens")
        anthropic_error(send(gateway, path, books.key, body=body), 400)
    books.unmoved()


@pytest.mark.parametrize("model", [OPENAI, ANTHROPIC, CHAT_ONLY])
def test_three_thousand_tools_are_one_reply(gateway: RunningGateway,
                                            logged_errors: list[logging.LogRecord],
                                            model: str) -> None:
    """A huge but well-formed `tools` is carried (relayed or translated), charged once."""
    ws, key = gateway.workspace("free")
    messages_tools = [{"name": f"t{i}", "input_schema": {"type": "object"}}
                      for i in range(3000)]
    responses_tools = [{"type": "function", "name": f"t{i}",
                        "parameters": {"type": "object"}} for i in range(3000)]
    r = send(gateway, MESSAGES, key, body=messages_body(model, tools=messages_tools))
    assert r.status_code == 200, r.text
    r = send(gateway, RESPONSES, key, body={"model": model, "input": "hi",
                                            "tools": responses_tools})
    assert r.status_code == 200, r.text
    r = send(gateway, COUNT, key, body={"model": model, "messages": HI,
                                        "tools": messages_tools})
    assert r.status_code == 200 and isinstance(r.json()["input_tokens"], int), r.text
    assert len(gateway.wait_ledger(ws, 2)) == 2
    assert without_fake(logged_errors) == []


# --- the same unhashable values on chat (the checks are shared) ---------------------------

@pytest.mark.parametrize("model", [OPENAI, ANTHROPIC])
@pytest.mark.parametrize(("fields", "param"), [
    ({"messages": [{"role": ["user"], "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": {"r": 1}, "content": "x"}]}, "messages[0].role"),
    ({"service_tier": ["auto"]}, "service_tier"),
    ({"service_tier": {}}, "service_tier"),
])
def test_unhashable_values_on_chat_are_a_400(gateway: RunningGateway, provider: FakeProvider,
                                             books: Books, model: str, fields: dict[str, Any],
                                             param: str) -> None:
    body = {"model": model, "messages": HI, **fields}
    error = openai_error(send(gateway, "/v1/chat/completions", books.key, body=body), 400)
    assert error["param"] == param
    assert provider.count() == 0
    books.unmoved()
