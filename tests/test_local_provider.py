"""The built-in `bookbag-local` model: extraction, OpenAI shapes, limits, refusals."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from gateway.errors import InvalidRequest, UnsupportedParameter
from gateway.providers.local import (
    MAX_QUESTIONS,
    NO_ANSWER,
    READ_LIMIT,
    LocalProvider,
    answer,
    check_request,
)
from gateway.types import Completion, ModelEntry, ProviderCall, Timeouts

MODEL = ModelEntry(
    id="bookbag-local", provider="local", upstream_model="bookbag-local",
    credits=1, metered=False, byo=False,
)
HANDBOOK = (
    "Bookbag is a reading app for schools. The library opens at 9 am on weekdays. "
    "Late returns cost ten cents per day. The cafeteria serves lunch at noon."
)


def call(body: dict[str, Any]) -> ProviderCall:
    return ProviderCall(
        model=MODEL, body={"model": "bookbag-local", **body}, api_key=None, byo=False,
        timeouts=Timeouts(1, 1, 1),
    )


def ask(question: str, context: str = HANDBOOK, **params: Any) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": context},
            {"role": "user", "content": question},
        ],
        **params,
    }


async def complete(body: dict[str, Any]) -> dict[str, Any]:
    result = await LocalProvider().complete(call(body))
    data: dict[str, Any] = orjson.loads(result.body)
    return data


async def stream(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [orjson.loads(c) async for c in LocalProvider().stream(call(body))]


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("When does the library open?", "The library opens at 9 am on weekdays."),
        ("How much do late returns cost?", "Late returns cost ten cents per day."),
        ("What time is lunch served?", "The cafeteria serves lunch at noon."),
    ],
)
def test_answer_picks_the_matching_sentence_from_the_system_prompt(
    question: str, expected: str
) -> None:
    assert answer(ask(question)["messages"]) == expected


def test_answer_reads_text_parts_and_ignores_other_parts() -> None:
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "Passage: Paris is the capital of France. Rome is in Italy."},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "What is the capital of France?"},
    ]}]
    assert answer(messages) == "Passage: Paris is the capital of France."


def test_answer_uses_earlier_messages_and_keeps_their_order() -> None:
    messages = [
        {"role": "user", "content": "Our dog is called Biscuit. The office is in Lyon."},
        {"role": "assistant", "content": "Noted, thanks."},
        {"role": "user", "content": "Where is the office, and what is the dog called?"},
    ]
    assert answer(messages) == "Our dog is called Biscuit. The office is in Lyon."


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "What is the capital of France?"}],  # no context
        ask("Who won the football world cup?")["messages"],  # nothing matches
        [{"role": "system", "content": HANDBOOK}],  # no question
    ],
)
def test_answer_is_honest_when_nothing_matches(messages: list[Any]) -> None:
    assert answer(messages) == NO_ANSWER


async def test_complete_is_exact_openai_json_and_deterministic() -> None:
    first = await complete(ask("When does the library open?"))
    second = await complete(ask("When does the library open?"))
    assert set(first) == {"id", "object", "created", "model", "choices", "usage"}
    assert first["id"].startswith("chatcmpl-local-")
    assert first["id"] != second["id"]
    assert first["object"] == "chat.completion"
    assert first["model"] == "bookbag-local"
    assert isinstance(first["created"], int)
    (choice,) = first["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    content = choice["message"]["content"]
    assert content == "The library opens at 9 am on weekdays."
    assert second["choices"] == first["choices"]
    assert second["usage"] == first["usage"]
    prompt = len(HANDBOOK.split()) + 5  # the question's five words
    assert first["usage"] == {
        "prompt_tokens": prompt, "completion_tokens": 8, "total_tokens": prompt + 8,
    }


async def test_completion_reports_choices_and_tokens() -> None:
    result = await LocalProvider().complete(call(ask("When does the library open?")))
    assert isinstance(result, Completion)
    assert (result.choices, result.completion_tokens) == (1, 8)
    assert result.prompt_tokens == orjson.loads(result.body)["usage"]["prompt_tokens"]


async def test_stream_chunks_reassemble_to_the_json_content() -> None:
    body = ask("How much do late returns cost?")
    content = (await complete(body))["choices"][0]["message"]["content"]
    chunks = await stream({**body, "stream": True})
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks[:-2]]
    assert len(pieces) == 1 + len(content.split())  # role chunk + one chunk per word
    assert "".join(pieces) == content
    assert chunks[-2]["choices"] == [
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    ]
    assert chunks[-1]["choices"] == []  # always sent; the gateway drops it unless asked
    assert chunks[-1]["usage"]["completion_tokens"] == len(content.split())
    assert all("usage" not in c for c in chunks[:-1])


async def test_stream_marks_chunks_with_null_usage_when_usage_is_asked_for() -> None:
    body = {**ask("When does the library open?"), "stream": True,
            "stream_options": {"include_usage": True}}
    chunks = await stream(body)
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["usage"]["total_tokens"] > 0


@pytest.mark.parametrize("limit", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_truncates_with_finish_reason_length(limit: str) -> None:
    body = {**ask("When does the library open?"), limit: 3}
    data = await complete(body)
    assert data["choices"][0]["message"]["content"] == "The library opens"
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 3
    chunks = await stream(body)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]) == (
        "The library opens"
    )
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"


async def test_max_tokens_above_the_answer_length_changes_nothing() -> None:
    data = await complete(ask("When does the library open?", max_tokens=100))
    assert data["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(("stop", "expected"), [
    ("9 am", "The library opens at"),
    (["weekdays", "opens"], "The library"),
    (["zebra"], "The library opens at 9 am on weekdays."),
])
async def test_stop_cuts_before_the_first_stop_sequence(
    stop: str | list[str], expected: str
) -> None:
    data = await complete(ask("When does the library open?", stop=stop))
    assert data["choices"][0]["message"]["content"] == expected
    assert data["choices"][0]["finish_reason"] == "stop"


def test_harmless_parameters_are_accepted() -> None:
    check_request(ask(
        "q", temperature=0.2, top_p=0.9, seed=7, presence_penalty=0.1, frequency_penalty=0.1,
        user="u1", metadata={"k": "v"}, store=False, stream=True,
        stream_options={"include_usage": True}, n=1, logprobs=False,
        response_format={"type": "text"}, modalities=["text"], logit_bias={}, tools=None,
        max_tokens=5, stop=["x"],
    ))


@pytest.mark.parametrize(("param", "value"), [
    ("tools", [{"type": "function", "function": {"name": "f"}}]),
    ("tool_choice", "auto"),
    ("functions", [{"name": "f"}]),
    ("function_call", "auto"),
    ("response_format", {"type": "json_object"}),
    ("n", 2),
    ("logprobs", True),
    ("top_logprobs", 2),
    ("audio", {"voice": "alloy", "format": "wav"}),
    ("modalities", ["text", "audio"]),
    ("logit_bias", {"50256": -100}),
    ("prediction", {"type": "content", "content": "x"}),
    ("parallel_tool_calls", True),
    ("reasoning_effort", "low"),
    ("some_unknown_param", 1),
])
async def test_unsupported_parameters_are_refused(param: str, value: Any) -> None:
    body = ask("When does the library open?", **{param: value})
    with pytest.raises(UnsupportedParameter) as info:
        check_request(body)
    assert info.value.param == param
    assert info.value.status == 400
    with pytest.raises(UnsupportedParameter):
        await LocalProvider().complete(call(body))


@pytest.mark.parametrize(("param", "value"), [
    ("max_tokens", 0), ("max_tokens", "5"), ("max_completion_tokens", True),
    ("stop", 5), ("stop", [""]), ("messages", []),
])
def test_invalid_values_are_refused(param: str, value: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_request({**ask("q"), param: value})
    assert info.value.param == param


async def test_embed_is_refused() -> None:
    with pytest.raises(InvalidRequest):
        await LocalProvider().embed(call({"input": "x"}))


# Issue 12 point 4: the local model never stalls the server.


def test_answer_reads_at_most_read_limit_characters() -> None:
    """A matching sentence beyond the read budget is not read at all."""
    filler = "Nothing to see here. " * (READ_LIMIT // 20 + 1)
    late = "The library opens at 9 am on weekdays."
    messages = [
        {"role": "system", "content": filler + late},
        {"role": "user", "content": "When does the library open?"},
    ]
    assert answer(messages) == NO_ANSWER
    messages[0]["content"] = late + " " + filler
    assert answer(messages) == late


def test_many_question_sentences_use_only_the_last_few() -> None:
    questions = " ".join(f"Question number {i} about topic{i}?" for i in range(1000))
    messages = [
        {"role": "system", "content": "Facts about topic3 are here. Facts about topic999 too."},
        {"role": "user", "content": questions},
    ]
    # Only the last MAX_QUESTIONS questions are asked: topic3 is not among them.
    assert answer(messages) == "Facts about topic999 too."
    assert MAX_QUESTIONS < 1000


@pytest.mark.parametrize("stream", [False, True])
async def test_the_extraction_runs_off_the_event_loop(stream: bool) -> None:
    """While the reply is computed, other tasks on the loop keep running."""
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    provider = LocalProvider()
    if stream:
        agen = provider.stream(call(ask("When does the library open?")))
        await agen.__anext__()  # the first chunk comes after the reply is computed
        await agen.aclose()
    else:
        await provider.complete(call(ask("When does the library open?")))
    during = ticks - before
    done = True
    await task
    assert during >= 1
