"""Features that change what the provider bills, refused unless the catalog entry enables them.

A reply costs a fixed number of credits, so nothing in a chat body may
multiply what the house pays the provider behind that price (SPEC "Three
dialects", "Features that change what the provider bills"):

- hosted tools: a `tools` entry whose `type` is not `function`/`custom`
  (web search, code interpreter, file search, computer use, MCP, image
  generation, ...) and `web_search_options` (the `web_search` tool) need
  the type in the entry's `hosted_tools`;
- `service_tier` other than `auto`/`default` needs the tier in the entry's
  `service_tiers`;
- `max_tokens` / `max_completion_tokens` above the entry's
  `max_output_tokens` are refused; when the client sets neither, the cap is
  sent (as `max_completion_tokens` to OpenAI itself, `max_tokens` to any
  other upstream).

On the Messages dialect the same holds in its terms: server tools (a `tools`
entry with a `type` other than `custom`, e.g. `web_search_20250305`, enabled by
its full type or its name without the date, `web_search`) and `mcp_servers`
(`mcp`) need `hosted_tools`; `service_tier` beyond `auto` / `standard_only`
needs `service_tiers`; `anthropic-beta` values need the entry's
`anthropic_betas`; `max_tokens` is capped by `max_output_tokens` and a
`thinking.budget_tokens` by `max_thinking_tokens`.

The house pays on metered and unmetered replies alike; with a BYO key the
client's own provider account pays, so nothing is refused or added there.
The check is a few dict lookups: the body is already parsed for metering.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.errors import InvalidRequest, UnsupportedParameter
from gateway.types import CHAT, MESSAGES, ModelEntry

STANDARD_TIERS = frozenset({"auto", "default"})
CLIENT_TOOLS = frozenset({"function", "custom"})
OUTPUT_BUDGETS = ("max_tokens", "max_completion_tokens")
WEB_SEARCH = "web_search"
BILLED_KEYS = frozenset({"tools", "web_search_options", "service_tier", *OUTPUT_BUDGETS})


def _enable_hint(field: str) -> str:
    return f"the gateway operator can enable it with `{field}` in this model's catalog entry"


def _tools(model: ModelEntry, body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise InvalidRequest("`tools` must be an array.", param="tools")
        for i, tool in enumerate(tools):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if not isinstance(kind, str):
                raise InvalidRequest(f"`tools[{i}]` must be an object with a string `type`.",
                                     param=f"tools[{i}].type")
            if kind not in CLIENT_TOOLS and kind not in model.hosted_tools:
                raise UnsupportedParameter(
                    f"The hosted tool `{kind[:64]}` is not enabled for `{model.id}`; "
                    + _enable_hint("hosted_tools") + ".", param=f"tools[{i}].type")
    if body.get("web_search_options") is not None and WEB_SEARCH not in model.hosted_tools:
        raise UnsupportedParameter(
            f"Web search (`web_search_options`) is not enabled for `{model.id}`; "
            + _enable_hint("hosted_tools") + ".", param="web_search_options")


def _service_tier(model: ModelEntry, body: dict[str, Any]) -> None:
    tier = body.get("service_tier")
    if tier is None:
        return
    if not isinstance(tier, str):  # before any set lookup: a list or an object is unhashable
        raise InvalidRequest("`service_tier` must be a string.", param="service_tier")
    if tier not in STANDARD_TIERS and tier not in model.service_tiers:
        raise UnsupportedParameter(
            f"The service tier `{tier[:64]}` is not enabled for `{model.id}` (auto and default "
            "are); " + _enable_hint("service_tiers") + ".", param="service_tier")


def _output_budget(model: ModelEntry, body: dict[str, Any]) -> None:
    cap = model.max_output_tokens
    given = False
    for name in OUTPUT_BUDGETS:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidRequest(f"`{name}` must be a whole number >= 1.", param=name)
        if cap is not None and value > cap:
            raise UnsupportedParameter(
                f"`{name}` is {value}; `{model.id}` allows at most {cap} output tokens.",
                param=name)
        given = True
    if cap is not None and not given:
        body[_budget_key(model)] = cap


def _budget_key(model: ModelEntry) -> str:
    """OpenAI itself takes max_completion_tokens (its reasoning models refuse max_tokens);
    OpenAI-compatible servers and litellm take max_tokens."""
    return "max_completion_tokens" if model.relayed and model.api_base is None else "max_tokens"


MESSAGES_TIERS = frozenset({"auto", "standard_only"})
_DATED = re.compile(r"_\d{8}$")


def _server_tools(model: ModelEntry, body: dict[str, Any]) -> None:
    for i, tool in enumerate(body.get("tools") or ()):
        if not isinstance(tool, dict):
            raise InvalidRequest(f"tools.{i}: Input should be an object", param=f"tools.{i}")
        kind = tool.get("type")
        if kind is None or kind == "custom":
            continue
        if not isinstance(kind, str):
            raise InvalidRequest(f"tools.{i}.type: Input should be a string",
                                 param=f"tools.{i}.type")
        if kind not in model.hosted_tools and _DATED.sub("", kind) not in model.hosted_tools:
            raise UnsupportedParameter(
                f"The server tool `{kind[:64]}` is not enabled for `{model.id}`; "
                + _enable_hint("hosted_tools") + ".", param=f"tools.{i}.type")
    if body.get("mcp_servers") and "mcp" not in model.hosted_tools:
        raise UnsupportedParameter(f"MCP servers (`mcp_servers`) are not enabled for "
                                   f"`{model.id}`; " + _enable_hint("hosted_tools") + ".",
                                   param="mcp_servers")


def _thinking(model: ModelEntry, body: dict[str, Any]) -> None:
    thinking = body.get("thinking")
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return
    budget = thinking.get("budget_tokens")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise InvalidRequest("thinking.budget_tokens must be a whole number >= 1.",
                             param="thinking.budget_tokens")
    cap = model.max_thinking_tokens
    if cap is not None and budget > cap:
        raise UnsupportedParameter(
            f"`thinking.budget_tokens` is {budget}; `{model.id}` allows at most {cap} "
            "thinking tokens.", param="thinking.budget_tokens")


def _betas(model: ModelEntry, betas: tuple[str, ...]) -> None:
    for beta in betas:
        if beta not in model.anthropic_betas:
            raise UnsupportedParameter(
                f"The beta `{beta[:100]}` is not enabled for `{model.id}`; "
                + _enable_hint("anthropic_betas") + ".", param="anthropic-beta")


def _messages(model: ModelEntry, body: dict[str, Any], betas: tuple[str, ...]) -> None:
    _server_tools(model, body)
    tier = body.get("service_tier")
    if tier is not None and not isinstance(tier, str):  # unhashable: no set lookup
        raise InvalidRequest("service_tier: Input should be a valid string",
                             param="service_tier")
    if tier is not None and tier not in MESSAGES_TIERS and tier not in model.service_tiers:
        raise UnsupportedParameter(
            f"The service tier `{tier[:64]}` is not enabled for `{model.id}` (auto "
            "and standard_only are); " + _enable_hint("service_tiers") + ".",
            param="service_tier")
    cap, given = model.max_output_tokens, body.get("max_tokens")
    if cap is not None and isinstance(given, int) and given > cap:
        raise UnsupportedParameter(
            f"`max_tokens` is {given}; `{model.id}` allows at most {cap} output tokens.",
            param="max_tokens")
    _thinking(model, body)
    _betas(model, betas)


def check(model: ModelEntry, body: dict[str, Any], *, house_pays: bool, dialect: str = CHAT,
          betas: tuple[str, ...] = ()) -> None:
    """Refuse (400) what would multiply the house's cost; send the entry's output cap.

    `body` is the request's own dict (in `dialect`): the cap is added to it when the
    client set none (a Messages request always sets `max_tokens`).
    """
    if not house_pays:
        return
    if dialect == MESSAGES:
        _messages(model, body, betas)
        return
    if BILLED_KEYS.isdisjoint(body):  # the usual request: nothing to check, perhaps a cap to add
        if model.max_output_tokens is not None:
            body[_budget_key(model)] = model.max_output_tokens
        return
    _tools(model, body)
    _service_tier(model, body)
    _output_budget(model, body)
