"""`serve`: one startup summary, a second gateway on the same database refused in one line,
and a command that just created a new, empty database says so."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from typer.testing import CliRunner

from gateway.cli.app import app as cli
from tests.harness import RunningGateway, free_port


def test_serve_prints_one_summary_then_a_second_serve_is_one_line(tmp_path: Path,
                                                                  pricing: Path) -> None:
    db = f"sqlite:///{tmp_path / 'served.db'}"
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("BOOKBAG_") and not k.endswith("_API_KEY")}
    env.update({"BOOKBAG_DATABASE_URL": db, "BOOKBAG_PRICING": str(pricing),
                "BOOKBAG_SPOOL_PATH": str(tmp_path / "spool.jsonl"), "BOOKBAG_SHUTDOWN_GRACE": "2",
                "ANTHROPIC_API_KEY": "sk-ant-test", "BOOKBAG_ADMIN_TOKEN": "t", "COLUMNS": "200"})
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)

        second = subprocess.run(
            [sys.executable, "-m", "gateway", "serve", "--port", str(free_port())],
            env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2, second
        assert "Traceback" not in second.stderr and second.stdout == ""
        [line] = second.stderr.strip().splitlines()
        assert line.startswith("error: another gateway process") and "BOOKBAG_REDIS_URL" in line
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            output = proc.communicate(timeout=30)[0].decode()
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output = proc.communicate(timeout=10)[0].decode()
    head = output.split("INFO")[0]
    assert f"bookbag-gateway on http://127.0.0.1:{port} (1 worker)" in head, output
    assert f"database       {db}  (new and empty: schema created)" in head
    assert "meter          memory" in head and "metering       on" in head
    assert "admin API      on" in head
    assert "secret key     not set (BYO keys and webhooks need BOOKBAG_SECRET_KEY)" in head
    assert "provider keys  ANTHROPIC_API_KEY" in head
    # every test model has an api_base (no key needed), so no warning here; see below
    assert "warning" not in head
    assert "Traceback" not in output


def test_the_summary_warns_about_models_no_key_reaches(tmp_path: Path) -> None:
    from gateway.catalog import load
    from gateway.cli.serve import summary
    from gateway.settings import Settings

    pricing = tmp_path / "p.toml"
    pricing.write_text('[models."gpt-4o-mini"]\nprovider = "openai"\ncredits = 1\n\n'
                       '[models."local"]\nprovider = "local"\ncredits = 1\n\n'
                       '[plans.free]\ncredits = 100\n')
    settings = Settings.from_env({"BOOKBAG_DATABASE_URL": "postgresql://u:secret@db/x",
                                  "BOOKBAG_PRICING": str(pricing)})
    lines = summary(settings, load(pricing), created=False, workers=1)
    text = "\n".join(lines)
    assert "secret" not in text.replace("secret key", "")  # the URL's password is hidden
    assert "admin API      off (BOOKBAG_ADMIN_TOKEN not set)" in text
    assert "provider keys  none" in text
    assert lines[-1].startswith("warning: no provider key for gpt-4o-mini (OPENAI_API_KEY)")


def test_a_command_that_created_a_new_database_says_so(tmp_path: Path, pricing: Path,
                                                       gateway: RunningGateway) -> None:
    runner = CliRunner()
    fresh = f"sqlite:///{tmp_path / 'elsewhere' / 'bookbag.db'}"
    (tmp_path / "elsewhere").mkdir()
    env = {"BOOKBAG_PRICING": str(pricing)}
    result = runner.invoke(cli, ["workspace", "list", "--database-url", fresh], env=env)
    assert result.exit_code == 0, result.output
    assert "was a new, empty database" in result.output and "(none)" in result.output
    result = runner.invoke(cli, ["workspace", "list", "--database-url", fresh], env=env)
    assert "new, empty" not in result.output  # only the first time
    result = runner.invoke(cli, ["workspace", "list", "--database-url",
                                 gateway.settings.database_url], env=env)
    assert "new, empty" not in result.output
