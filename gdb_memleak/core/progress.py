"""Progress on long work: silent for the first ~2 s, then a line about every second."""
from __future__ import annotations

import time
from typing import Callable, Optional

from .target import Target


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


def iter_chunks(target: Target, start: int, end: int, chunk: int = 4 << 20, progress: Optional[Progress] = None,
                skipped: Optional[list] = None):
    """Yield (address, bytes-like) over [start, end) in chunks; unreadable pages are left out and
    appended to ``skipped`` as (start, end, reason) with adjacent holes merged."""
    from .errors import MemoryReadError
    page = 4096
    addr = start
    while addr < end:
        n = min(chunk, end - addr)
        try:
            yield addr, target.read(addr, n)
        except MemoryReadError:
            # find the readable pages of this chunk
            a = addr
            run_start = None
            while a < addr + n:
                step = min(page - (a % page), addr + n - a)
                try:
                    data = target.read(a, step)
                except MemoryReadError as e:
                    if skipped is not None:
                        if skipped and skipped[-1][1] == a:
                            skipped[-1] = (skipped[-1][0], a + step, skipped[-1][2])
                        else:
                            skipped.append((a, a + step, e.reason))
                    if run_start is not None:
                        yield run_start, target.read(run_start, a - run_start)
                        run_start = None
                else:
                    del data
                    if run_start is None:
                        run_start = a
                a += step
            if run_start is not None:
                yield run_start, target.read(run_start, addr + n - run_start)
        if progress is not None:
            progress.advance(n)
        addr += n
