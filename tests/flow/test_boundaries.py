"""The flow knows nothing of HTTP: no module of gateway/flow imports a web framework or the edge."""

from __future__ import annotations

import ast
from pathlib import Path

import gateway.flow

FORBIDDEN = ("starlette", "uvicorn", "httpx", "gateway.edge", "gateway.app")


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_flow_imports_no_web_framework_and_not_the_edge() -> None:
    folder = Path(gateway.flow.__file__).parent
    modules = sorted(folder.glob("*.py"))
    assert len(modules) > 5
    for path in modules:
        bad = {name for name in _imports(path)
               if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)}
        assert not bad, f"{path.name} imports {sorted(bad)}"
