"""Progress lines (issue 16): silent for the first ~2 s, then phase, done of total, rate, ETA."""
from gdb_memleak.core.progress import Progress, eta_text


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_silent_first_then_eta_with_a_fake_clock():
    clock, lines = Clock(), []
    p = Progress("leaks", 10 << 30, lines.append, delay=2.0, phase="scanning the heap", clock=clock)
    clock.t += 1.0
    p.advance(1 << 30)
    assert lines == []                      # under 2 s: nothing
    clock.t += 1.5                          # 2.5 s, 2 GiB done: 0.8 GiB/s
    p.advance(1 << 30)
    assert lines == ["leaks: scanning the heap: 2.0 GiB of 10.0 GiB (20%), 859 MB/s, ETA 10 s"]
    clock.t += 0.5                          # less than a second since the last line
    p.advance(1 << 30)
    assert len(lines) == 1
    clock.t += 0.5                          # 3.5 s, 3 GiB: 7 GiB left at 3/3.5 GiB/s
    p.advance(0)
    assert lines[-1] == "leaks: scanning the heap: 3.0 GiB of 10.0 GiB (30%), 920 MB/s, ETA 8 s"
    p.finish()
    assert lines[-1] == "leaks: done in 3.5 s"


def test_phases_have_their_own_total_rate_and_eta():
    clock, lines = Clock(), []
    p = Progress("leaks", 100, lines.append, delay=2.0, phase="scanning the heap", clock=clock)
    clock.t += 3
    p.advance(100)
    p.phase("marking", 4_000_000, unit="references")
    clock.t += 2                             # the phase's rate counts from its own start
    p.advance(1_000_000)
    assert lines[-1] == "leaks: marking: 1.00 M of 4.00 M references (25%), 500.0 k/s, ETA 6 s"


def test_no_line_without_a_sink_or_when_quick():
    clock, lines = Clock(), []
    p = Progress("dump", 10, None, clock=clock)
    clock.t += 10
    p.advance(5)
    q = Progress("dump", 10, lines.append, delay=2.0, clock=clock)
    q.advance(10)
    q.finish()
    assert lines == []                       # done before 2 s: silent, no "done" line either


def test_done_never_shows_above_total_and_eta_text():
    clock, lines = Clock(), []
    p = Progress("heap", 1000, lines.append, delay=0, interval=0, phase="walking the heaps", clock=clock)
    clock.t += 1
    p.advance(5000)                          # reads past the estimate
    assert lines[-1].startswith("heap: walking the heaps: 1000 B of 1000 B (100%)")
    assert lines[-1].endswith("ETA 0 s")
    assert [eta_text(s) for s in (0.4, 42, 185, 7620)] == ["0 s", "42 s", "3 min 05 s", "2 h 07 min"]
