"""The attribution examples of the README and docs/usage.md run as written (with the openai SDK)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.harness import RunningGateway

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(path: Path, after: str) -> list[str]:
    text = path.read_text()
    section = text[text.index(after):]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_documented_attribution_examples_tag_replies(gateway: RunningGateway) -> None:
    _ws, key = gateway.workspace("hobby")
    readme = python_blocks(ROOT / "README.md", "or from Python:")
    usage = python_blocks(ROOT / "docs" / "usage.md", "## Attribution")
    assert "X-Bookbag-Agent-Id" in readme[1] and "metadata=" in usage[0]
    readme_ns: dict[str, object] = {}
    for code, ns in ((readme[0].replace("messages=[...]", 'messages=[{"role": "user", "content": "hi"}]'),
                      readme_ns), (readme[1], readme_ns), (usage[0], {})):
        code = code.replace("http://127.0.0.1:8080/v1", gateway.url + "/v1").replace("bk_...", key)
        exec(compile(code, "docs", "exec"), ns)  # the docs' own examples, as written
    with gateway.client(key) as c:
        rows = c.get("/v1/usage", params={"group_by": "agent,conversation"}).json()["data"]
    by = {(r["agent"], r["conversation"]): r["replies"] for r in rows}
    # README: one untagged, one tagged by both headers; usage.md: header + extra_headers, metadata
    assert by == {(None, None): 1, ("support-bot", "ticket-4812"): 3}, by
