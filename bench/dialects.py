"""The dialect scenarios (issues 14 and 15): each route beside the chat relay, in one gateway.

One gateway (`dialects`, or `dialects @LABEL` for each `--source`) whose catalog has
`gpt-4o-mini` (chat and Responses, at the fake provider) and `claude-haiku-4-5` (Anthropic,
the fake's `/v1/messages`) serves five routes, each driven by wrk at 16 in flight, JSON
and stream, back to back with the bare reference relay so that the ratios come from the
same minute and the same process:

- chat relay: `POST /v1/chat/completions` to gpt-4o-mini, the baseline;
- messages relay: `POST /v1/messages` to claude-haiku-4-5, relayed as bytes;
- claude route: `POST /v1/chat/completions` to claude-haiku-4-5 (chat -> Messages ->
  the native relay -> chat);
- messages -> openai: `POST /v1/messages` to gpt-4o-mini (translated to chat and back);
- responses relay: `POST /v1/responses` to gpt-4o-mini, only when the route answers 200
  (probed once; otherwise the report says "not served").

The figure that matters is CPU ms per request over the chat relay's (issue 15: goal 1, a
translated route at most 2x; goal 5, a relayed dialect within 10 %). The auth is the
Bearer header on every route (the Messages route takes it as the Anthropic SDKs send it).

A single back-to-back pass swings by 10-15 % on a shared machine, as much as the goal's
margin, so the pass is repeated (`--rounds`, 3 by default), the routes' order rotated each
round, and a ratio is the median of the rounds' ratios, printed with their range; the
req/s and CPU columns pool the rounds.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from bench.load import Result, Target, wrk
from bench.procs import Proc, post
from bench.stack import MESSAGES, Gateway, body, pricing, start_gateway

if TYPE_CHECKING:
    from bench.report import Run

CONNS = 16
CHAT, MESSAGES_RELAY, CLAUDE, TO_OPENAI, RESPONSES = (
    "chat relay", "messages relay", "claude route", "messages -> openai", "responses relay")


def messages_body(model: str, stream: bool) -> bytes:
    """The chat scenario's conversation in Anthropic's shape."""
    data: dict[str, object] = {"model": model, "max_tokens": 256,
                               "system": MESSAGES[0]["content"],
                               "messages": [MESSAGES[1]]}
    if stream:
        data["stream"] = True
    return orjson.dumps(data)


def responses_body(model: str, stream: bool) -> bytes:
    """The chat scenario's conversation in the Responses shape."""
    data: dict[str, object] = {"model": model, "instructions": MESSAGES[0]["content"],
                               "input": MESSAGES[1]["content"]}
    if stream:
        data["stream"] = True
    return orjson.dumps(data)


@dataclass(frozen=True)
class Route:
    name: str
    path: str
    model: str
    make_body: Callable[[str, bool], bytes]
    baseline: str  # the relay it is judged against
    goal: float  # at most this many times the baseline's CPU per request
    issue_goal: str


ROUTES = (
    Route(CHAT, "/v1/chat/completions", "gpt-4o-mini", body, CHAT, 1.0, "baseline"),
    Route(MESSAGES_RELAY, "/v1/messages", "claude-haiku-4-5", messages_body, CHAT, 1.10,
          "15.5: ≤ 1.10 × chat relay"),
    Route(CLAUDE, "/v1/chat/completions", "claude-haiku-4-5", body, CHAT, 2.0,
          "15.1: ≤ 2 × chat relay"),
    Route(TO_OPENAI, "/v1/messages", "gpt-4o-mini", messages_body, CHAT, 2.0,
          "15.1: ≤ 2 × chat relay"),
    Route(RESPONSES, "/v1/responses", "gpt-4o-mini", responses_body, CHAT, 1.10,
          "15.5: ≤ 1.10 × chat relay"),
)


def dialect_pricing(fast: int, slow: int) -> str:
    """The bench catalog with Claude, and with gpt-4o-mini speaking Responses too (a custom
    `api_base` speaks chat only unless its entry says)."""
    text = pricing(fast, slow, anthropic=True)
    head = '[models."gpt-4o-mini"]\n'
    return text.replace(head, head + 'dialects = ["chat", "responses"]\n', 1)


def mode_of(scenario_mode: str) -> str | None:
    """"json" for the scenario "json dialects", None for any other scenario."""
    mode, _, rest = scenario_mode.partition(" ")
    return mode if rest == "dialects" else None


def start(run: Run, workdir: Path, fast: int, slow: int, sources: list[str]) -> list[Gateway]:
    """The dialect gateway of this tree and one per `--source` (those that fail to start,
    e.g. a tree without the catalog's `dialects`, are noted and left out)."""
    text = dialect_pricing(fast, slow)
    wanted: list[tuple[str, Path | None]] = [("dialects", None)]
    for spec in sources:
        label, _, directory = spec.partition("=")
        wanted.append((f"dialects @{label}", Path(directory).resolve()))
    gateways = []
    for name, source in wanted:
        try:
            gw = start_gateway(name.replace(" ", "-").replace("@", ""), workdir, text, {}, source)
        except RuntimeError as exc:
            run.notes.append(f"{name}: the gateway did not start ({str(exc)[-300:]})")
            continue
        gw.name = name
        run.cold_start[name] = gw.proc.cold_start_s or 0.0
        gateways.append(gw)
    return gateways


def _suffix(gw: Gateway) -> str:
    return gw.name.removeprefix("dialects")


def _served(run: Run, gw: Gateway, route: Route) -> bool:
    """One request: does the gateway answer this route with a 200?"""
    status, reply = post(gw.url + route.path, route.make_body(route.model, False),
                         {"Authorization": gw.auth}, timeout=60)
    if status == 200:
        return True
    run.notes.append(f"{route.name}{_suffix(gw)}: not served (HTTP {status}: "
                     f"{reply[:160].decode(errors='replace')})")
    return False


