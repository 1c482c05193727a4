"""Estimating a Messages request's input tokens where no provider counts them.

`count_tokens` for a model whose upstream does not speak Messages (OpenAI,
other litellm providers, bookbag-local) is an estimate: the request's text
(system, turns, tool calls and results, tool definitions) encoded with the
Claude tokenizer that litellm ships (`anthropic_tokenizer.json`, read from the
installed package: nothing is fetched at run time), plus a few tokens per turn
for the framing. Found without importing litellm (its import takes seconds);
should the file be missing, four characters per token. Callers run it off the
event loop (`estimate_off_loop`): a large body takes milliseconds.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

PER_TURN = 3  # role and turn markers
_WORKERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="bookbag-tokens")
_lock = threading.Lock()


class _Encoder(Protocol):
    def __call__(self, text: str) -> int: ...


_encoder: _Encoder | None = None


def tokenizer_path() -> Path | None:
    spec = importlib.util.find_spec("litellm")  # locates the package, imports nothing
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / \
        "tokenizers" / "anthropic_tokenizer.json"
    return path if path.is_file() else None


def _load() -> _Encoder:
    path = tokenizer_path()
    if path is not None:
        try:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(path))
            return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)
        except Exception:  # a broken install: fall back to the rule of thumb
            pass
    return lambda text: (len(text) + 3) // 4


def encoder() -> _Encoder:
    global _encoder
    if _encoder is None:
        with _lock:
            if _encoder is None:
                _encoder = _load()
    return _encoder


def _texts(value: Any, out: list[str]) -> None:
    """Every text a content value carries (blocks' text, tool inputs and results)."""
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, list):
        for item in value:
            _texts(item, out)
    elif isinstance(value, dict):
        kind = value.get("type")
        if kind == "text":
            _texts(value.get("text"), out)
        elif kind == "tool_use":
            out.append(str(value.get("name", "")))
            out.append(json.dumps(value.get("input") or {}, ensure_ascii=False))
        elif kind == "tool_result":
            _texts(value.get("content"), out)
        elif kind == "thinking":
            _texts(value.get("thinking"), out)


def estimate(body: dict[str, Any]) -> int:
    texts: list[str] = []
    _texts(body.get("system"), texts)
    turns = body.get("messages") or []
    for message in turns:
        if isinstance(message, dict):
            _texts(message.get("content"), texts)
    for tool in body.get("tools") or []:
        if isinstance(tool, dict):
            texts.append(json.dumps({k: tool.get(k) for k in ("name", "description",
                                                                 "input_schema")},
                                    ensure_ascii=False))
    count = encoder()
    return sum(count(t) for t in texts if t) + PER_TURN * len(turns) + 1


async def estimate_off_loop(body: dict[str, Any]) -> int:
    return await asyncio.get_running_loop().run_in_executor(_WORKERS, estimate, body)
