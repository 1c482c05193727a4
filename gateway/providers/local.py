"""The built-in `bookbag-local` model: extractive answers from the conversation itself.

It owns the keyless, network-free Provider. It answers the last user message
with the one to three sentences of the conversation's own context (system
prompt, earlier messages, passages pasted into messages) that best match it
under BM25, in their original order, or with a fixed honest reply. Tokens are
words: usage, `max_tokens` and stream chunks all count whitespace-separated
words. `check_request` refuses, before anything is reserved, every parameter
this model cannot honour.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from gateway.errors import InvalidRequest, UnsupportedParameter
from gateway.types import Completion, ModelEntry, ProviderCall

NO_ANSWER = "I could not find an answer to that in the conversation."
MAX_SENTENCES = 3
# Bounds on the work one request can cause (the model is free and has no rate
# limit by default): characters of text read (the last user message first, then
# the others in order, until the budget is spent) and question sentences used.
READ_LIMIT = 64 * 1024
MAX_QUESTIONS = 32
# The extraction runs here, off the event loop; two workers bound the CPU it takes.
_WORKERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="bookbag-local")

# Accepted and ignored: they change nothing a deterministic extractor does.
_IGNORED = frozenset({
    "model", "messages", "stream", "stream_options", "temperature", "top_p", "seed",
    "presence_penalty", "frequency_penalty", "user", "safety_identifier", "metadata",
    "store", "prompt_cache_key",
})
# Accepted only with a value that asks for nothing beyond plain text, one choice.
_HARMLESS: dict[str, Callable[[Any], bool]] = {
    "n": lambda v: v is None or (type(v) is int and v == 1),
    "logprobs": lambda v: v is None or v is False,
    "response_format": lambda v: v is None or v == {"type": "text"},
    "modalities": lambda v: v is None or v == ["text"],
    "logit_bias": lambda v: v is None or v == {},
    "max_tokens": lambda v: True,  # honoured; values checked in _limit
    "max_completion_tokens": lambda v: True,
    "stop": lambda v: True,  # honoured; values checked in _stops
}


def _number(lo: float, hi: float) -> Callable[[Any], bool]:
    return lambda v: type(v) in (int, float) and lo <= v <= hi


# Ignored, but an invalid value is refused as the OpenAI API refuses it.
_VALID: dict[str, tuple[Callable[[Any], bool], str]] = {
    "temperature": (_number(0, 2), "a number from 0 to 2"),
    "top_p": (_number(0, 1), "a number from 0 to 1"),
    "presence_penalty": (_number(-2, 2), "a number from -2 to 2"),
    "frequency_penalty": (_number(-2, 2), "a number from -2 to 2"),
    "seed": (lambda v: type(v) is int, "an integer"),
    "store": (lambda v: type(v) is bool, "a boolean"),
    "user": (lambda v: isinstance(v, str), "a string"),
    "safety_identifier": (lambda v: isinstance(v, str), "a string"),
    "prompt_cache_key": (lambda v: isinstance(v, str), "a string"),
}

_STOP_WORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "been", "but", "by", "can", "could", "did", "do",
    "does", "for", "from", "had", "has", "have", "how", "i", "if", "in", "into", "is", "it",
    "its", "me", "my", "of", "on", "or", "our", "so", "that", "the", "their", "them", "then",
    "there", "these", "they", "this", "those", "to", "was", "we", "were", "what", "when",
    "where", "which", "who", "whom", "why", "will", "with", "would", "you", "your",
})
_WORD = re.compile(r"\w+")
_PIECE = re.compile(r"\S+\s*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*")


def check_request(body: dict[str, Any]) -> None:
    """Raise UnsupportedParameter (or InvalidRequest) for anything this model cannot honour."""
    for name, value in body.items():
        if value is None and name != "messages":
            continue  # an explicit null is the same as leaving the parameter out
        if name in _IGNORED:
            valid = _VALID.get(name)
            if valid is not None and not valid[0](value):
                raise InvalidRequest(f"'{name}' must be {valid[1]}", param=name)
            continue
        accept = _HARMLESS.get(name)
        if accept is None or not accept(value):
            raise UnsupportedParameter(
                f"bookbag-local does not support the parameter '{name}'"
                + ("" if accept is None else " with this value"),
                param=name,
            )
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise InvalidRequest("'messages' must be a non-empty array", param="messages")
    _limit(body)
    _stops(body)


def _limit(body: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is not None:
            if type(value) is not int or value < 1:
                raise InvalidRequest(f"'{name}' must be a positive integer", param=name)
            return value
    return None


def _stops(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise InvalidRequest("'stop' must be a string or an array of strings", param="stop")
    return stops


def _text(message: Any) -> str:
    """The text of a message; content parts other than text are ignored."""
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"] for part in content
            if isinstance(part, dict) and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        )
    return ""


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def _terms(text: str) -> list[str]:
    words = (w for w in _WORD.findall(text.lower()) if w not in _STOP_WORDS)
    # A light plural fold, so "passages" matches "passage".
    return [w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
            for w in words]


def _split_question(messages: list[Any]) -> tuple[str, list[str]]:
    """The question (the last user message) and the context sentences around it.

    At most READ_LIMIT characters are read: the last user message first, then
    the other messages in order until the budget is spent.
    """
    last = max((i for i, m in enumerate(messages)
                if isinstance(m, dict) and m.get("role") == "user"), default=None)
    budget = READ_LIMIT
    own_text = ""
    if last is not None:
        own_text = _text(messages[last])[:budget]
        budget -= len(own_text)
    context: list[str] = []
    for i, message in enumerate(messages):
        if budget <= 0:
            break
        if i != last:
            text = _text(message)[:budget]
            budget -= len(text)
            context.extend(_sentences(text))
    if last is None:
        return "", context
    own = _sentences(own_text)
    # A user turn that pastes passages and then asks: the question is its "?"
    # sentences (or its last one), the rest is context.
    asked = [s for s in own if s.endswith("?")][-MAX_QUESTIONS:] or own[-1:]
    asked_set = set(asked)
    context.extend(s for s in own if s not in asked_set)
    return " ".join(asked), context


def answer(messages: list[Any]) -> str:
    """The best-matching context sentences (BM25), in conversation order, or NO_ANSWER."""
    question, sentences = _split_question(messages)
    sentences = list(dict.fromkeys(sentences))
    query = set(_terms(question))
    docs = [Counter(_terms(s)) for s in sentences]
    if not query or not docs:
        return NO_ANSWER
    k1, b = 1.2, 0.75
    avg = sum(sum(d.values()) for d in docs) / len(docs) or 1.0
    df = Counter(t for d in docs for t in d if t in query)
    idf = {t: math.log(1 + (len(docs) - n + 0.5) / (n + 0.5)) for t, n in df.items()}
    scores = []
    for d in docs:
        norm = k1 * (1 - b + b * sum(d.values()) / avg)
        shared = d.keys() & idf.keys()  # linear in the sentence, not in the question
        scores.append(sum(idf[t] * d[t] * (k1 + 1) / (d[t] + norm) for t in shared))
    ranked = sorted((i for i, s in enumerate(scores) if s > 0), key=lambda i: (-scores[i], i))
    if not ranked:
        return NO_ANSWER
    best = scores[ranked[0]]
    # Keep runners-up only when they are nearly as relevant as the best sentence.
    chosen = sorted(i for i in ranked[:MAX_SENTENCES] if scores[i] >= 0.5 * best)
    return " ".join(sentences[i] for i in chosen)


def _count(text: str) -> int:
    return len(text.split())


class LocalProvider:
    """The `bookbag-local` Provider: deterministic, no network, no key."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock

    async def check(self, model: ModelEntry, body: dict[str, Any]) -> None:
        """The parameters bookbag-local honours, whatever the catalog entry (`check_request`)."""
        check_request(body)

    def _reply(self, call: ProviderCall) -> tuple[list[str], str, int]:
        """The reply's pieces (concatenating to its content), finish reason, prompt tokens."""
        check_request(call.body)
        messages: list[Any] = call.body["messages"]
        content = answer(messages)
        stops = [i for i in (content.find(s) for s in _stops(call.body)) if i >= 0]
        if stops:
            content = content[: min(stops)].rstrip()
        pieces = _PIECE.findall(content)
        limit = _limit(call.body)
        finish = "stop"
        if limit is not None and len(pieces) > limit:
            pieces, finish = pieces[:limit], "length"
            pieces[-1] = pieces[-1].rstrip()
        return pieces, finish, sum(_count(_text(m)) for m in messages)

    async def _reply_off_loop(self, call: ProviderCall) -> tuple[list[str], str, int]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_WORKERS, self._reply, call)

    async def complete(self, call: ProviderCall) -> Completion:
        pieces, finish, prompt = await self._reply_off_loop(call)
        body = {
            "id": f"chatcmpl-local-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(self._clock()),
            "model": call.model.id,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "".join(pieces), "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }],
            "usage": _usage(prompt, len(pieces)),
        }
        return Completion(orjson.dumps(body), 1, prompt, len(pieces))

    async def stream(self, call: ProviderCall) -> AsyncIterator[bytes]:
        pieces, finish, prompt = await self._reply_off_loop(call)
        options = call.body.get("stream_options")
        with_usage = isinstance(options, dict) and options.get("include_usage") is True
        head: dict[str, Any] = {
            "id": f"chatcmpl-local-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(self._clock()),
            "model": call.model.id,
        }

        def chunk(delta: dict[str, Any], reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
            extra = {"usage": None} if with_usage else {}
            return orjson.dumps({**head, "choices": [choice], **extra})

        yield chunk({"role": "assistant", "content": "", "refusal": None})
        for piece in pieces:
            await asyncio.sleep(0)
            yield chunk({"content": piece})
        await asyncio.sleep(0)
        yield chunk({}, finish)
        # Always sent; the gateway drops it when the client did not ask for usage.
        yield orjson.dumps({**head, "choices": [], "usage": _usage(prompt, len(pieces))})

    async def embed(self, call: ProviderCall) -> bytes:
        raise InvalidRequest(
            f"the model '{call.model.id}' does not provide embeddings", param="model"
        )

    async def close(self) -> None:
        return None


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
