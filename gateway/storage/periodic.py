"""Periodic background jobs: one loop for every sweep, sync, replay and dispatch round.

`Periodic` runs `job` every `interval` seconds in its own task (`start`, then
`stop()`), or in the caller's (`await run()`, until cancelled).
A failing round is logged and the loop goes on (the next round retries): the
errors listed in `quiet` (an outage already translated, such as
`ServiceUnavailable`) get one line, anything else its traceback. A job may
ask for its next round at once by returning True (a dispatcher that filled
its batch). `stop()` lets the round in progress finish for up to `grace`
seconds, so its database work is not cut off midway, then cancels it; with
no grace it cancels at once. No jitter: the loops that share a database
claim their work in transactions, so their phases need not be spread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

Job = Callable[[], Awaitable[object]]


class Periodic:
    def __init__(self, name: str, job: Job, interval: float, *, log: logging.Logger,
                 quiet: tuple[type[BaseException], ...] = (), first_at_once: bool = False) -> None:
        self.name = name
        self._job = job
        self._interval = interval
        self._log = log
        self._quiet = quiet
        self._first_at_once = first_at_once  # run a round on start, not one interval later
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._stop.clear()
        self._task = asyncio.create_task(self.run(), name=self.name)

    async def stop(self, grace: float = 0.0) -> None:
        """End the loop: the round in progress has `grace` seconds to finish, then is cancelled."""
        self._stop.set()
        task, self._task = self._task, None
        if task is None:
            return
        if grace > 0:
            done, _ = await asyncio.wait({task}, timeout=grace)
            if done:
                return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def run(self) -> None:
        """The loop itself, until `stop()` or cancellation."""
        if not self._first_at_once:
            await self._pause()
        while not self._stop.is_set():
            again = await self.run_once()
            if not again:
                await self._pause()

    async def run_once(self) -> bool:
        """One round, its failure logged; whether the job asked for the next round at once."""
        try:
            return await self._job() is True
        except self._quiet as exc:
            self._log.warning("%s failed: %s", self.name, exc)
        except Exception:
            self._log.warning("%s failed", self.name, exc_info=True)
        return False

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), self._interval)
