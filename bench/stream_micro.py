"""CPU per stream of the relay's own work on a streamed reply, without a server: the
split of the provider's bytes into events and what the event writer asks of the dialect
(`may_carry_usage`, `inspect` while nothing was delivered, `event` / `usage_event`), for
the bench fake's Responses stream (27 events) and its chat stream (22 events + [DONE]),
received in one read. Best of 7 rounds of 3,000 streams, process CPU time.

    python bench/stream_micro.py [--source DIR]   # DIR holds the `gateway/` to measure

Prints the µs per stream and a digest of the bytes the client would get, so two trees
can be compared for cost and for sameness (`--source before=...` style A/B: run twice).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=ROOT)
    args = parser.parse_args()
    sys.path.insert(0, str(args.source.resolve()))
    sys.path.append(str(ROOT))
    import gateway
    from bench.fake import openai_stream, responses_stream
    from gateway.dialects.chat.stream import CHAT_STREAM
    from gateway.dialects.responses import stream as responses
    from gateway.providers import relay_common

    named = getattr(relay_common, "split_named_events", None)  # None: the older tree
    responses_bytes, chat_bytes = responses_stream(), openai_stream()

    def write(dialect: Any, payloads: list[bytes]) -> bytes:
        delivered, out = False, []
        for payload in payloads:
            if payload == b"[DONE]":
                break
            if not delivered or dialect.may_carry_usage(payload):
                content, usage = dialect.inspect(payload)
            else:
                content, usage = False, None
            out.append(dialect.usage_event(payload, 3) if usage is not None
                       else dialect.event(payload))
            delivered = delivered or content
        return b"".join(out)

    def responses_once() -> bytes:
        if named is not None:
            payloads, _ = named(responses_bytes)
            ends = [p.startswith(responses.TERMINAL_EVENTS) for p in payloads]
        else:  # the relay read each event's type from its data
            payloads, _ = relay_common.split_events(responses_bytes)
            terminal = responses.SUCCESS | responses.FAILURE
            ends = [responses.event_type(p) in terminal for p in payloads]
        assert ends[-1] and not any(ends[:-1])
        return write(responses.ResponsesStream(), payloads)

    def chat_once() -> bytes:
        payloads, _ = relay_common.split_events(chat_bytes)
        return write(CHAT_STREAM, payloads)

    print(f"gateway: {Path(gateway.__file__).parent}")
    for name, once in (("responses", responses_once), ("chat", chat_once)):
        digest = hashlib.sha256(once()).hexdigest()[:16]
        best = float("inf")
        for _ in range(7):
            start = time.process_time()
            for _ in range(3000):
                once()
            best = min(best, (time.process_time() - start) / 3000 * 1e6)
        print(f"{name}: {best:.1f} µs per stream (bytes to the client: sha256 {digest}…)")


if __name__ == "__main__":
    main()
