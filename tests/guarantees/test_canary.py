"""A secret canary (DESIGN invariant 9): provider keys appear in no byte the system wrote.

A real `bookbag-gateway serve` at debug log level serves BYO requests with
unique canary keys — header keys (accepted, rejected by the provider, echoed
back in provider errors and in-band stream errors), a stored workspace key
(encrypted with BOOKBAG_SECRET_KEY), the gateway's own provider key — with
Idempotency-Keys (stored and replayed responses). Then every byte is searched
for each key, its base64 (any alignment), URL- and JSON-escaped forms and its
SHA-256 hex: the database files (SQLite with its WAL, or PostgreSQL's data
directory with pg_wal), the spool, the gateway's whole log output, the
responses the clients got, and on the Redis deployment the AOF and RDB files
of a redis-server started with persistence, and every key in it (streams
read with XRANGE, idempotency records, ...).

Fast: the embedded default. Also fast: Redis + a private PostgreSQL stopped
mid-run, so BYO replies go to the spool (searched while it exists).
"""

from __future__ import annotations

import json
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from cryptography.fernet import Fernet

from tests.fake_provider import FakeProvider
from tests.guarantees.client import Account
from tests.guarantees.conftest import create_accounts
from tests.guarantees.history import Figures
from tests.guarantees.process import ADMIN_TOKEN, GatewayProcess, base_env
from tests.postgres import PostgresServer
from tests.redis_server import RedisServer
from tests.test_secrets import encodings

CHAT = "/v1/chat/completions"
BYO = "X-Bookbag-Provider-Key"


def canary(label: str) -> str:
    """A key whose URL- and JSON-escaped forms differ from it."""
    return f"sk-canary/{label}-{uuid.uuid4().hex}+{uuid.uuid4().hex[:8]}="


def forms(secret: str) -> dict[str, bytes]:
    found = encodings(secret)  # plain, base64 and base64url at every alignment, SHA-256 hex
    found["url"] = urllib.parse.quote(secret, safe="").encode()
    found["url+"] = urllib.parse.quote_plus(secret).encode()
    found["json-escaped"] = json.dumps(secret).strip('"').replace("/", "\\/").encode()
    if secret.startswith("sk-canary/"):  # its random part alone: a masked key shows none of it
        found["entropy"] = secret.rsplit("-", 1)[1][:32].encode()
    return found


def search(secrets: dict[str, str], haystacks: dict[str, bytes]) -> list[str]:
    return [f"{label} ({form}) in {where}"
            for label, secret in secrets.items() for form, needle in forms(secret).items()
            for where, data in haystacks.items() if needle in data]


def files_under(*roots: Path) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.name != "pricing.toml":
                try:
                    found[f"file {path}"] = path.read_bytes()
                except OSError:
                    continue
    return found