def measure_all(run: Run, workdir: Path, gateways: list[Gateway], relay: Proc, relay_url: str,
                seconds: float, rounds: int = 3) -> None:
    """Warm each served route, then `rounds` times, per mode, every route of every gateway
    back to back (the order rotated each round); each round's row under
    `run.rounds[("<mode> dialects", 0, 16)]`, the rounds pooled in `run.rows`."""
    targets: dict[str, list[tuple[str, Route, Target, Proc]]] = {"json": [], "stream": []}
    for mode in targets:
        path = workdir / f"dialects-reference-{mode}.json"
        path.write_bytes(body("gpt-4o-mini", mode == "stream"))
        ref = Route("reference", "/v1/chat/completions", "gpt-4o-mini", body, CHAT, 0, "")
        targets[mode].append(("reference", ref, Target(relay_url + ref.path, path), relay))
    for gw in gateways:
        for route in ROUTES:
            if not _served(run, gw, route):
                continue
            for mode in targets:
                path = workdir / f"{gw.name}-{route.name}-{mode}.json".replace(" ", "-")
                path.write_bytes(route.make_body(route.model, mode == "stream"))
                target = Target(gw.url + route.path, path, gw.auth)
                targets[mode].append((route.name + _suffix(gw), route, target, gw.proc))
    for rows in targets.values():
        for name, _, target, _ in rows:
            if name != "reference":
                wrk(target, CONNS, max(1.0, seconds / 2))
    for turn in range(rounds):
        for mode, rows in targets.items():
            print(f"{mode:6} dialects, {CONNS} in flight, round {turn + 1}/{rounds} ...",
                  flush=True)
            shift = turn % len(rows)
            row: dict[str, Result] = {}
            for name, _, target, proc in rows[shift:] + rows[:shift]:
                before = proc.cpu_seconds()
                result = wrk(target, CONNS, seconds)
                result.cpu_s = proc.cpu_seconds() - before
                row[name] = result
            run.rounds.setdefault((f"{mode} dialects", 0, CONNS), []).append(row)
    for scenario, each in run.rounds.items():
        if mode_of(scenario[0]) is not None:
            run.rows[scenario] = {name: _pooled([row[name] for row in each])
                                  for name in each[0]}
    for gw in gateways:
        run.memory[gw.name] = (gw.proc.rss_mb(), gw.proc.peak_rss_mb())


def _pooled(results: list[Result]) -> Result:
    """The rounds of one route as one result: requests, seconds and CPU summed, the median
    of the p50s and the worst p99."""
    cpu = [r.cpu_s for r in results]
    return Result(requests=sum(r.requests for r in results),
                  seconds=sum(r.seconds for r in results),
                  errors=sum(r.errors for r in results),
                  p50_ms=statistics.median(r.p50_ms for r in results),
                  p99_ms=max(r.p99_ms for r in results),
                  cpu_s=None if None in cpu else sum(c for c in cpu if c is not None))


def _ratio(row: dict[str, Result], name: str, base: str) -> float | None:
    mine, theirs = row.get(name), row.get(base)
    if not (mine and theirs and mine.cpu_ms_per_req and theirs.cpu_ms_per_req):
        return None
    return mine.cpu_ms_per_req / theirs.cpu_ms_per_req


def _ratios(rounds: list[dict[str, Result]], name: str, base: str) -> list[float]:
    """The ratio in each round where both were measured."""
    found = (_ratio(row, name, base) for row in rounds)
    return [r for r in found if r is not None]


def table(run: Run) -> list[str]:
    """Markdown: CPU per request of each route and its ratio to the chat relay and to the
    Messages relay of the same gateway, with issue 15's goal, met or not."""
    out = ["| route | mode | req/s | p50 ms | CPU ms/req | × chat relay (range) "
           "| × messages relay | × reference | goal | met |",
           "|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    by_name = {r.name: r for r in ROUTES}
    for scenario, row in run.rows.items():
        mode = mode_of(scenario[0])
        if mode is None:
            continue
        rounds = run.rounds.get(scenario) or [row]
        for name, result in row.items():
            base_name, _, label = name.partition(" @")
            suffix = f" @{label}" if label else ""
            route = by_name.get(base_name)
            x_chat = _ratios(rounds, name, CHAT + suffix)
            x_messages = _ratios(rounds, name, MESSAGES_RELAY + suffix)
            x_ref = _ratios(rounds, name, "reference")
            goal, met = "—", "—"
            if route is not None and route.name != CHAT:
                goal = route.issue_goal
                ratios = _ratios(rounds, name, route.baseline + suffix)
                met = ("—" if not ratios
                       else "yes" if statistics.median(ratios) <= route.goal else "**no**")
            cpu = result.cpu_ms_per_req
            out.append(f"| {name} | {mode} | {result.rps:,.0f} | {result.p50_ms:.2f} | "
                       f"{'—' if cpu is None else f'{cpu:.3f}'} | {_x(x_chat, spread=True)} | "
                       f"{_x(x_messages)} | {_x(x_ref)} | {goal} | {met} |")
    if len(out) == 2:
        return []
    count = max(len(each) for each in run.rounds.values()) if run.rounds else 1
    return [*out, "", f"Ratios: the median of {count} rounds' ratios (their range in "
                      "brackets); req/s and CPU ms/req pool the rounds."]


def _x(values: list[float], spread: bool = False) -> str:
    if not values:
        return "—"
    text = f"{statistics.median(values):.2f}×"
    if spread and len(values) > 1 and max(values) != min(values):
        text += f" ({min(values):.2f}–{max(values):.2f})"
    return text
