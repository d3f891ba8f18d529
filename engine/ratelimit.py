"""Log lines about things that come in floods (bad requests, shed calls): at most one per interval."""

from __future__ import annotations

import time


class Every:
    """due() is True at most once per `interval` seconds; the caller logs then, and only counts otherwise."""

    def __init__(self, interval: float):
        self.interval = interval
        self._last = float("-inf")

    def due(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.interval:
            return False
        self._last = now
        return True
