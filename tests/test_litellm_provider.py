"""LitellmProvider against the fake Anthropic server: OpenAI shapes out, exactly one
upstream call per gateway call, errors translated once, timeouts enforced."""

from __future__ import annotations

import asyncio
import inspect
import json
import subprocess
import sys
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from gateway.errors import (
    GatewayError,
    ProviderAuthFailed,
    ProviderRejected,
    UnsupportedParameter,
    UpstreamError,
    UpstreamTimeout,
)
from gateway.providers.litellm_errors import translate_error
from gateway.providers.litellm_provider import LitellmProvider, _import_litellm
from gateway.types import ModelEntry, ProviderCall, Timeouts
from tests.fake_provider import ANTHROPIC_KEY, OPENAI_KEY, FakeProvider

# litellm 1.106 builds a pydantic schema for a TypedDict using `ReadOnly` on its
# first streamed chunk; pydantic warns about it, and filterwarnings=error would turn
# that into an exception inside litellm.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Item 'summary' on TypedDict class 'ChatCompletionReasoningItem':UserWarning"
)

MESSAGES = "/v1/messages"
HI = [{"role": "user", "content": "hi there"}]
TOOLS: list[dict[str, Any]] = [{"type": "function", "function": {
    "name": "lookup", "description": "Look something up",
    "parameters": {"type": "object", "properties": {"input": {"type": "string"}}},
}}]


@pytest.fixture
async def llm() -> AsyncIterator[LitellmProvider]:
    p = LitellmProvider()
    yield p
    await p.close()


def claude(provider: FakeProvider) -> ModelEntry:
    return ModelEntry(
        id="claude-haiku-4-5", provider="anthropic", upstream_model="claude-haiku-4-5",
        credits=2, metered=True, byo=True, api_base=provider.anthropic_base,
    )


def call(
    provider: FakeProvider, body: dict[str, Any], *, byo: bool = False,
    key: str = ANTHROPIC_KEY, timeouts: Timeouts | None = None,
) -> ProviderCall:
    return ProviderCall(
        model=claude(provider), body={"model": "claude-haiku-4-5", "messages": HI, **body},
        api_key=key, byo=byo, timeouts=timeouts or Timeouts(2, 2, 5),
    )


async def complete(llm: LitellmProvider, c: ProviderCall) -> dict[str, Any]:
    result = await llm.complete(c)
    data: dict[str, Any] = orjson.loads(result.body)
    return data


