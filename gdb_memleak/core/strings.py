"""What the bytes are: regex matches, a histogram of one captured group, and the most repeated
printable strings (ASCII and UTF-16LE) over address ranges -- `grep -o 'channelid=[0-9]*' | sort
| uniq -c` over a dump, without the dump.

Memory is streamed in chunks read with an overlap of ``max_len`` bytes: a match that starts in a
chunk is counted there even when it runs into the next one, and a match that starts in the
overlap is left to the next chunk, so every match counts exactly once (a match longer than
``max_len`` is cut there).  With ``in_use`` (heap ranges only), the bytes of free chunks are
zeroed before matching, so stale data in freed memory does not count.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import List, Optional, Pattern, Tuple

import numpy as np

from .memory.stream import iter_chunks
from .progress import Progress
from .memory.target import Target

CHUNK = 4 << 20
MAX_LEN = 4096


@dataclass
class StringsResult:
    scanned_bytes: int = 0
    matches: int = 0
    histogram: Counter = field(default_factory=Counter)
    ascii: Counter = field(default_factory=Counter)
    utf16: Counter = field(default_factory=Counter)
    skipped: List[Tuple[int, int, str]] = field(default_factory=list)

    def top(self, n: int) -> List[dict]:
        """The most repeated strings by bytes wasted: (count - 1) copies of the text."""
        rows = []
        for enc, counter, width in (("ascii", self.ascii, 1), ("utf-16le", self.utf16, 2)):
            for raw, count in counter.items():
                if count < 2:
                    continue
                text = raw.decode(enc, "replace")
                rows.append({"text": text, "count": count, "bytes": (count - 1) * len(raw),
                             "encoding": enc})
        rows.sort(key=lambda r: (-r["bytes"], -r["count"], r["text"]))
        return rows[:n]


def _free_mask(heap, lo: int, hi: int) -> Optional[np.ndarray]:
    """Bool mask of [lo, hi) covering the bytes of chunks that are not in use (None: none)."""
    if heap is None:
        return None
    k0 = max(int(np.searchsorted(heap.addr, np.uint64(lo), side="right")) - 1, 0)
    k1 = int(np.searchsorted(heap.addr, np.uint64(hi)))
    free = np.flatnonzero(heap.free[k0:k1] != 0) + k0
    if not len(free):
        return None
    a = np.clip(heap.addr[free].astype(np.int64) - lo, 0, hi - lo)
    b = np.clip((heap.addr[free] + heap.size[free]).astype(np.int64) - lo, 0, hi - lo)
    edge = np.zeros(hi - lo + 1, dtype=np.int32)
    np.add.at(edge, a, 1)
    np.add.at(edge, b, -1)
    return np.cumsum(edge[:-1]) > 0


def _windows(target: Target, start: int, end: int, skipped, progress, max_len: int):
    """(address, n, buffer) over [start, end): ``buffer`` holds the n bytes at ``address`` and up to
    ``max_len`` bytes after them (the overlap).  Whole windows are read into one reused buffer
    (one preadv from a core or /proc/PID/mem); a window with unreadable pages falls back to page
    probing, and its holes are recorded in ``skipped``."""
    from .errors import MemoryReadError
    buf = bytearray(CHUNK + max_len)
    view = memoryview(buf)
    addr = start
    while addr < end:
        n = min(CHUNK, end - addr)
        m = min(n + max_len, end - addr)
        try:
            target.read_into(addr, view[:m])
            yield addr, n, view[:m]
            if progress is not None:
                progress.advance(n)
        except MemoryReadError:
            for a, data in iter_chunks(target, addr, addr + n, CHUNK, progress, skipped):
                k = len(data)
                extra = b""
                if a + k < end:
                    extra = target.try_read(a + k, min(max_len, end - a - k)) or b""
                yield a, k, memoryview(bytes(data) + bytes(extra))
        addr += n


def scan_strings(target: Target, ranges: List[Tuple[int, int]], pattern: Optional[Pattern] = None,
                 histogram: Optional[Pattern] = None, min_len: int = 8, top: bool = True,
                 heap=None, progress: Optional[Progress] = None, max_len: int = MAX_LEN) -> StringsResult:
    res = StringsResult()
    ascii_re = re.compile(rb"[\x20-\x7e]{%d,%d}" % (min_len, max_len)) if top else None
    utf16_re = re.compile(rb"(?:[\x20-\x7e]\x00){%d,%d}" % (min_len, max_len // 2)) if top else None
    for start, end in ranges:
        # per regex, where the last counted match ended: a match is never counted twice, nor
        # is its tail matched again at the start of the next chunk
        resume = {}
        for addr, n, buf in _windows(target, start, end, res.skipped, progress, max_len):
            # only matches starting in the first n bytes count; the rest is the overlap
            mask = _free_mask(heap, addr, addr + len(buf))
            if mask is not None:
                if buf.readonly:
                    buf = memoryview(bytearray(buf))
                np.frombuffer(buf, dtype=np.uint8)[mask] = 0
            res.scanned_bytes += n

            def each(rx):
                pos = max(0, resume.get(rx, 0) - addr)
                last = None
                for m in rx.finditer(buf, pos):
                    if m.start() >= n:
                        break
                    last = m
                    yield m
                if last is not None:
                    resume[rx] = addr + last.end()
            if pattern is not None:
                for _m in each(pattern):
                    res.matches += 1
            if histogram is not None:
                hist = res.histogram
                count_here = pattern is None
                for m in each(histogram):
                    hist[m.group(1)] += 1
                    if count_here:
                        res.matches += 1
            if ascii_re is not None:
                for m in each(ascii_re):
                    res.ascii[m.group()] += 1
                for m in each(utf16_re):
                    res.utf16[m.group()] += 1
    return res
