"""Settings: read once from the environment into one frozen object.

This is the only module that reads `os.environ`. CLI flags override by
passing keyword overrides to `Settings.from_env`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gateway.crashpoints import CrashSpec
from gateway.types import Timeouts

DEFAULT_DATABASE_URL = "sqlite:///bookbag.db"
DEFAULT_PRICING = "pricing.toml"
MIB = 1024 * 1024


class SettingsError(ValueError):
    """A setting has a value the gateway cannot run with."""


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name} must be positive, got {raw!r}")
    return value


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None


def _timeouts(raw: str | None) -> Timeouts:
    """`BOOKBAG_PROVIDER_TIMEOUT`: "total" or "connect,idle,total" in seconds."""
    if not raw:
        return Timeouts(connect=10.0, idle=60.0, total=600.0)
    parts = [p.strip() for p in raw.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise SettingsError(
            f"BOOKBAG_PROVIDER_TIMEOUT must be 'total' or 'connect,idle,total', got {raw!r}"
        ) from None
    if any(v <= 0 for v in values) or len(values) not in (1, 3):
        raise SettingsError(
            f"BOOKBAG_PROVIDER_TIMEOUT must be 'total' or 'connect,idle,total', got {raw!r}"
        )
    if len(values) == 1:
        total = values[0]
        return Timeouts(connect=min(10.0, total), idle=total, total=total)
    return Timeouts(connect=values[0], idle=values[1], total=values[2])


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str | None = None
    redis_timeout: float = 0.5  # connect and read timeout: how fast metered requests 503 when Redis is gone
    metering: bool = True
    pricing_path: Path = Path(DEFAULT_PRICING)
    admin_token: str | None = None
    secret_key: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    provider_timeouts: Timeouts = field(default_factory=lambda: _timeouts(None))
    hold_ttl: float = 900.0
    max_body_bytes: int = 20 * MIB
    body_timeout: float = 30.0
    shutdown_grace: float = 30.0
    key_cache_ttl: float = 2.0
    sync_interval: float = 1.0
    sweep_interval: float = 5.0
    idempotency_retention: float = 24 * 3600.0
    meter: str = "auto"  # auto | memory | sql | redis
    log_level: str = "info"
    log_json: bool = False
    provider_keys: Mapping[str, str] = field(default_factory=dict)
    webhook_interval: float = 1.0  # how often each process looks for webhook deliveries due
    webhook_backoff: float = 5.0  # first retry delay; doubles per attempt, at most an hour
    webhook_max_attempts: int = 12
    webhook_timeout: float = 10.0
    spool_path: Path | None = None  # None: next to the SQLite file, else ./bookbag-spool.jsonl
    litellm_preload: bool = False  # import litellm after startup, not at a litellm route's first use
    # --- stalls (issue 12 points 4-6): per-workspace cap on provider calls in flight ---
    max_inflight_per_workspace: int = 64  # per process; 0 = no cap (gateway/flow/inflight.py)
    max_header_bytes: int = 64 * 1024  # request head size; over it 431 (gateway/edge/protocol.py)
    max_headers: int = 100  # header lines; over it 431
    header_timeout: float = 10.0  # seconds from a head's first byte to its end; over it 408
    # Redis Cluster (issue 17): after each settle, wait for this many replicas to have it
    # (WAIT, pipelined with the settle script), at most redis_wait_timeout seconds; 0 = off.
    redis_wait_replicas: int = 0
    redis_wait_timeout: float = 0.05
    crash_at: str | None = None  # BOOKBAG_TEST_CRASH_AT: TEST-ONLY, see gateway/crashpoints.py
    # --- input checks (issue 12): webhook targets -------------------------------------
    # Webhook URLs at private, loopback, link-local, unspecified or multicast addresses
    # are refused (at create and at delivery) unless the operator allows them.
    webhook_allow_private: bool = False
    # --- the Responses API (issue 14): `store` on the house's provider keys ---------------
    # Off: `store` is forced false there (stored responses would sit in one provider
    # account shared by every workspace); on: the client's `store` is passed on.
    responses_store: bool = False
    # --- the embedded store's durability (issue 15 goal 3) ----------------------------------
    # full (the default): each group commit is fsynced before the replies it charged end, so
    # a charge survives power loss. normal: the WAL is fsynced only at checkpoints; a crash of
    # the process loses nothing, a power loss or OS crash may lose the last commits
    # (docs/performance.md measures what it saves).
    sqlite_synchronous: str = "full"
    # --- fallbacks (issue 16): each model's circuit breaker, per process (flow/breaker.py) ---
    breaker_failures: int = 5  # consecutive failures that open it
    breaker_cooldown: float = 30.0  # seconds it stays open before a trial (half-open)

    def __post_init__(self) -> None:
        if self.sqlite_synchronous not in ("full", "normal"):
            raise SettingsError("BOOKBAG_SQLITE_SYNCHRONOUS must be 'full' or 'normal', "
                                f"got {self.sqlite_synchronous!r}")
        if self.hold_ttl <= self.provider_timeouts.total:
            raise SettingsError(
                f"BOOKBAG_HOLD_TTL ({self.hold_ttl:g}s) must exceed the total provider timeout "
                f"({self.provider_timeouts.total:g}s), or holds could expire while a reply "
                "is still being produced"
            )
        if self.breaker_failures < 1 or self.breaker_cooldown <= 0:
            raise SettingsError("BOOKBAG_BREAKER_FAILURES must be >= 1 and "
                                "BOOKBAG_BREAKER_COOLDOWN > 0 seconds")
        if self.meter not in ("auto", "memory", "sql", "redis"):
            raise SettingsError(f"BOOKBAG_METER must be auto, memory, sql or redis, got {self.meter!r}")
        if self.meter == "redis" and not self.redis_url:
            raise SettingsError("BOOKBAG_METER=redis needs BOOKBAG_REDIS_URL")
        if self.redis_url:  # Redis Cluster: redis+cluster://host:port,host:port (issue 17)
            from gateway.metering.cluster_url import cluster_url

            try:
                cluster_url(self.redis_url)
            except ValueError as exc:
                raise SettingsError(f"BOOKBAG_REDIS_URL: {exc}") from None
        if self.redis_wait_replicas < 0:
            raise SettingsError("BOOKBAG_REDIS_WAIT_REPLICAS must be 0 (off) or more")
        if self.redis_wait_replicas and not 0 < self.redis_wait_timeout < self.redis_timeout:
            raise SettingsError(  # WAIT blocks its connection: the read timeout must outlast it
                "BOOKBAG_REDIS_WAIT_TIMEOUT must be above 0 and below BOOKBAG_REDIS_TIMEOUT")
        if self.crash_at:
            try:
                CrashSpec.parse(self.crash_at)
            except ValueError as exc:
                raise SettingsError(f"BOOKBAG_TEST_CRASH_AT: {exc}") from None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        metering_raw = env.get("BOOKBAG_METERING", "on").strip().lower()
        if metering_raw not in ("on", "off", "true", "false", "1", "0"):
            raise SettingsError(f"BOOKBAG_METERING must be 'on' or 'off', got {metering_raw!r}")
        timeouts = _timeouts(env.get("BOOKBAG_PROVIDER_TIMEOUT"))
        provider_keys = {
            name: env[var]
            for name, var in (("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY"))
            if env.get(var)
        }
        # Any other `*_API_KEY` a catalog entry names through `api_key_env`.
        extra_keys = {k: v for k, v in env.items() if k.endswith("_API_KEY") and v}
        values: dict[str, Any] = {
            "database_url": env.get("BOOKBAG_DATABASE_URL") or DEFAULT_DATABASE_URL,
            "redis_url": env.get("BOOKBAG_REDIS_URL") or None,
            "redis_timeout": _float(env, "BOOKBAG_REDIS_TIMEOUT", 0.5),
            "metering": metering_raw in ("on", "true", "1"),
            "pricing_path": Path(env.get("BOOKBAG_PRICING") or DEFAULT_PRICING),
            "admin_token": env.get("BOOKBAG_ADMIN_TOKEN") or None,
            "secret_key": env.get("BOOKBAG_SECRET_KEY") or None,
            "host": env.get("BOOKBAG_HOST") or "127.0.0.1",
            "port": _int(env, "BOOKBAG_PORT", 8080),
            "provider_timeouts": timeouts,
            "hold_ttl": _float(env, "BOOKBAG_HOLD_TTL", max(900.0, timeouts.total + 60.0)),
            "max_body_bytes": _int(env, "BOOKBAG_MAX_BODY_BYTES", 20 * MIB),
            "body_timeout": _float(env, "BOOKBAG_BODY_TIMEOUT", 30.0),
            "shutdown_grace": _float(env, "BOOKBAG_SHUTDOWN_GRACE", 30.0),
            "key_cache_ttl": _float(env, "BOOKBAG_KEY_CACHE_TTL", 2.0),
            "sync_interval": _float(env, "BOOKBAG_SYNC_INTERVAL", 1.0),
            "sweep_interval": _float(env, "BOOKBAG_SWEEP_INTERVAL", 5.0),
            "idempotency_retention": _float(env, "BOOKBAG_IDEMPOTENCY_RETENTION", 24 * 3600.0),
            "meter": (env.get("BOOKBAG_METER") or "auto").strip().lower(),
            "log_level": (env.get("BOOKBAG_LOG_LEVEL") or "info").lower(),
            "log_json": (env.get("BOOKBAG_LOG_JSON") or "").lower() in ("1", "true", "on"),
            "provider_keys": {**extra_keys, **provider_keys},
            "webhook_interval": _float(env, "BOOKBAG_WEBHOOK_INTERVAL", 1.0),
            "webhook_backoff": _float(env, "BOOKBAG_WEBHOOK_BACKOFF", 5.0),
            "webhook_max_attempts": _int(env, "BOOKBAG_WEBHOOK_MAX_ATTEMPTS", 12),
            "webhook_timeout": _float(env, "BOOKBAG_WEBHOOK_TIMEOUT", 10.0),
            "spool_path": Path(env["BOOKBAG_SPOOL_PATH"]) if env.get("BOOKBAG_SPOOL_PATH") else None,
            "litellm_preload": (env.get("BOOKBAG_LITELLM_PRELOAD") or "").lower() in ("1", "true", "on"),
            "responses_store": (env.get("BOOKBAG_RESPONSES_STORE") or "").lower() in ("1", "true", "on"),
            "sqlite_synchronous": (env.get("BOOKBAG_SQLITE_SYNCHRONOUS") or "full").strip().lower(),
            # stalls (issue 12 points 4-6): per-workspace in-flight cap
            "max_inflight_per_workspace": _int(env, "BOOKBAG_MAX_INFLIGHT_PER_WORKSPACE", 64),
            "max_header_bytes": _int(env, "BOOKBAG_MAX_HEADER_BYTES", 64 * 1024),
            "max_headers": _int(env, "BOOKBAG_MAX_HEADERS", 100),
            "header_timeout": _float(env, "BOOKBAG_HEADER_TIMEOUT", 10.0),
            # Redis Cluster (issue 17)
            "redis_wait_replicas": _int(env, "BOOKBAG_REDIS_WAIT_REPLICAS", 0),
            "redis_wait_timeout": _float(env, "BOOKBAG_REDIS_WAIT_TIMEOUT", 0.05),
            # fallbacks (issue 16)
            "breaker_failures": _int(env, "BOOKBAG_BREAKER_FAILURES", 5),
            "breaker_cooldown": _float(env, "BOOKBAG_BREAKER_COOLDOWN", 30.0),
            "crash_at": env.get("BOOKBAG_TEST_CRASH_AT") or None,  # test-only (crashpoints.py)
            # --- input checks (issue 12): webhook targets
            "webhook_allow_private": (env.get("BOOKBAG_WEBHOOK_ALLOW_PRIVATE") or "").lower()
            in ("1", "true", "on"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def spool_file(self) -> Path:
        """Where unmetered entries wait while the database is down (BOOKBAG_SPOOL_PATH)."""
        if self.spool_path is not None:
            return self.spool_path
        url = self.database_url
        if url.startswith("sqlite") and ":///" in url:
            db_file = url.split(":///", 1)[1].split("?", 1)[0]
            if db_file and db_file != ":memory:":
                return Path(db_file + "-spool.jsonl")
        return Path("bookbag-spool.jsonl")

    def provider_key(self, provider: str, env_name: str | None = None) -> str | None:
        """The gateway's own key for a provider (or the variable a catalog entry names)."""
        if env_name:
            return self.provider_keys.get(env_name)
        return self.provider_keys.get(provider)


def export_env(values: Mapping[str, object]) -> None:
    """Put CLI flags into the environment, so worker processes read the same settings."""
    for name, value in values.items():
        if value is not None:
            os.environ[name] = str(value)
