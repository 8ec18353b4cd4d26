"""Progress on long work: silent for the first ~2 s, then a line about every second naming the
phase, what is done of the total, the rate and an ETA:

    leaks: scanning the heap: 3.1 GiB of 27.0 GiB (11%), 812 MB/s, ETA 31 s

One ``Progress`` can go through several phases (``phase()``); the 2 s of silence count from its
creation, the rate and the ETA from the start of the current phase.  Units are bytes, or a noun
for counted items ("references")."""
from __future__ import annotations

import time
from typing import Callable, Optional


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0
    return str(n)


def _count(n: float) -> str:
    if n < 10000:
        return "%d" % n
    if n < 10_000_000:
        return "%.1f k" % (n / 1e3) if n < 1e6 else "%.2f M" % (n / 1e6)
    return "%.1f M" % (n / 1e6) if n < 1e9 else "%.2f G" % (n / 1e9)


def eta_text(seconds: float) -> str:
    """1 s, 42 s, 3 min 05 s, 2 h 07 min."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return "%d s" % s
    if s < 3600:
        return "%d min %02d s" % (s // 60, s % 60)
    return "%d h %02d min" % (s // 3600, (s % 3600) // 60)


AFTER_ENV = "GDB_MEMLEAK_PROGRESS_AFTER"     # seconds of silence before the first line (tests: 0)


def _after(default: float) -> float:
    import os
    try:
        return float(os.environ.get(AFTER_ENV, default))
    except ValueError:
        return default


class Progress:
    def __init__(self, label: str, total: int, sink: Optional[Callable[[str], None]], delay: Optional[float] = None,
                 phase: str = "", unit: str = "bytes", clock: Callable[[], float] = time.monotonic,
                 interval: Optional[float] = None):
        if delay is None:
            delay = _after(2.0)
        if interval is None:
            interval = min(1.0, delay)
        self.label = label
        self.sink = sink
        self.clock = clock
        self.delay = delay
        self.interval = interval
        self.t0 = clock()
        self._last = self.t0
        self._shown = False
        self._set(phase, total, unit)

    def _set(self, phase: str, total: int, unit: str):
        self.phase_name = phase
        self.total = max(1, int(total))
        self.unit = unit
        self.done = 0
        self.p0 = self.clock()

    def phase(self, name: str, total: int, unit: str = "bytes"):
        """Start the next phase of the same work (its own total, rate and ETA)."""
        self._set(name, total, unit)

    def advance(self, n: int):
        self.done += n
        if self.sink is None:
            return
        now = self.clock()
        if now - self.t0 >= self.delay and now - self._last >= self.interval:
            self._last = now
            self._shown = True
            self.sink(self.line(now))

    def line(self, now: Optional[float] = None) -> str:
        """The progress line as it would be shown now."""
        now = self.clock() if now is None else now
        done = min(self.done, self.total)
        dt = max(now - self.p0, 1e-9)
        rate = done / dt
        if self.unit == "bytes":
            what = "%s of %s" % (_bytes(done), _bytes(self.total))
            speed = "%.0f MB/s" % (rate / 1e6)
        else:
            what = "%s of %s %s" % (_count(done), _count(self.total), self.unit)
            speed = "%s/s" % _count(rate)
        eta = eta_text((self.total - done) / rate) if rate > 0 else "unknown"
        head = "%s: %s: " % (self.label, self.phase_name) if self.phase_name else "%s: " % self.label
        return "%s%s (%d%%), %s, ETA %s" % (head, what, 100 * done // self.total, speed, eta)

    def finish(self):
        if self._shown and self.sink is not None:
            self.sink("%s: done in %.1f s" % (self.label, self.clock() - self.t0))

    @property
    def elapsed(self) -> float:
        return self.clock() - self.t0
