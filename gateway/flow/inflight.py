"""The per-workspace cap on requests in flight to providers (SPEC "Limits and hostile input").

One workspace's burst cannot take the whole upstream connection pool: each
process counts, per workspace, the metered and BYO provider calls it is
making (chat, streams until they end, embeddings); one over
`BOOKBAG_MAX_INFLIGHT_PER_WORKSPACE` is refused with 429 and `Retry-After`
before anything is reserved. `bookbag-local` is not counted. 0 turns it off.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.errors import RateLimited

RETRY_AFTER_S = 1


class InFlight:
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._counts: dict[str, int] = {}

    def count(self, workspace_id: str) -> int:
        return self._counts.get(workspace_id, 0)

    def acquire(self, workspace_id: str) -> Callable[[], None]:
        """Take a slot or raise RateLimited; the returned release is safe to call twice."""
        if self.cap <= 0:
            return _nothing
        current = self._counts.get(workspace_id, 0)
        if current >= self.cap:
            raise RateLimited(
                f"This workspace already has {current} requests in flight to providers "
                f"(the limit is {self.cap}). Retry after {RETRY_AFTER_S} s.",
                headers={"retry-after": str(RETRY_AFTER_S)},
            )
        self._counts[workspace_id] = current + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            left = self._counts.get(workspace_id, 1) - 1
            if left > 0:
                self._counts[workspace_id] = left
            else:
                self._counts.pop(workspace_id, None)

        return release


def _nothing() -> None:
    return None