async def chunks(
    llm: LitellmProvider, c: ProviderCall, into: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    got = [] if into is None else into
    async for payload in llm.stream(c):
        got.append(orjson.loads(payload))
    return got


async def reply(llm: LitellmProvider, c: ProviderCall) -> object:
    """The whole reply, streamed or not as the call's body says."""
    if c.body.get("stream"):
        return await chunks(llm, c)
    return await llm.complete(c)


def content(chunk_list: list[dict[str, Any]]) -> str:
    return "".join(
        ch["delta"].get("content") or "" for c in chunk_list for ch in c["choices"]
    )


# ---- replies in OpenAI shape


async def test_json_reply_is_exact_openai_shape(
    provider: FakeProvider, llm: LitellmProvider
) -> None:
    result = await llm.complete(call(provider, {"max_tokens": 50, "temperature": 0.1}))
    data = orjson.loads(result.body)
    assert set(data) == {"id", "object", "created", "model", "choices", "usage"}
    assert data["object"] == "chat.completion"
    assert data["model"] == "claude-haiku-4-5"
    assert data["choices"] == [{
        "index": 0,
        "message": {"role": "assistant", "refusal": None,
                    "content": "Hello from fake claude-haiku-4-5: hi there"},
        "logprobs": None, "finish_reason": "stop",
    }]
    usage = data["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert (result.choices, result.prompt_tokens, result.completion_tokens) == (
        1, usage["prompt_tokens"], usage["completion_tokens"],
    )
    assert provider.count(MESSAGES) == 1
    sent = provider.received[0]
    assert sent.api_key == ANTHROPIC_KEY
    assert sent.headers["anthropic-version"]
    assert sent.body["max_tokens"] == 50


async def test_missing_max_tokens_gets_litellm_default(
    provider: FakeProvider, llm: LitellmProvider
) -> None:
    # Anthropic requires max_tokens; litellm fills in the model's maximum output.
    await llm.complete(call(provider, {}))
    assert provider.received[0].body["max_tokens"] == 64000


async def test_stream_reply_is_openai_chunks_ending_with_usage(
    provider: FakeProvider, llm: LitellmProvider
) -> None:
    got = await chunks(llm, call(provider, {"stream": True}))
    assert {c["object"] for c in got} == {"chat.completion.chunk"}
    assert len({c["id"] for c in got}) == 1
    assert got[0]["choices"][0]["delta"]["role"] == "assistant"
    assert content(got) == "Hello from fake claude-haiku-4-5: hi there"
    finishes = [ch["finish_reason"] for c in got for ch in c["choices"] if ch["finish_reason"]]
    assert finishes == ["stop"]
    assert got[-2]["choices"][0]["finish_reason"] == "stop"
    assert got[-1]["choices"] == []
    usage = got[-1]["usage"]
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert provider.count(MESSAGES) == 1
    assert provider.received[0].body["stream"] is True


async def test_tools_are_translated_both_ways(
    provider: FakeProvider, llm: LitellmProvider
) -> None:
    choice = {"type": "function", "function": {"name": "lookup"}}
    data = await complete(llm, call(provider, {
        "messages": [{"role": "user", "content": "weather in Paris"}],
        "tools": TOOLS, "tool_choice": choice, "max_tokens": 100,
    }))
    sent = provider.received[0].body
    assert sent["tools"][0]["name"] == "lookup"
    assert sent["tools"][0]["input_schema"] == TOOLS[0]["function"]["parameters"]
    assert sent["tool_choice"] == {"type": "tool", "name": "lookup"}
    (reply,) = data["choices"]
    assert reply["finish_reason"] == "tool_calls"
    assert reply["message"]["content"] is None
    (tool_call,) = reply["message"]["tool_calls"]
    assert tool_call["type"] == "function"
    assert tool_call["id"].startswith("toolu_")
    assert tool_call["function"]["name"] == "lookup"
    assert json.loads(tool_call["function"]["arguments"]) == {"input": "weather in Paris"}

    # The tool result goes back as Anthropic tool_use / tool_result blocks.
    provider.reset()
    follow_up = [
        {"role": "user", "content": "weather in Paris"},
        {"role": "assistant", "content": None, "tool_calls": [tool_call]},
        {"role": "tool", "tool_call_id": tool_call["id"], "content": "sunny"},
    ]
    await complete(llm, call(provider, {"messages": follow_up, "tools": TOOLS}))
    sent = provider.received[0].body
    assert sent["messages"][1]["content"][0]["type"] == "tool_use"
    assert sent["messages"][1]["content"][0]["id"] == tool_call["id"]
    assert sent["messages"][2]["content"][0] == {
        "type": "tool_result", "tool_use_id": tool_call["id"], "content": "sunny",
    }


async def test_streamed_tool_calls_reassemble(
    provider: FakeProvider, llm: LitellmProvider
) -> None:
    got = await chunks(llm, call(provider, {
        "messages": [{"role": "user", "content": "weather in Paris"}],
        "tools": TOOLS, "stream": True,
    }))
    calls = [tc for c in got for ch in c["choices"] for tc in ch["delta"].get("tool_calls", [])]
    assert calls[0]["id"].startswith("toolu_")
    assert calls[0]["function"]["name"] == "lookup"
    assert {tc["index"] for tc in calls} == {0}
    arguments = "".join(tc["function"]["arguments"] for tc in calls)
    assert json.loads(arguments) == {"input": "weather in Paris"}
    assert got[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert got[-1]["choices"] == []


async def test_json_schema_response_format_is_translated(
    provider: FakeProvider, llm: LitellmProvider
) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    await llm.complete(call(provider, {"response_format": {
        "type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}}))
    sent = provider.received[0].body
    assert sent["output_format"]["type"] == "json_schema"
    assert sent["output_format"]["schema"]["properties"] == schema["properties"]


# ---- parameters


async def test_check_accepts_what_anthropic_can_honour(
    provider: FakeProvider, llm: LitellmProvider
) -> None:
    await llm.check(claude(provider), {
        "model": "claude-haiku-4-5", "messages": HI, "stream": True,
        "stream_options": {"include_usage": True}, "temperature": 0.3, "top_p": 0.9,
        "max_tokens": 10, "max_completion_tokens": 10, "stop": ["x"], "tools": TOOLS,
        "tool_choice": "auto", "parallel_tool_calls": False, "user": "u1",
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "answer", "schema": {"type": "object"}}}, "n": 1, "logprobs": False,
        "store": False, "metadata": {}, "seed": None,
    })


@pytest.mark.parametrize(("param", "value"), [
    ("seed", 7),
    ("n", 2),
    ("logprobs", True),
    ("top_logprobs", 2),
    ("logit_bias", {"1": 2}),
    ("presence_penalty", 0.5),
    ("frequency_penalty", 0.5),
    ("audio", {"voice": "alloy", "format": "wav"}),
    ("prediction", {"type": "content", "content": "x"}),
    ("functions", [{"name": "f"}]),
    ("metadata", {"team": "a"}),
    ("store", True),
    ("extra_headers", {"x-api-key": "other"}),  # litellm extension, not an OpenAI parameter
    ("thinking", {"type": "enabled", "budget_tokens": 1024}),
    ("response_format", {"type": "json_object"}),  # litellm would silently drop it
    ("no_such_param", 1),
])
async def test_check_refuses_what_it_cannot_honour(
    provider: FakeProvider, llm: LitellmProvider, param: str, value: Any
) -> None:
    with pytest.raises(UnsupportedParameter) as info:
        await llm.check(claude(provider), {"model": "m", "messages": HI, param: value})
    assert info.value.param == param
    assert info.value.status == 400
    assert provider.count() == 0


# ---- errors: exactly one upstream call, translated once


@pytest.mark.parametrize(("status", "byo", "error", "client_status"), [
    (401, True, ProviderAuthFailed, 401),
    (401, False, UpstreamError, 502),
    (403, True, ProviderRejected, 403),
    (403, False, UpstreamError, 502),
    (400, False, ProviderRejected, 400),
    (404, True, ProviderRejected, 404),
    (413, False, ProviderRejected, 413),
    (429, False, ProviderRejected, 429),
    (500, False, UpstreamError, 502),
    (503, False, UpstreamError, 502),
    (529, True, UpstreamError, 502),
])
@pytest.mark.parametrize("stream", [False, True])
async def test_provider_status_is_translated_without_retries(
    provider: FakeProvider, llm: LitellmProvider, status: int, byo: bool,
    error: type[GatewayError], client_status: int, stream: bool,
) -> None:
    provider.fail("status", status=status, times=None)
    with pytest.raises(error) as info:
        await reply(llm, call(provider, {"stream": stream}, byo=byo))
    assert type(info.value) is error
    assert info.value.status == client_status
    assert ANTHROPIC_KEY not in info.value.message
    assert provider.count(MESSAGES) == 1


async def test_provider_message_is_kept_and_scrubbed(
    provider: FakeProvider, llm: LitellmProvider
) -> None:
    provider.fail("status", status=400, message=f"max_tokens: too large (key {ANTHROPIC_KEY})")
    with pytest.raises(ProviderRejected) as info:
        await llm.complete(call(provider, {}))
    assert info.value.message.startswith("max_tokens: too large (key ")
    assert ANTHROPIC_KEY not in info.value.message


async def test_hang_times_out_within_the_total(
    provider: FakeProvider, llm: LitellmProvider
) -> None:
    provider.fail("hang", times=None)
    for stream in (False, True):
        c = call(provider, {"stream": stream}, timeouts=Timeouts(0.5, 5, 0.8))
        with pytest.raises(UpstreamTimeout):
            await reply(llm, c)
    assert provider.count(MESSAGES) == 2


async def test_stream_idle_timeout_between_chunks(
    provider: FakeProvider, llm: LitellmProvider
) -> None:
    provider.fail("slow_stream", interval=1.0)
    with pytest.raises(UpstreamTimeout):
        await chunks(llm, call(provider, {"stream": True}, timeouts=Timeouts(1, 0.3, 10)))


@pytest.mark.parametrize("mode", ["cut", "inband_error"])
async def test_broken_stream_raises_after_partial_content(
    provider: FakeProvider, llm: LitellmProvider, mode: str
) -> None:
    provider.fail(mode, after=2)
    got: list[dict[str, Any]] = []
    with pytest.raises(UpstreamError):
        await chunks(llm, call(provider, {"stream": True}), into=got)
    assert content(got) == "Hello from "
    assert not any(ch["finish_reason"] for c in got for ch in c["choices"])
    assert provider.count(MESSAGES) == 1


class _Truncated:
    """A litellm stream whose provider stopped early: litellm still makes up a finish."""

    received_finish_reason = None

    def __init__(self) -> None:
        def chunk(delta: dict[str, Any], finish: str | None) -> SimpleNamespace:
            full = {"role": None, "content": None, "tool_calls": None, **delta}
            choice = SimpleNamespace(index=0, delta=SimpleNamespace(**full),
                                     finish_reason=finish)
            return SimpleNamespace(id="chatcmpl-1", created=1, model="m", choices=[choice],
                                   usage=None)

        self._chunks = iter([chunk({"role": "assistant", "content": "Hel"}, None),
                             chunk({}, "stop")])
        self.closed = False

    def __aiter__(self) -> _Truncated:
        return self

    async def __anext__(self) -> SimpleNamespace:
        try:
            return next(self._chunks)
        except StopIteration:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        self.closed = True


async def test_a_finish_litellm_made_up_is_an_upstream_error(
    provider: FakeProvider, llm: LitellmProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    truncated = _Truncated()

    async def acompletion(**kwargs: Any) -> _Truncated:
        return truncated

    await llm.warm()
    monkeypatch.setattr(_import_litellm(), "acompletion", acompletion)
    got: list[dict[str, Any]] = []
    with pytest.raises(UpstreamError):
        await chunks(llm, call(provider, {"stream": True}), into=got)
    assert content(got) == "Hel"
    assert not any(ch["finish_reason"] for c in got for ch in c["choices"])
    assert truncated.closed


async def test_client_leaving_early_closes_the_upstream(
    provider: FakeProvider, llm: LitellmProvider
) -> None:
    stream = llm.stream(call(provider, {"stream": True}))
    assert isinstance(stream, AsyncGenerator)
    first = orjson.loads(await anext(stream))
    assert first["choices"][0]["delta"]["role"] == "assistant"
    await stream.aclose()  # what the gateway does when the client disconnects
    assert provider.count(MESSAGES) == 1


async def test_concurrent_first_calls_share_one_import(llm: LitellmProvider) -> None:
    await asyncio.gather(*(llm.warm() for _ in range(5)))
    assert llm._litellm is _import_litellm()


async def test_dropped_connection_is_an_upstream_error(
    provider: FakeProvider, llm: LitellmProvider
) -> None:
    provider.fail("drop")
    with pytest.raises(UpstreamError):
        await llm.complete(call(provider, {}))
    assert provider.count(MESSAGES) == 1


# The status the client gets for each exception class litellm is known to define
# (own key / BYO key). A class not listed here is still checked: it must map like
# its nearest listed base class (test_every_installed_exception_maps_by_meaning).
EXPECTED: dict[str, tuple[int, int]] = {
    "APIConnectionError": (502, 502), "APIError": (502, 502),
    "APIResponseValidationError": (502, 502), "AuthenticationError": (502, 401),
    "BadGatewayError": (502, 502), "BadRequestError": (400, 400),
    "BlockedPiiEntityError": (502, 502), "BudgetExceededError": (502, 502),
    "CallerCredentialAuthenticationError": (502, 401),
    "CallerCredentialRateLimitError": (429, 429),
    "ContentPolicyViolationError": (400, 400), "ContextWindowExceededError": (400, 400),
    "EndpointNotSupportedByModelError": (400, 400),
    "GuardrailRaisedException": (502, 502), "ImageFetchError": (400, 400),
    "InternalServerError": (502, 502), "InvalidRequestError": (400, 400),
    "JSONSchemaValidationError": (502, 502), "LiteLLMUnknownProvider": (400, 400),
    "MalformedRequestFieldError": (400, 400),
    "MidStreamFallbackError": (502, 502), "MockException": (502, 502),
    "ModelNotMappedError": (502, 502), "ModifyResponseException": (502, 502),
    "NotFoundError": (404, 404), "OpenAIError": (502, 502),
    "PaymentRequiredError": (502, 402), "PermissionDeniedError": (502, 403),
    "RateLimitError": (429, 429), "RejectedRequestError": (400, 400),
    "SensitiveDataRouteException": (502, 502), "ServiceUnavailableError": (502, 502),
    "Timeout": (504, 504), "UnprocessableEntityError": (422, 422),
    "UnsupportedEndpointError": (400, 400),
    "UnsupportedParamsError": (400, 400), "VectorStoreSearchError": (400, 400),
}
_ARGS: dict[str, Any] = {
    "message": f"boom {ANTHROPIC_KEY}", "model": "claude", "llm_provider": "anthropic",
    "status_code": 500, "current_cost": 2.0, "max_budget": 1.0, "entity_type": "email",
    "request_data": {}, "raw_response": "", "schema": "{}", "route_to_model": "m",
    "session_id": "s", "failures": [], "response": None,
}


def _litellm_exceptions() -> dict[str, type[BaseException]]:
    litellm = _import_litellm()
    return {
        name: cls for name, cls in inspect.getmembers(litellm.exceptions, inspect.isclass)
        if issubclass(cls, BaseException) and cls.__module__.startswith("litellm")
    }


def _instance(cls: type[BaseException]) -> BaseException:
    import httpx

    params = inspect.signature(cls.__init__).parameters
    required = [n for n, p in params.items() if n != "self" and p.default is p.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    args = {n: _ARGS[n] for n in required}
    if "response" in args:
        request = httpx.Request("POST", "http://127.0.0.1/v1/messages")
        args["response"] = httpx.Response(422 if "Unprocessable" in cls.__name__ else 403,
                                          request=request)
    return cls(**args)


def _expected(cls: type[BaseException]) -> tuple[int, int]:
    """The listed expectation of a class, or of its nearest listed base class; a class
    with no listed base (a new root exception) must still be a 502, never a 500."""
    for base in cls.__mro__:
        if base.__module__.startswith("litellm") and base.__name__ in EXPECTED:
            return EXPECTED[base.__name__]
    return (502, 502)


def _assert_maps(provider: FakeProvider, exc: BaseException, expected: tuple[int, int]) -> None:
    litellm = _import_litellm()
    for byo, status in zip((False, True), expected, strict=True):
        error = translate_error(litellm, exc, call(provider, {}, byo=byo))
        assert isinstance(error, GatewayError)
        assert error.status == status, (type(exc).__name__, byo, error.status)
        assert ANTHROPIC_KEY not in error.message


def test_every_installed_exception_maps_by_meaning(provider: FakeProvider) -> None:
    """Every exception class the installed litellm defines, listed or not, gets a status."""
    for _, cls in sorted(_litellm_exceptions().items()):
        _assert_maps(provider, _instance(cls), _expected(cls))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_error_mapping(provider: FakeProvider, name: str) -> None:
    classes = _litellm_exceptions()
    if name not in classes:
        pytest.skip(f"litellm no longer defines {name}")  # a removal is no mapping bug
    _assert_maps(provider, _instance(classes[name]), EXPECTED[name])


def test_an_unseen_class_maps_through_its_base_and_status(provider: FakeProvider) -> None:
    """What a future litellm may add: subclasses of known bases, and bare exceptions that
    carry only an HTTP status, each classified by meaning."""
    e = _import_litellm().exceptions

    class FutureAuth(e.AuthenticationError):  # type: ignore[misc,name-defined]
        pass

    class FutureLimit(e.RateLimitError):  # type: ignore[misc,name-defined]
        pass

    class FutureBadRequest(e.BadRequestError):  # type: ignore[misc,name-defined]
        pass

    class FutureTimeout(e.Timeout):  # type: ignore[misc,name-defined]
        pass

    def carrying(status: int) -> BaseException:
        return e.APIError(status, f"boom {ANTHROPIC_KEY}", "anthropic", "claude")  # type: ignore[no-any-return]

    _assert_maps(provider, _instance(FutureAuth), (502, 401))
    _assert_maps(provider, _instance(FutureLimit), (429, 429))
    _assert_maps(provider, _instance(FutureBadRequest), (400, 400))
    _assert_maps(provider, _instance(FutureTimeout), (504, 504))
    for status, expected in ((401, (502, 401)), (403, (502, 403)), (404, (404, 404)),
                             (408, (504, 504)), (409, (409, 409)), (429, (429, 429)),
                             (500, (502, 502)), (503, (502, 502)), (529, (502, 502))):
        _assert_maps(provider, carrying(status), expected)
    _assert_maps(provider, RuntimeError(f"boom {ANTHROPIC_KEY}"), (502, 502))
    # litellm's own proxy-side exceptions carry a status that is not the provider's.
    _assert_maps(provider, e.BudgetExceededError(current_cost=2.0, max_budget=1.0), (502, 502))


def test_gateway_error_passes_through(provider: FakeProvider) -> None:
    error = UpstreamError("mine")
    assert translate_error(_import_litellm(), error, call(provider, {})) is error


async def test_missing_key_is_refused_before_any_call(
    provider: FakeProvider, llm: LitellmProvider
) -> None:
    with pytest.raises(UpstreamError):
        await llm.complete(call(provider, {}, key=""))
    assert provider.count() == 0


# ---- embeddings


async def test_embed_returns_openai_shape(provider: FakeProvider, llm: LitellmProvider) -> None:
    model = ModelEntry(
        id="text-embedding-3-small", provider="openai", upstream_model="text-embedding-3-small",
        credits=0, metered=False, byo=True, kind="embedding", api_base=provider.openai_base,
    )
    body = {"model": "text-embedding-3-small", "input": ["a cat", "a dog"]}
    await llm.check(model, body)
    data = orjson.loads(await llm.embed(ProviderCall(
        model=model, body=body, api_key=OPENAI_KEY, byo=False, timeouts=Timeouts(2, 2, 5),
    )))
    assert data["object"] == "list"
    assert [d["index"] for d in data["data"]] == [0, 1]
    assert all(d["object"] == "embedding" and len(d["embedding"]) > 0 for d in data["data"])
    assert data["usage"]["prompt_tokens"] == data["usage"]["total_tokens"] == 4
    assert provider.count("/v1/embeddings") == 1

    provider.fail("status", status=401)
    with pytest.raises(ProviderAuthFailed):
        await llm.embed(ProviderCall(
            model=model, body=body, api_key="sk-wrong-key-123456", byo=True,
            timeouts=Timeouts(2, 2, 5),
        ))
    assert provider.count("/v1/embeddings") == 2


# ---- no network beyond the configured provider


def test_import_and_calls_reach_no_other_host(provider: FakeProvider, tmp_path: Path) -> None:
    """In a fresh process (litellm's import is once per process): every socket goes to
    the fake provider, and importing the gateway's provider module does not import litellm."""
    script = tmp_path / "probe.py"
    script.write_text(f"""
import asyncio, sys
hosts = set()
def hook(event, args):
    if event == "socket.getaddrinfo":
        hosts.add(str(args[0]))
    elif event == "socket.connect" and isinstance(args[1], tuple):
        hosts.add(str(args[1][0]))
sys.addaudithook(hook)
from gateway.providers.litellm_provider import LitellmProvider
from gateway.types import ModelEntry, ProviderCall, Timeouts
assert "litellm" not in sys.modules
async def main():
    p = LitellmProvider()
    await p.warm()
    model = ModelEntry(id="c", provider="anthropic", upstream_model="claude-haiku-4-5",
                       credits=2, metered=True, byo=True, api_base={provider.anthropic_base!r})
    call = ProviderCall(model=model, body={{"messages": [{{"role": "user", "content": "x"}}],
                        "tools": {TOOLS!r}}}, api_key={ANTHROPIC_KEY!r}, byo=False,
                        timeouts=Timeouts(2, 2, 5))
    await p.complete(call)
    async for _ in p.stream(call):
        pass
    await asyncio.sleep(0.5)  # let litellm's background logging run
    await p.close()
asyncio.run(main())
print(sorted(hosts))
""")
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "['127.0.0.1']"


@pytest.mark.parametrize(("preload", "packaged"), [("", False), ("1", False), ("1", True)])
def test_litellm_is_loaded_at_startup_only_when_asked(tmp_path: Path, preload: str,
                                                      packaged: bool) -> None:
    """A gateway whose catalog has litellm routes stays without litellm (~120 MB) until such
    a route is used, unless BOOKBAG_LITELLM_PRELOAD asks for it; the packaged catalog has
    none (Claude is relayed natively), so it never loads litellm at startup."""
    pricing = tmp_path / "pricing.toml"
    pricing.write_text('[models."gemini-x"]\nprovider = "gemini"\ncredits = 1\n\n'
                       '[plans.free]\ncredits = 100\n')
    expected = bool(preload) and not packaged
    script = tmp_path / "probe.py"
    script.write_text(f"""
import sys, time
from starlette.testclient import TestClient
from gateway.app import create_app
from gateway.settings import Settings
env = {{"BOOKBAG_DATABASE_URL": "sqlite:///{tmp_path / 'g.db'}",
       "BOOKBAG_LITELLM_PRELOAD": {preload!r}}}
if not {packaged!r}:
    env["BOOKBAG_PRICING"] = {str(pricing)!r}
settings = Settings.from_env(env)
with TestClient(create_app(settings)) as client:
    assert client.get("/healthz").status_code == 200
    deadline = time.monotonic() + (30 if {expected!r} else 1.0)
    while "litellm" not in sys.modules and time.monotonic() < deadline:
        time.sleep(0.05)
    print("litellm" in sys.modules)
""")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(expected)
