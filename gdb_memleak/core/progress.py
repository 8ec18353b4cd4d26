"""Progress on long work: silent for the first ~2 s, then a line about every second."""
from __future__ import annotations

import time
from typing import Callable, Optional


class Progress:
    def __init__(self, label: str, total: int, sink: Optional[Callable[[str], None]], delay: float = 2.0):
        self.label = label
        self.total = max(1, total)
        self.sink = sink
        self.done = 0
        self.t0 = time.monotonic()
        self.delay = delay
        self._last = self.t0
        self._shown = False

    def advance(self, n: int):
        self.done += n
        if self.sink is None:
            return
        now = time.monotonic()
        if now - self.t0 >= self.delay and now - self._last >= 1.0:
            self._last = now
            self._shown = True
            rate = self.done / max(now - self.t0, 1e-9) / 1e6
            self.sink("%s: %d%% (%.0f MB/s)" % (self.label, 100 * self.done // self.total, rate))

    def finish(self):
        if self._shown and self.sink is not None:
            self.sink("%s: done in %.1f s" % (self.label, time.monotonic() - self.t0))

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0
