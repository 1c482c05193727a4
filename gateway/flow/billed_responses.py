"""Features that change what the provider bills, on the Responses route (SPEC "Three
dialects": the same rules as chat, gateway/flow/billed_features.py, whose checks are reused):

- hosted tools: a `tools` entry whose `type` is not `function`/`custom` (web search, file
  search, code interpreter, computer use, MCP, image generation, shell ...) needs the type
  in the entry's `hosted_tools`; so does a `tool_choice` forcing one;
- `service_tier` other than `auto`/`default` needs the tier in the entry's `service_tiers`;
- `max_output_tokens` (reasoning included, as on OpenAI) above the entry's cap is refused;
  when the client sets none, the cap is sent.

With a BYO key nothing is refused or added: the client's own account pays.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import UnsupportedParameter
from gateway.flow.billed_features import CLIENT_TOOLS, _enable_hint, _service_tier, _tools
from gateway.types import ModelEntry

BUDGET = "max_output_tokens"
_CHOICES = CLIENT_TOOLS | {"allowed_tools"}  # allowed_tools names tools already checked


def _tool_choice(model: ModelEntry, body: dict[str, Any]) -> None:
    choice = body.get("tool_choice")
    kind = choice.get("type") if isinstance(choice, dict) else None
    if isinstance(kind, str) and kind not in _CHOICES and kind not in model.hosted_tools:
        raise UnsupportedParameter(
            f"The hosted tool `{kind[:64]}` is not enabled for `{model.id}`; "
            + _enable_hint("hosted_tools") + ".", param="tool_choice.type")


def _output_budget(model: ModelEntry, body: dict[str, Any]) -> None:
    cap, value = model.max_output_tokens, body.get(BUDGET)
    if cap is None:
        return
    if value is None:
        body[BUDGET] = cap
    elif isinstance(value, int) and value > cap:
        raise UnsupportedParameter(
            f"`{BUDGET}` is {value}; `{model.id}` allows at most {cap} output tokens.",
            param=BUDGET)


def check(model: ModelEntry, body: dict[str, Any], *, house_pays: bool) -> None:
    """Refuse (400) what would multiply the house's cost; send the entry's output cap.
    `body` was validated by parse.py (types and ranges)."""
    if not house_pays:
        return
    _tools(model, body)
    _tool_choice(model, body)
    _service_tier(model, body)
    _output_budget(model, body)
