"""docker-compose.yml and the Dockerfile, checked as files (no Docker engine runs in tests):
the services, their health checks, Redis durability, migrations on start, and settings
names the gateway actually reads."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gateway.cli.app import app

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def gateways(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if "build" in svc}


def command_of(service: dict[str, Any]) -> str:
    command = service["command"]
    return command if isinstance(command, str) else shlex.join(command)


def test_services_and_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["postgres"]["image"] == "postgres:15"
    assert services["redis"]["image"].startswith("redis:")
    assert len(gateways(compose)) >= 2
    for name, service in services.items():
        check = service.get("healthcheck", {})
        assert check.get("test"), f"{name} has no health check"
        assert isinstance(check["test"], list) and check["test"][0] in ("CMD", "CMD-SHELL"), name
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"][1:] == ["redis-cli", "ping"]


def test_redis_keeps_balances_durable_and_never_evicts(compose: dict[str, Any]) -> None:
    args = compose["services"]["redis"]["command"]
    options = dict(zip(args[1::2], args[2::2], strict=True))
    assert args[0] == "redis-server"
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] == "everysec"
    assert options["--maxmemory-policy"] == "noeviction"
    assert any("/data" in v for v in compose["services"]["redis"]["volumes"])


def test_gateways_migrate_then_serve_after_their_stores_are_healthy(compose: dict[str, Any]) -> None:
    ports = []
    spools = []
    for name, service in gateways(compose).items():
        assert service["build"] == "."
        for store in ("postgres", "redis"):
            assert service["depends_on"][store]["condition"] == "service_healthy", name
        command = command_of(service)
        upgrade, serve = command.find("bookbag-gateway db upgrade"), command.find("bookbag-gateway serve")
        assert 0 <= upgrade < serve, command
        assert "&&" in command[upgrade:serve] and "exec bookbag-gateway serve" in command
        assert "--host 0.0.0.0" in command
        env = service["environment"]
        assert env["BOOKBAG_DATABASE_URL"].startswith("postgresql://")
        assert "@postgres:5432/" in env["BOOKBAG_DATABASE_URL"]
        assert env["BOOKBAG_REDIS_URL"].startswith("redis://redis:6379")
        grace = float(env["BOOKBAG_SHUTDOWN_GRACE"])
        assert float(service["stop_grace_period"].rstrip("s")) > grace, name
        ports.extend(p.split(":")[0] for p in service["ports"])
        spools.extend(v.split(":")[0] for v in service["volumes"])
    assert len(ports) == len(set(ports)), "two gateways publish the same host port"
    assert len(spools) == len(set(spools)), "each gateway needs its own spool volume"
    assert set(spools) <= set(compose["volumes"])


def test_every_setting_named_is_one_the_gateway_reads(compose: dict[str, Any]) -> None:
    known = set(re.findall(r"BOOKBAG_[A-Z_]+", (ROOT / "gateway/settings.py").read_text()))
    dockerfile = (ROOT / "Dockerfile").read_text()
    named = set(re.findall(r"BOOKBAG_[A-Z_]+", dockerfile))
    for service in gateways(compose).values():
        named |= {k for k in service["environment"] if k.startswith("BOOKBAG_")}
    assert named and named <= known, named - known


def test_the_commands_and_flags_used_exist() -> None:
    serve = runner.invoke(app, ["serve", "--help"])
    assert serve.exit_code == 0
    for flag in ("--host", "--port", "--workers"):
        assert flag in serve.stdout
    assert runner.invoke(app, ["db", "upgrade", "--help"]).exit_code == 0


def test_the_dockerfile_builds_the_repository_on_python_3_11_slim() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert re.search(r"^COPY gateway \./gateway$", text, re.M)
    assert re.search(r"pip install -c requirements\.lock \.", text)
    assert re.search(r"^COPY .*requirements\.lock", text, re.M)
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*readyz", text, re.M)
    cmd = re.search(r"^CMD (.+)$", text, re.M)
    assert cmd and "db upgrade" in cmd.group(1) and "exec bookbag-gateway serve" in cmd.group(1)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
