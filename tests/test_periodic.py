"""`Periodic`: the one loop behind the sweeps, syncs, spool replay and webhook dispatch."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.errors import ServiceUnavailable
from gateway.storage.periodic import Periodic

log = logging.getLogger("test.periodic")


def test_a_job_runs_every_interval_and_a_failure_does_not_end_the_loop(
        caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []
    fifth = asyncio.Event()

    async def job() -> None:
        runs.append(len(runs))
        if len(runs) == 5:
            fifth.set()
        if len(runs) == 2:
            raise ServiceUnavailable("store away")
        if len(runs) == 3:
            raise RuntimeError("a bug")

    async def main() -> None:
        loop = Periodic("test-job", job, 0.01, log=log, quiet=(ServiceUnavailable,))
        loop.start()
        await asyncio.wait_for(fifth.wait(), 5)
        await loop.stop()

    with caplog.at_level(logging.WARNING, logger="test.periodic"):
        asyncio.run(main())
    quiet, loud = (r for r in caplog.records if r.name == "test.periodic")
    assert quiet.getMessage() == "test-job failed: store away" and quiet.exc_info is None
    assert loud.getMessage() == "test-job failed" and loud.exc_info is not None


def test_the_first_round_waits_one_interval_unless_asked_to_run_at_once() -> None:
    async def first_round(at_once: bool) -> float:
        started = asyncio.get_running_loop().time()
        ran = asyncio.Event()

        async def job() -> None:
            ran.set()

        loop = Periodic("test-first", job, 0.2, log=log, first_at_once=at_once)
        loop.start()
        await ran.wait()
        await loop.stop()
        return asyncio.get_running_loop().time() - started

    assert asyncio.run(first_round(True)) < 0.15
    assert asyncio.run(first_round(False)) >= 0.19


def test_a_job_returning_true_runs_again_at_once() -> None:
    async def main() -> int:
        runs = 0

        async def job() -> bool:
            nonlocal runs
            runs += 1
            return runs < 5  # a backlog: four full batches, then a partial one

        loop = Periodic("test-again", job, 10.0, log=log, first_at_once=True)
        loop.start()
        await asyncio.sleep(0.1)
        await loop.stop()
        return runs

    assert asyncio.run(main()) == 5


def test_stop_lets_the_round_in_progress_finish_within_its_grace() -> None:
    async def main(grace: float) -> list[str]:
        events: list[str] = []
        started = asyncio.Event()

        async def job() -> None:
            started.set()
            try:
                await asyncio.sleep(0.05)
                events.append("finished")
            except asyncio.CancelledError:
                events.append("cancelled")
                raise

        loop = Periodic("test-grace", job, 10.0, log=log, first_at_once=True)
        loop.start()
        await started.wait()
        await loop.stop(grace=grace)
        return events

    assert asyncio.run(main(1.0)) == ["finished"]
    assert asyncio.run(main(0.0)) == ["cancelled"]


def test_run_ends_with_its_callers_task_when_cancelled() -> None:
    async def main() -> bool:
        async def job() -> None:
            return None

        task = asyncio.create_task(Periodic("test-run", job, 0.01, log=log).run())
        await asyncio.sleep(0.03)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert asyncio.run(main())
