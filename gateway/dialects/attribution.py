"""Attribution, the same on every dialect (SPEC "Attribution"): a key bound to an agent
fixes the agent (another one asked for is a 403); otherwise the X-Bookbag-* headers, then
`metadata.agent_id` / `metadata.conversation_id`, which are taken out of the body before
it is forwarded. Ids match ^[A-Za-z0-9._-]{1,128}$."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from gateway.errors import Forbidden, InvalidRequest
from gateway.types import Caller

AGENT_HEADER = "x-bookbag-agent-id"
CONVERSATION_HEADER = "x-bookbag-conversation-id"
BOOKBAG_METADATA = ("agent_id", "conversation_id")
ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def attribution_id(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not ID_RE.match(value):
        raise InvalidRequest(f"`{name}` must match ^[A-Za-z0-9._-]{{1,128}}$.", param=name)
    return value


def take_metadata(body: dict[str, Any], metadata: Mapping[str, Any]
                  ) -> tuple[str | None, str | None]:
    """The agent and conversation in `metadata` (an object the dialect has checked), taken
    out of the body's metadata (dropped when nothing else is left in it)."""
    agent = attribution_id(metadata.get("agent_id"), "metadata.agent_id")
    conversation = attribution_id(metadata.get("conversation_id"), "metadata.conversation_id")
    if any(k in metadata for k in BOOKBAG_METADATA):
        rest = {k: v for k, v in metadata.items() if k not in BOOKBAG_METADATA}
        if rest:
            body["metadata"] = rest
        else:
            del body["metadata"]
    return agent, conversation


def attribute(headers: Mapping[str, str], caller: Caller, meta_agent: str | None,
              meta_conversation: str | None) -> tuple[str | None, str | None]:
    """(agent, conversation): the headers first, then the metadata; a bound key's agent."""
    agent = attribution_id(headers.get(AGENT_HEADER), "X-Bookbag-Agent-Id") or meta_agent
    conversation = attribution_id(headers.get(CONVERSATION_HEADER),
                                  "X-Bookbag-Conversation-Id") or meta_conversation
    return bound_agent(caller, agent), conversation


def bound_agent(caller: Caller, requested: str | None) -> str | None:
    """A key bound to an agent fixes the agent; another agent in the request is a 403."""
    if caller.agent_id is None:
        return requested
    if requested is not None and requested != caller.agent_id:
        raise Forbidden(
            f"This key is bound to agent `{caller.agent_id}` and cannot act as `{requested}`.",
            code="agent_mismatch",
        )
    return caller.agent_id
