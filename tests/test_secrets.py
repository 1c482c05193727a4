"""Provider keys never reach the database, the logs or an error body.

A run of BYO requests (accepted, rejected, failing, echoed back by the provider)
with every logger at DEBUG; then every byte of the gateway's files and of the
captured logs and output is searched for the keys, their base64 and SHA-256.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GatewayFactory
from tests.fake_provider import ANTHROPIC_KEY, OPENAI_KEY, FakeProvider
from tests.harness import RunningGateway

CHAT = "/v1/chat/completions"
HELLO: list[Any] = [{"role": "user", "content": "hello there"}]
BYO = "X-Bookbag-Provider-Key"


def encodings(secret: str) -> dict[str, bytes]:
    """The forms a leaked secret would take: itself, base64 (any alignment), SHA-256 hex."""
    raw = secret.encode()
    forms = {"plain": raw, "sha256": hashlib.sha256(raw).hexdigest().encode(),
             "sha256-upper": hashlib.sha256(raw).hexdigest().upper().encode()}
    for offset in range(3):
        for name, encode in (("b64", base64.b64encode), ("b64url", base64.urlsafe_b64encode)):
            encoded = encode(b"\0" * offset + raw)
            skip = (offset * 4 + 2) // 3  # characters that mix in the padding bytes
            forms[f"{name}+{offset}"] = encoded[skip + 1:-4]
    return forms


def leaks(secrets: dict[str, str], haystacks: dict[str, bytes]) -> list[str]:
    found = []
    for label, secret in secrets.items():
        for form, needle in encodings(secret).items():
            for where, data in haystacks.items():
                if needle in data:
                    found.append(f"{label} ({form}) in {where}")
    return found


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every logger at DEBUG, captured (also those that do not propagate)."""
    caplog.set_level(logging.DEBUG)
    patched: list[logging.Logger] = []

    def everything() -> None:
        for name, logger in list(logging.root.manager.loggerDict.items()):
            if isinstance(logger, logging.Logger):
                caplog.set_level(logging.DEBUG, logger=name)
                if not logger.propagate and caplog.handler not in logger.handlers:
                    logger.addHandler(caplog.handler)
                    patched.append(logger)

    caplog.everything = everything  # type: ignore[attr-defined]  # called once the gateway runs
    yield caplog
    for logger in patched:
        logger.removeHandler(caplog.handler)


def run_byo_requests(gw: RunningGateway, provider: FakeProvider, key: str,
                     good: dict[str, str], rejected: dict[str, str]) -> list[bytes]:
    """Every BYO path once; returns the error bodies the client received."""
    errors: list[bytes] = []
    with gw.client(key) as c:
        for model, route, extra in (("gpt-4o-mini", "openai", {}),
                                    ("claude-haiku-4-5", "anthropic", {"max_tokens": 30})):
            body = {"model": model, "messages": HELLO, **extra}
            for stream in (False, True):
                b = {**body, "stream": stream}
                ok = c.post(CHAT, json=b, headers={BYO: good[route]})
                assert ok.status_code == 200, ok.text
                bad = c.post(CHAT, json=b, headers={BYO: rejected[route]})
                assert bad.status_code == 401 and \
                    bad.json()["error"]["code"] == "provider_auth_failed", bad.text
                errors.append(bad.content)
                # A provider that echoes the key back in its error message.
                provider.fail("status", status=400, message=f"bad request for key {good[route]}")
                echoed = c.post(CHAT, json=b, headers={BYO: good[route]})
                assert echoed.status_code == 400, echoed.text
                errors.append(echoed.content)
                provider.fail("status", status=500, message=f"internal error, key {good[route]}")
                failed = c.post(CHAT, json=b, headers={BYO: good[route]})
                assert failed.status_code == 502, failed.text
                errors.append(failed.content)
            # Broken mid-stream with the key in the in-band error.
            provider.fail("inband_error", after=1, message=f"stream died, key={good[route]}")
            with c.stream("POST", CHAT, json={**body, "stream": True},
                          headers={BYO: good[route]}) as r:
                assert r.status_code == 200
                tail = r.read()
            assert b"[DONE]" not in tail
            errors.append(tail)
        emb = c.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"},
                     headers={BYO: good["openai"]})
        assert emb.status_code == 200, emb.text
        emb_bad = c.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"},
                         headers={BYO: rejected["openai"]})
        assert emb_bad.status_code == 401, emb_bad.text
        errors.append(emb_bad.content)
        refused = c.post(CHAT, json={"model": "custom-llm", "messages": HELLO},
                         headers={BYO: good["openai"]})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "byo_not_allowed"
        errors.append(refused.content)
        preview = c.post("/v1/chat/completions/preview", json={"model": "gpt-4o", "messages": HELLO},
                         headers={BYO: good["openai"]})
        assert preview.json()["billing_mode"] == "byo"
        errors.append(preview.content)
    return errors


