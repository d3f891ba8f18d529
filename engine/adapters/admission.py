"""Which calls a front-end takes in: at most a configured number waiting or running at once.

Rules run synchronously on the one event loop, so a handler runs from start to reply without
yielding: counted inside the handler alone, at most one call would ever be "in progress" while the
real backlog waits in grpc-core and the sockets, to be answered seconds late. So an admitted call
yields once before its rule runs: every call already received takes its place in the count first,
the count is the backlog, and the calls past the limit are refused at once (gRPC
RESOURCE_EXHAUSTED, HTTP 503), so the broker applies its failure handling instead of timing out.

grpc.aio takes calls from grpc-core one per loop turn, so for gRPC the count sees only what the
server has taken (grpc's own maximum_concurrent_rpcs likewise); the gRPC adapter does not yield.
The same count tells a draining server when the calls sent before SIGTERM have all been answered.
"""

from __future__ import annotations

import time


class Admission:
    def __init__(self, limit: int):
        self.limit = limit
        self.in_flight = 0
        #: when a call was last seen or answered (time.perf_counter, which the handlers read anyway)
        self.last_activity = 0.0

    def enter(self) -> bool:
        """Take a call in, or False when `limit` calls are already waiting or running. Every True must
        be matched by leave(); the caller yields (asyncio.sleep(0)) before doing the call's work."""
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def leave(self, count: int = 1) -> None:
        """`count` calls answered (0: only the time of the last answer, for one who lowered in_flight
        itself while answering many at once)."""
        self.in_flight -= count
        self.last_activity = time.perf_counter()

    def quiet_for(self, seconds: float) -> bool:
        """No call waiting or running, and none answered in the last `seconds`."""
        return self.in_flight == 0 and time.perf_counter() - self.last_activity >= seconds