def redis_everything(url: str) -> dict[str, bytes]:
    """Every key of a redis-server and its value, read by type (streams with XRANGE)."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    out: list[bytes] = []
    try:
        for key in client.scan_iter(count=1000):
            kind = client.type(key)
            out.append(b"KEY " + key)
            if kind == b"string":
                out.append(client.get(key) or b"")
            elif kind == b"hash":
                out.extend(k + b"=" + v for k, v in client.hgetall(key).items())
            elif kind == b"set":
                out.extend(client.smembers(key))
            elif kind == b"zset":
                out.extend(m for m, _ in client.zrange(key, 0, -1, withscores=True))
            elif kind == b"list":
                out.extend(client.lrange(key, 0, -1))
            elif kind == b"stream":
                for _, fields in client.xrange(key):
                    out.extend(k + b"=" + v for k, v in fields.items())
        client.save()  # the RDB snapshot too (searched with the files)
    finally:
        client.close()
    return {f"redis keys of {url}": b"\n".join(out)}


@dataclass
class Run:
    gw: GatewayProcess
    provider: FakeProvider
    header: Account
    stored: Account
    secrets: dict[str, str]
    responses: list[bytes] = field(default_factory=list)

    def post(self, account: Account, body: dict[str, Any], key: str | None = None,
             idempotency: str | None = None, expect: int = 200) -> bytes:
        headers = {"Authorization": f"Bearer {account.key}"}
        if key is not None:
            headers[BYO] = key
        if idempotency is not None:
            headers["Idempotency-Key"] = idempotency
        with httpx.Client(base_url=self.gw.url, timeout=20) as c:
            r = c.post(CHAT, json=body, headers=headers)
        assert r.status_code == expect, r.text
        data = b"\n".join(f"{k}: {v}".encode() for k, v in r.headers.items()) + b"\n" + r.content
        self.responses.append(data)
        return r.content

    def admin(self, method: str, path: str, body: dict[str, Any]) -> None:
        r = httpx.request(method, self.gw.url + path, json=body, timeout=10,
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert r.status_code == 200, r.text


def byo_traffic(run: Run, tag: str) -> None:
    """Every path a provider key takes, once per stream mode."""
    good, rejected, own = run.secrets["byo"], run.secrets["rejected"], run.secrets["own"]
    provider = run.provider
    for stream in (False, True):
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"hi {tag}"}],
                "stream": stream}
        key = f"idem-{tag}-{stream}"
        run.post(run.header, body, good, idempotency=key)
        run.post(run.header, body, good, idempotency=key)  # replayed from the stored response
        run.post(run.header, body, rejected, expect=401)
        provider.fail("status", status=400, message=f"bad request for key {good}")
        run.post(run.header, body, good, expect=400)
        provider.fail("status", status=500, message=f"internal error, key {good}")
        run.post(run.header, body, good, expect=502)
        run.post(run.stored, body, idempotency=f"stored-{key}")  # the workspace's stored key
        run.post(run.stored, body, idempotency=f"stored-{key}")
        provider.fail("status", status=500, message=f"our own key {own} failed")
        run.post(run.header, body, expect=502)  # metered, on the gateway's own key
        run.post(run.header, body, idempotency=f"own-{key}")
    provider.fail("inband_error", after=1, message=f"stream died, key={good}")
    assert b"[DONE]" not in run.post(run.header, {
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "cut"}], "stream": True},
        good)


@pytest.fixture
def secrets(provider: FakeProvider) -> Iterator[dict[str, str]]:
    found = {"byo": canary("byo"), "rejected": canary("rejected"), "stored": canary("stored"),
             "own": canary("own"), "secret_key": Fernet.generate_key().decode()}
    for name in ("byo", "stored", "own"):
        provider.add_key(found[name], "openai")
    yield found
    provider.openai_keys.difference_update({found["byo"], found["stored"], found["own"]})


def start(tmp: Path, pricing: Path, provider: FakeProvider, secrets: dict[str, str],
          database_url: str | None = None, **extra: str) -> Run:
    url = database_url or f"sqlite:///{tmp / 'gateway.db'}"
    env = base_env(tmp, pricing, url, BOOKBAG_LOG_LEVEL="debug", OPENAI_API_KEY=secrets["own"],
                   BOOKBAG_SECRET_KEY=secrets["secret_key"], **extra)
    header, stored = create_accounts(url, pricing, 2, 1000)
    gw = GatewayProcess(tmp, env).start()
    run = Run(gw, provider, header, stored, secrets)
    run.admin("PUT", f"/admin/workspaces/{stored.workspace_id}/byo/openai",
              {"api_key": secrets["stored"]})
    run.admin("PUT", f"/admin/workspaces/{stored.workspace_id}/byo", {"enabled": True})
    return run


def finish(name: str, run: Run, haystacks: dict[str, bytes], **extra: Any) -> None:
    sent = {r.api_key for r in run.provider.received}
    assert {run.secrets[k] for k in ("byo", "rejected", "stored", "own")} <= sent, \
        "the keys never reached the provider: the search would prove nothing"
    log = run.gw.output()
    assert " DEBUG " in log, "debug logging was off"
    haystacks[f"gateway log {run.gw.log}"] = log.encode()
    haystacks.update({f"response {i}": r for i, r in enumerate(run.responses)})
    leaks = search(run.secrets, haystacks)
    figures = Figures(name, ops=len(run.responses),
                      extra={"haystacks": len(haystacks),
                             "bytes_searched": sum(len(h) for h in haystacks.values()),
                             "leaks": len(leaks), **extra})
    figures.violations.extend(leaks)
    figures.emit()
    figures.assert_clean()


def test_the_search_finds_every_form() -> None:
    secret = canary("probe")
    for form, needle in forms(secret).items():
        assert len(needle) >= 20, form
        assert search({"k": secret}, {"h": b"<" + needle + b">"}) != [], form
    assert search({"k": secret}, {"h": f"x={urllib.parse.quote(secret)}".encode()}) != []
    assert search({"k": secret}, {"h": canary("probe").encode()}) == []


def test_canary_embedded(tmp_path: Path, pricing: Path, provider: FakeProvider,
                         secrets: dict[str, str]) -> None:
    run = start(tmp_path, pricing, provider, secrets)
    try:
        byo_traffic(run, "embedded")
        running = files_under(tmp_path)  # with the WAL as the running process left it
        assert any("gateway.db-wal" in name for name in running)
    finally:
        run.gw.stop()
    haystacks = {f"{k} (running)": v for k, v in running.items()}
    haystacks.update(files_under(tmp_path))
    finish("canary[embedded]", run, haystacks)


@pytest.mark.slow
def test_canary_redis_and_postgres_with_a_spool(tmp_path: Path, pricing: Path,
                                                provider: FakeProvider,
                                                secrets: dict[str, str]) -> None:
    pg = PostgresServer()
    redis_server = RedisServer(tmp_path / "redis", aof=True).start()
    run: Run | None = None
    try:
        pg.start()
        (tmp_path / "gw").mkdir()
        run = start(tmp_path / "gw", pricing, provider, secrets, pg.url(),
                    BOOKBAG_REDIS_URL=redis_server.url)
        byo_traffic(run, "redis")
        pg.stop()  # the ledger database goes away: BYO replies are spooled
        spool = tmp_path / "gw" / "spool.jsonl"
        spooled: dict[str, bytes] = {}
        for i in range(3):
            run.post(run.header, {"model": "gpt-4o-mini", "stream": i == 1,
                                  "messages": [{"role": "user", "content": f"spool {i}"}]},
                     secrets["byo"])
            spooled.update({f"spool (down, {i}) {p}": p.read_bytes()
                            for p in (spool, spool.with_name(spool.name + ".replaying"))
                            if p.exists()})
        assert spooled, "nothing was spooled while PostgreSQL was down"
        pg.start()
        deadline = time.monotonic() + 30
        while httpx.get(run.gw.url + "/readyz", timeout=5).json().get("spool_backlog"):
            assert time.monotonic() < deadline, "the spool was not replayed"
            time.sleep(0.2)
        byo_traffic(run, "after")
        haystacks = redis_everything(redis_server.url)
        haystacks.update(spooled)
        run.gw.stop()
        pg.stop()
        redis_server.stop()
        haystacks.update(files_under(tmp_path, pg.dir))
        assert any("appendonly" in name for name in haystacks), "no AOF file was searched"
        assert any("pg_wal" in name for name in haystacks), "no WAL file was searched"
        finish("canary[redis+postgres]", run, haystacks, spooled_files=len(spooled))
    finally:
        if run is not None:
            run.gw.stop()
        redis_server.stop()
        pg.destroy()
