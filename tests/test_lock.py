"""The install is reproducible: every dependency is pinned in requirements.lock, and the
README's two commands, .ci/run and the Dockerfile install from it."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9._-]+)==([^\s;]+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_every_declared_dependency_is_pinned() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"]) + list(project["optional-dependencies"]["test"])
    pins = _pins()
    assert pins, "requirements.lock pins nothing"
    assert not [d for d in declared if _name(d) not in pins]
    # Nothing is left open: each line of the lock is a pin, a comment or a blank.
    for line in LOCK.read_text().splitlines():
        assert not line.strip() or line.lstrip().startswith("#") or "==" in line, line


def test_the_installed_versions_are_the_locked_ones() -> None:
    """What this test run imports is what the lock says (a drifted venv fails here)."""
    pins = _pins()
    for name in ("litellm", "starlette", "uvicorn", "redis", "sqlmodel", "pytest", "openai"):
        assert metadata.version(name) == pins[name], name


def test_the_readme_commands_and_ci_install_from_the_lock() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("python3 -m venv .venv")]
    assert len(commands) == 2, commands  # run, test
    assert all("pip install" in c and "-c requirements.lock" in c for c in commands)
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()
