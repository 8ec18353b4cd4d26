"""Streaming reads: a target's memory in large chunks, in order or over scan threads, with
unreadable pages skipped and reported."""
from __future__ import annotations

import queue
import threading
from collections import deque
from itertools import islice
from typing import Optional

from ..progress import Progress
from .target import Target


def iter_chunks(target: Target, start: int, end: int, chunk: int = 4 << 20, progress: Optional[Progress] = None,
                skipped: Optional[list] = None, buf: Optional[bytearray] = None):
    """Yield (address, bytes-like) over [start, end) in chunks; unreadable pages are left out and
    appended to ``skipped`` as (start, end, reason) with adjacent holes merged.  With ``buf`` (at
    least ``chunk`` bytes) whole chunks are read into it and yielded as views of it: the consumer
    must be done with one before asking for the next."""
    from ..errors import MemoryReadError
    page = 4096
    view = memoryview(buf) if buf is not None else None
    addr = start
    while addr < end:
        n = min(chunk, end - addr)
        try:
            if view is not None:
                target.read_into(addr, view[:n])
                yield addr, view[:n]
            else:
                yield addr, target.read(addr, n)
        except MemoryReadError:
            # find the readable pages of this chunk
            a = addr
            run_start = None
            while a < addr + n:
                step = min(page - (a % page), addr + n - a)
                try:
                    target.read(a, step)
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
                    if run_start is None:
                        run_start = a
                a += step
            if run_start is not None:
                yield run_start, target.read(run_start, addr + n - run_start)
        if progress is not None:
            progress.advance(n)
        addr += n


def scan_workers() -> int:
    """Threads for a parallel scan: one per CPU, at most 4 (GDB_MEMLEAK_THREADS overrides)."""
    import os
    env = os.environ.get("GDB_MEMLEAK_THREADS")
    if env and env.isdigit():
        return max(1, int(env))
    return max(1, min(4, os.cpu_count() or 1))


def map_chunks(target: Target, ranges, chunk: int, work, make_scratch, progress: Optional[Progress] = None,
               skipped: Optional[list] = None, workers: Optional[int] = None):
    """Yield (address, nbytes, work(address, data, scratch)) over ``ranges`` in address order.

    Chunks the target can read straight from a file (``fast_read_into``) are read and worked on
    in a pool of threads (``preadv`` and numpy release the GIL), each thread with its own
    ``make_scratch()`` whose ``buf`` (``chunk`` bytes) is reused: ``work`` must not keep ``data``.
    Other chunks, and unreadable pages (left out, recorded in ``skipped``), are read in the
    calling thread — the only one that may call into gdb.  Memory stays at a few chunks."""
    tasks = ((a, min(chunk, e - a)) for s, e in ranges for a in range(s, e, chunk))
    workers = scan_workers() if workers is None else workers
    main = []     # the calling thread's scratch, made when first needed

    def slow(addr, n):
        if not main:
            main.append(make_scratch())
        for a, data in iter_chunks(target, addr, addr + n, n, None, skipped):
            yield a, len(data), work(a, data, main[0])

    def fast(addr, n, sc):
        view = memoryview(sc.buf)[:n]
        if not target.fast_read_into(addr, view):
            return None
        return work(addr, view, sc)

    if workers <= 1:
        main.append(make_scratch())
        for addr, n in tasks:
            r = fast(addr, n, main[0])
            if r is None:
                yield from slow(addr, n)
            else:
                yield addr, n, r
            if progress is not None:
                progress.advance(n)
        return

    # a plain thread pool: concurrent.futures costs 23 ms to import (it pulls in logging)
    todo: "queue.SimpleQueue" = queue.SimpleQueue()
    stopping = threading.Event()

    class Slot:
        __slots__ = ("addr", "n", "done", "result", "error")

        def __init__(self, addr, n):
            self.addr, self.n = addr, n
            self.done = threading.Event()
            self.result = self.error = None

    def worker():
        sc = make_scratch()
        while True:
            slot = todo.get()
            if slot is None:
                return
            if not stopping.is_set():
                try:
                    slot.result = fast(slot.addr, slot.n, sc)
                except BaseException as e:   # handed to the caller's thread
                    slot.error = e
            slot.done.set()

    threads = [threading.Thread(target=worker, name="memleak-scan-%d" % i, daemon=True) for i in range(workers)]
    for th in threads:
        th.start()
    pending = deque()

    def submit(count):
        for addr, n in islice(tasks, count):
            slot = Slot(addr, n)
            pending.append(slot)
            todo.put(slot)

    try:
        submit(2 * workers)
        while pending:
            slot = pending.popleft()
            slot.done.wait()
            submit(1)
            if slot.error is not None:
                raise slot.error
            if slot.result is None:
                yield from slow(slot.addr, slot.n)
            else:
                yield slot.addr, slot.n, slot.result
            if progress is not None:
                progress.advance(slot.n)
    finally:
        stopping.set()
        for _ in threads:
            todo.put(None)
        for th in threads:
            th.join()
