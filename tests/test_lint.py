"""The codebase stays typed (mypy strict on the package) and ruff clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_strict_on_the_package() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_clean() -> None:
    paths = [p for p in ("gateway", "tests", "bench") if (ROOT / p).is_dir()]
    result = subprocess.run([sys.executable, "-m", "ruff", "check", *paths],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_packaged_pricing_matches_the_repository_file() -> None:
    assert (ROOT / "pricing.toml").read_text() == (ROOT / "gateway/default_pricing.toml").read_text()


# The import rules of the layout (docs/architecture.md), each checked to bite: ruff reads a
# file as if it sat at the given path, so nothing is written into the package.
BOUNDARIES = [
    ("gateway/flow/example.py", "from starlette.responses import Response\n"),
    ("gateway/flow/example.py", "from gateway.edge.request import services\n"),
    ("gateway/flow/example.py", "from gateway.metering.memory import MemoryMeter\n"),
    ("gateway/dialects/example.py", "import starlette\n"),
    ("gateway/dialects/example.py", "from gateway.flow.pipeline import Pipeline\n"),
    ("gateway/edge/example.py", "from gateway.metering.redis import RedisMeter\n"),
    ("gateway/edge/example.py", "from gateway.app import create_app\n"),
    ("gateway/accounts/example.py", "from gateway.providers.relay import RelayProvider\n"),
    ("gateway/ledger/example.py", "from gateway.idempotency.sql import SqlIdempotencyStore\n"),
]


def test_the_layouts_import_rules_refuse_a_crossing() -> None:
    for path, source in BOUNDARIES:
        result = subprocess.run(
            [sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "TID251",
             "--stdin-filename", path, "-"],
            cwd=ROOT, input=source, capture_output=True, text=True)
        assert result.returncode == 1 and "TID251" in result.stdout, (path, source, result.stdout)


def test_the_composition_root_may_build_concrete_parts() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "TID251",
         "--stdin-filename", "gateway/app.py", "-"],
        cwd=ROOT, input="from gateway.metering.memory import MemoryMeter\n",
        capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