def gateway_files(tmp_path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(tmp_path)): p.read_bytes()
            for p in sorted(tmp_path.rglob("*")) if p.is_file() and p.name != "pricing.toml"}


def test_byo_keys_appear_nowhere(
    make_gateway: GatewayFactory, provider: FakeProvider, tmp_path: Path,
    debug_logs: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:
    gw = make_gateway(BOOKBAG_LOG_LEVEL="debug")
    gw.run(gw.gw.providers.litellm.warm())  # litellm's loggers exist from here on
    debug_logs.everything()  # type: ignore[attr-defined]
    ws, key = gw.workspace("free")
    canary = uuid.uuid4().hex
    good = {"openai": f"sk-canary-{canary}-oa", "anthropic": f"sk-ant-canary-{canary}-an"}
    rejected = {"openai": f"sk-canary-{uuid.uuid4().hex}-rej",
                "anthropic": f"sk-ant-canary-{uuid.uuid4().hex}-rej"}
    provider.add_key(good["openai"], "openai")
    provider.add_key(good["anthropic"], "anthropic")
    errors = run_byo_requests(gw, provider, key, good, rejected)

    # The requests really carried the keys (the test would prove nothing otherwise).
    sent = {r.api_key for r in provider.received}
    assert set(good.values()) | set(rejected.values()) <= sent
    rows = gw.wait_ledger(ws, 4)
    assert len(rows) == 4 and {r["billing_mode"] for r in rows} == {"byo"}
    assert any(r.levelno == logging.DEBUG for r in debug_logs.records)  # debug really on

    secrets = {f"byo {k}": v for k, v in good.items()}
    secrets.update({f"rejected {k}": v for k, v in rejected.items()})
    secrets.update({"own openai": OPENAI_KEY, "own anthropic": ANTHROPIC_KEY})
    entropy = {f"canary part {k}": v.split("-canary-")[1] for k, v in {**good, **rejected}.items()}

    running_files = gateway_files(tmp_path)
    assert any(name.startswith("gateway.db") for name in running_files)
    gw.stop()
    out, err = capfd.readouterr()
    logs = "\n".join(debug_logs.messages) + "\n" + debug_logs.text
    formatted = "\n".join(
        logging.Formatter("%(message)s %(exc_info)s %(args)s").format(r) for r in debug_logs.records
    )
    haystacks: dict[str, bytes] = {f"file {n} (running)": d for n, d in running_files.items()}
    haystacks.update({f"file {n} (stopped)": d for n, d in gateway_files(tmp_path).items()})
    haystacks.update({"logs": logs.encode(), "log records": formatted.encode(),
                      "stdout": out.encode(), "stderr": err.encode()})
    haystacks.update({f"error body {i}": body for i, body in enumerate(errors)})
    assert leaks(secrets, haystacks) == []
    # Workspace keys are stored as their SHA-256 (by design); never in plain or base64.
    found = leaks({"workspace key": key}, haystacks)
    assert [f for f in found if "(sha256" not in f] == []
    # The random part alone: a key masked as "sk-canar...x-oa" still must not show it whole.
    found = [f"{label} in {where}" for label, part in entropy.items()
             for where, data in haystacks.items() if part.encode() in data]
    assert found == []


def test_the_search_would_find_a_leak() -> None:
    """The search itself works: each form of a key is found where it was written."""
    secret = "sk-canary-" + uuid.uuid4().hex
    for form, needle in encodings(secret).items():
        assert len(needle) >= 20, form
    assert leaks({"k": secret}, {"a": b"x" + secret.encode()}) != []
    for prefix in (b"", b"a", b"ab"):
        blob = base64.b64encode(prefix + secret.encode())
        assert leaks({"k": secret}, {"b64": b"Basic " + blob}) != [], prefix
    digest = hashlib.sha256(secret.encode()).hexdigest().encode()
    assert leaks({"k": secret}, {"hash": b"key_hash=" + digest}) != []
    assert leaks({"k": secret}, {"none": b"sk-canary-" + b"0" * 32}) == []
