"""glibc malloc without debug symbols: every arena's heaps walked chunk by chunk, mmapped chunks,
and the free lists (each thread's tcache, each arena's fastbins) that make chunks free although
the next chunk's PREV_INUSE says in use.

Where the heaps are comes from glibc's own structures (``glibc.discover``: main_arena, the arena
ring, heap_info chains, mp_, the threads' tcache pointers).  Only when main_arena cannot be
found are heaps recognised by their shape (a chunk chain in [heap], heap_info at HEAP_MAX-aligned
addresses), and the result says so.

Chunk states: in use; free by PREV_INUSE (bins, unsorted); in a tcache; in a fastbin; "state
unknown" (named by a free list that failed validation: probably free, never reported leaked).
"""
from __future__ import annotations

import struct
import sys
from array import array
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from . import native
from .errors import MemoryReadError
from .glibc import (IS_MMAPPED, PREV_INUSE, TCACHE_BINS, Arena, Finding, Findings, GlibcModel, Layout,
                    malloc_alignment)
from .maps import Mapping, classify, glibc_model, main_heap_first_chunk, mapping_at
from .memory.target import Target

PAGE = 4096
FREE_BITS, FREE_TCACHE, FREE_FAST, FREE_UNKNOWN = 1, 2, 3, 4
STATE_TEXT = {0: "in use", FREE_BITS: "free (bin)", FREE_TCACHE: "free (tcache)", FREE_FAST: "free (fastbin)",
              FREE_UNKNOWN: "state unknown (named by a free list that does not validate)"}
MAX_LIST = 1 << 22
UNEXPLAINED_FLAG = 4 << 20

__all__ = ["Heap", "HeapSegment", "HeapWalker", "Finding", "walk_heap", "require_heap", "heap_ranges",
           "find_mmapped_chunks", "FREE_BITS", "FREE_TCACHE", "FREE_FAST", "FREE_UNKNOWN", "STATE_TEXT"]


@dataclass
class HeapSegment:
    kind: str                   # main | thread | mmapped
    start: int                  # heap start (heap_info, sbrk_base or the [heap] mapping; the chunk)
    first: int                  # first chunk
    end: int                    # end of the heap: top's end, an older heap's end, the chunk's end
    arena: Optional[int] = None
    top: Optional[int] = None
    top_size: int = 0
    heap_info: Optional[int] = None
    walked_to: Optional[int] = None   # where the chunk walk stopped when it did not reach the end

    def scan_range(self, ps: int) -> Tuple[int, int]:
        """The bytes user data can be in: from the first chunk through the last chunk's tail
        word (top's prev_size; an older heap's first fencepost's)."""
        return self.first, (self.top + ps if self.top is not None else self.end)


@dataclass
class Heap:
    segments: List[HeapSegment]
    addr: np.ndarray            # chunk addresses, sorted (uint64); top chunks excluded
    size: np.ndarray            # chunk sizes in bytes: uint32 (uint64 only when a chunk is >= 4 GiB)
    free: np.ndarray            # 0 in use, else FREE_* reason (int8)
    pointer_size: int
    findings: Findings = field(default_factory=Findings)
    model: Optional[GlibcModel] = None
    mmapped: Optional[np.ndarray] = None   # bool per chunk: an mmapped chunk
    accounting: Optional[dict] = None
    tcache_counts: Dict[int, Tuple[int, int]] = field(default_factory=dict)   # table -> (chunks, bytes)
    skipped: List[Tuple[int, int]] = field(default_factory=list)   # heap ranges a walk skipped

    @property
    def user(self) -> np.ndarray:
        return self.addr + np.uint64(2 * self.pointer_size)

    @property
    def inuse(self) -> np.ndarray:
        return self.free == 0

    @property
    def usable_end(self) -> np.ndarray:
        """End of each chunk's usable area: an arena chunk's runs through the next chunk's
        prev_size word (malloc_usable_size = chunksize - SIZE_SZ); an mmapped chunk's does not."""
        end = self.addr + self.size + np.uint64(self.pointer_size)
        if self.mmapped is not None and self.mmapped.any():
            end[self.mmapped] -= np.uint64(self.pointer_size)
        return end

    def chunk_index(self, address: int) -> Optional[int]:
        """Index of the chunk whose [addr, addr+size) holds ``address``."""
        i = int(np.searchsorted(self.addr, np.uint64(address), side="right")) - 1
        if i >= 0 and address < int(self.addr[i]) + int(self.size[i]):
            return i
        return None

    @property
    def how(self) -> str:
        return self.model.how if self.model else "none"


class _Window:
    """Sequential reads of one heap region through a window of WINDOW bytes (bounded memory)."""
    WINDOW = 1 << 20

    def __init__(self, target: Target, start: int, end: int):
        self.t, self.start, self.end = target, start, end
        self.lo = self.hi = start
        self.buf = b""
        self._store = bytearray()   # reused: a fresh buffer per window costs a page fault per 4 KiB

    def _read(self, lo: int, n: int):
        if len(self._store) < n:
            self._store = bytearray(n)
        view = memoryview(self._store)[:n]
        self.t.read_into(lo, view)
        return view

    def load(self, addr: int, need: int):
        """Make [addr, addr+need) resident; returns (buf, base) or None when unreadable.  buf is
        only valid until the next load."""
        if self.lo <= addr and addr + need <= self.hi:
            return self.buf, self.lo
        lo = addr - addr % 4096
        hi = min(max(lo + self.WINDOW, addr + need), max(self.end, addr + need))
        self.lo = self.hi = lo      # buf is being overwritten
        try:
            self.buf = self._read(lo, hi - lo)
        except MemoryReadError:
            # a page-sized read can still succeed at the walk position
            hi = min(lo + 4096, max(self.end, addr + need))
            if addr + need > hi:
                return None
            try:
                self.buf = self._read(lo, hi - lo)
            except MemoryReadError:
                return None
        self.lo, self.hi = lo, hi
        return self.buf, lo


@dataclass
class _Walked:
    addrs: np.ndarray
    sizes: np.ndarray
    pbits: np.ndarray           # PREV_INUSE of each chunk's own header
    pos: int                    # where the walk stopped
    reason: str                 # end | fencepost | bad: ...
    pos_pbit: int = 1           # PREV_INUSE of the header at pos (top, fencepost)


def _walk(win: _Window, first: int, end: int, lay: Layout, shape_mode: bool = False) -> _Walked:
    """Step chunk headers from ``first`` until the walk lands exactly on ``end`` (the top chunk,
    or the end of the region), or meets a fencepost (a header of size CHUNK_HDR_SZ: an older
    heap's end), or a size that cannot be.  Window by window: the compiled kernel (core/native)
    steps the headers of a window; without it a tight loop over a memoryview only follows sizes
    and the checks and the flags are done with numpy.  Both give the same result."""
    if native.lib() is not None and lay.align & (lay.align - 1) == 0:
        return _walk_native(win, first, end, lay, shape_mode)
    ps = lay.ps
    shift = 3 if ps == 8 else 2
    fmt = "Q" if ps == 8 else "I"
    dt = np.uint64 if ps == 8 else np.uint32
    foreign = lay.e != ("<" if sys.byteorder == "little" else ">")
    minsize, mask = lay.minsize, ~7
    out_a, out_s, out_p = [], [], []
    a = first
    reason = "end"
    pos_pbit = 1
    while a < end:
        got = win.load(a, 2 * ps)
        if got is None:
            reason = "bad: chunk header at 0x%x is outside readable memory" % a
            break
        buf, base = got
        nbytes = len(buf) - len(buf) % ps
        if foreign:     # the target's byte order is not ours: work on a swapped copy of the window
            buf = np.frombuffer(buf, dtype=lay.dt, count=nbytes // ps).astype(dt).tobytes()
        mv = memoryview(buf)[:nbytes].cast(fmt)
        i = (a - base) >> shift
        iend = min(len(mv) - 1, (end - base) >> shift)
        idx = array("q")
        app = idx.append
        s = minsize
        while i < iend:
            s = mv[i + 1] & mask
            if s < minsize:
                break
            app(i)
            i += s >> shift
        ix = np.frombuffer(idx, dtype=np.int64)
        words = np.frombuffer(buf, dtype=dt, count=nbytes // ps)
        sf = words[ix + 1].astype(np.uint64) if len(ix) else np.zeros(0, dtype=np.uint64)
        cs = sf & np.uint64(mask & 0xFFFFFFFFFFFFFFFF)
        addrs = np.uint64(base) + ix.astype(np.uint64) * np.uint64(ps)
        # sizes are MALLOC_ALIGNMENT multiples (in shape mode the last chunk is top, whose size
        # on i386 ends at the page-aligned end)
        bad = (cs % np.uint64(lay.align) != 0) | (sf & np.uint64(IS_MMAPPED) != 0)
        if shape_mode:
            bad &= addrs + cs != np.uint64(end)
        bad = np.flatnonzero(bad)
        if len(bad):
            k = int(bad[0])
            out_a.append(addrs[:k]); out_s.append(cs[:k])
            out_p.append((sf[:k] & np.uint64(PREV_INUSE)).astype(np.uint8))
            a = int(addrs[k])
            reason = "bad: chunk size word 0x%x at 0x%x" % (int(sf[k]), a)
            break
        out_a.append(addrs); out_s.append(cs); out_p.append((sf & np.uint64(PREV_INUSE)).astype(np.uint8))
        a = base + (i << shift)
        if s < minsize and i < iend:
            raw = mv[i + 1]
            if s == 2 * ps:
                reason = "fencepost"
                pos_pbit = raw & PREV_INUSE
            else:
                reason = "bad: chunk size word 0x%x at 0x%x" % (raw, a)
            break
    addrs = np.concatenate(out_a) if out_a else np.zeros(0, dtype=np.uint64)
    sizes = np.concatenate(out_s) if out_s else np.zeros(0, dtype=np.uint64)
    pbits = np.concatenate(out_p).astype(np.uint8) if out_p else np.zeros(0, dtype=np.uint8)
    if a > end and len(addrs):
        a = int(addrs[-1])
        reason = "bad: chunk at 0x%x runs past 0x%x" % (a, end)
        addrs, sizes, pbits = addrs[:-1], sizes[:-1], pbits[:-1]
    elif a == end and reason == "end" and not shape_mode:
        got = win.load(a, 2 * ps)
        if got is not None:
            buf, base = got
            pos_pbit = struct.unpack_from(lay.e + fmt, buf, a - base + ps)[0] & PREV_INUSE
    return _Walked(addrs, sizes, pbits, a, reason, pos_pbit)


def _walk_native(win: _Window, first: int, end: int, lay: Layout, shape_mode: bool = False) -> _Walked:
    """_walk with the compiled kernel stepping each window's headers (same windows, same
    stops, same result)."""
    kernel = native.lib()
    ps = lay.ps
    shift = 3 if ps == 8 else 2
    fmt = "Q" if ps == 8 else "I"
    swap = native.host_swap("little" if lay.e == "<" else "big")
    minsize = lay.minsize
    per = max(1, minsize >> shift)      # words per chunk at least
    # the kernel writes into blocks of this many chunks; a new block when a window might not fit.
    # The first block holds every chunk the segment can have (up to 2**27): np.empty's pages cost
    # nothing until written, and one block needs no concatenation (which doubled the walk's peak)
    block = max(1 << 20, (_Window.WINDOW // ps) // per + 2)
    first_block = max(block, min((end - first) // minsize + 2, 1 << 27))
    o_addr = o_size = o_pbit = None
    used = 0
    state = np.zeros(3, dtype=np.int64)
    out_a, out_s, out_p = [], [], []

    def close_block():
        if used:
            out_a.append(o_addr[:used]); out_s.append(o_size[:used]); out_p.append(o_pbit[:used])

    a = first
    reason = "end"
    pos_pbit = 1
    while a < end:
        got = win.load(a, 2 * ps)
        if got is None:
            reason = "bad: chunk header at 0x%x is outside readable memory" % a
            break
        buf, base = got
        nwords = len(buf) // ps
        i = (a - base) >> shift
        iend = min(nwords - 1, (end - base) >> shift)
        need = max(0, iend - i) // per + 2
        if o_addr is None or used + need > len(o_addr):
            close_block()
            n_new = max(first_block if o_addr is None else block, need)
            o_addr = np.empty(n_new, dtype=np.uint64)
            o_size = np.empty(n_new, dtype=np.uint64)
            o_pbit = np.empty(n_new, dtype=np.uint8)
            used = 0
        ptr = np.frombuffer(buf, dtype=np.uint8, count=nwords * ps).ctypes.data if nwords else 0
        k = kernel.mlk_walk(ptr, nwords, ps, swap, i, iend, base, minsize, lay.align, int(shape_mode),
                            end & 0xFFFFFFFFFFFFFFFF, o_addr[used:], o_size[used:], o_pbit[used:],
                            len(o_addr) - used, state)
        used += k
        i, stop, raw = int(state[0]), int(state[1]), int(state[2]) & ((1 << (8 * ps)) - 1)
        a = base + (i << shift)
        if stop == 2:
            reason = "bad: chunk size word 0x%x at 0x%x" % (raw, a)
            break
        if stop == 1:
            if (raw & ~7) == 2 * ps:
                reason = "fencepost"
                pos_pbit = raw & PREV_INUSE
            else:
                reason = "bad: chunk size word 0x%x at 0x%x" % (raw, a)
            break
    close_block()

    def cat(parts, dt):
        return parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros(0, dtype=dt)
    addrs, sizes, pbits = cat(out_a, np.uint64), cat(out_s, np.uint64), cat(out_p, np.uint8)
    if a > end and len(addrs):
        a = int(addrs[-1])
        reason = "bad: chunk at 0x%x runs past 0x%x" % (a, end)
        addrs, sizes, pbits = addrs[:-1], sizes[:-1], pbits[:-1]
    elif a == end and reason == "end" and not shape_mode:
        got = win.load(a, 2 * ps)
        if got is not None:
            buf, base = got
            pos_pbit = struct.unpack_from(lay.e + fmt, buf, a - base + ps)[0] & PREV_INUSE
    return _Walked(addrs, sizes, pbits, a, reason, pos_pbit)


class HeapWalker:
    def __init__(self, target: Target, maps: Optional[List[Mapping]] = None):
        self.t = target
        self.maps = maps if maps is not None else classify(target)
        self.model = glibc_model(target, self.maps)
        self.lay = self.model.layout
        self.segments: List[HeapSegment] = []
        self.findings = Findings()
        self.findings.extend(self.model.findings)
        self.chunks: list = []      # per segment: (start, addrs, sizes, inuse, mmapped) arrays
        self.skipped: List[Tuple[int, int]] = []     # heap bytes a walk could not go through
        self.skipped_bytes = 0

    # -- segments --------------------------------------------------------------
    def _add(self, seg: HeapSegment, w: Optional[_Walked], mmapped=None):
        """Keep a segment's chunks in the compact form Heap stores (sizes as uint32 when they
        fit; ``w``'s own arrays are let go)."""
        if mmapped is not None:
            addrs = np.array([c for c, _ in mmapped], dtype=np.uint64)
            sizes = np.array([s for _, s in mmapped], dtype=np.uint64)
            inuse = np.ones(len(addrs), dtype=np.uint8)
            mm = np.ones(len(addrs), dtype=bool)
        else:
            addrs, sizes = w.addrs, w.sizes
            # a chunk is in use when the next header's PREV_INUSE is set (the last chunk's next
            # header is top's or the fencepost's)
            inuse = np.append(w.pbits[1:], np.uint8(w.pos_pbit)) if len(addrs) else np.zeros(0, np.uint8)
            mm = np.zeros(len(addrs), dtype=bool)
            w.addrs = w.sizes = w.pbits = None
        if len(sizes) and int(sizes.max()) < (1 << 32):
            sizes = sizes.astype(np.uint32)
        self.segments.append(seg)
        self.chunks.append((seg.first, addrs, sizes, inuse, mm))

    def _walk_resync(self, first: int, end: int, what: str) -> _Walked:
        """_walk, resumed after a corrupt chunk at the next place a sane chain of chunks starts
        (the bytes in between are reported, not silently dropped)."""
        lay = self.lay
        win = _Window(self.t, first, end)
        parts = []
        cur = first
        while True:
            w = _walk(win, cur, end, lay)
            parts.append(w)
            if not w.reason.startswith("bad"):
                break
            why = w.reason.split(": ", 1)[1].split(" 0x")[0]
            nxt = main_heap_first_chunk(self.t, w.pos + lay.align, end)
            if nxt is None or nxt <= w.pos:
                self.findings.add("walk-stopped", "the walk of %s stopped at a corrupt chunk (%s): the rest of that "
                                  "heap is not walked" % (what, why), w.pos)
                break
            self.findings.add("walk-resumed", "the walk of %s met a corrupt chunk (%s) and resumed further on: the "
                              "bytes in between are not walked" % (what, why), w.pos)
            self.skipped_bytes += nxt - w.pos
            self.skipped.append((w.pos, nxt))
            cur = nxt
        if len(parts) == 1:
            return parts[0]
        last = parts[-1]
        return _Walked(np.concatenate([p.addrs for p in parts]), np.concatenate([p.sizes for p in parts]),
                       np.concatenate([p.pbits for p in parts]), last.pos, last.reason, last.pos_pbit)

    def walk_main(self, ar: Arena):
        lay = self.lay
        m = mapping_at(self.maps, ar.top)
        if m is None:
            self.findings.add("main-heap-unmapped", "main_arena's top chunk is in no mapping: the main heap "
                              "is not walked", ar.top)
            return
        end = ar.top
        mp = self.model.mp
        if mp is not None and m.start <= mp.sbrk_base <= end:
            first = lay.aligned_chunk(mp.sbrk_base)
            start = mp.sbrk_base
        else:
            start = m.start
            first = main_heap_first_chunk(self.t, m.start, min(m.end, ar.top + ar.top_size)) or lay.aligned_chunk(m.start)
        w = self._walk_resync(first, end, "the main heap")
        seg = HeapSegment("main", start, first, ar.top + ar.top_size, ar.address, ar.top, ar.top_size)
        if w.reason != "end":
            seg.walked_to = w.pos
            if w.reason == "fencepost":
                self.findings.add("main-heap-gap", "the main heap has fenceposts before top (foreign sbrk or "
                                  "non-contiguous brk): chunks after them are not walked", w.pos)
        elif ar.top_size == 0 or (ar.top + ar.top_size) > m.end:
            self.findings.add("top-bad", "main_arena's top chunk size runs past its mapping", ar.top)
        self._add(seg, w)

    def walk_thread_heaps(self, ar: Arena):
        for h in ar.heaps:
            cur = h.address <= ar.top < h.end
            end = ar.top if cur else h.end
            w = self._walk_resync(h.first, end, "an arena heap")
            seg = HeapSegment("thread", h.address, h.first, h.end, ar.address,
                              ar.top if cur else None, ar.top_size if cur else 0, heap_info=h.address)
            if cur:
                if w.reason != "end":
                    seg.walked_to = w.pos
                if ar.top + ar.top_size != h.end:
                    self.findings.add("top-mismatch", "an arena's top chunk does not end where its heap ends "
                                      "(heap_info.size)", ar.top)
            elif w.reason != "fencepost":
                seg.walked_to = w.pos
                if w.reason == "end":
                    self.findings.add("no-fencepost", "an older heap of an arena does not end with fenceposts",
                                      h.address)
            self._add(seg, w)

    def walk_shapes(self):
        """Fallback: the [heap] mapping by its chunk chain, arena heaps by heap_info."""
        lay = self.lay
        for m in self.maps:
            if m.kind == "main-heap" and "w" in m.perms[:3] and not any(s.kind == "main" for s in self.segments):
                first = main_heap_first_chunk(self.t, m.start, m.end)
                if first is None:
                    self.findings.add("main-heap-unrecognised", "[heap] holds no chunk chain", m.start)
                    continue
                w = _walk(_Window(self.t, first, m.end), first, m.end, lay, shape_mode=True)
                if not len(w.addrs):
                    continue
                seg = HeapSegment("main", m.start, first, m.end, None, int(w.addrs[-1]), int(w.sizes[-1]))
                if w.reason != "end":
                    seg.walked_to = w.pos
                    self.findings.add("walk-stopped", "the main heap walk stopped (%s): the rest of it is not "
                                      "walked" % w.reason, w.pos)
                # in shape mode the last chunk is taken for top
                last = _Walked(w.addrs[:-1], w.sizes[:-1], w.pbits[:-1], int(w.addrs[-1]), "end",
                               int(w.pbits[-1]))
                self._add(seg, last)

    def add_mmapped(self, chunks: List[Tuple[int, int, int]]):
        for c, cs, mstart in chunks:
            self._add(HeapSegment("mmapped", mstart, c, c + cs), None, mmapped=[(c, cs)])

    # -- free lists ------------------------------------------------------------
    def _chain(self, head: int, head_at: int, user_link: bool, heap: Heap, want: int, limit: int, safe: bool):
        """Follow a singly linked free list whose head is stored at ``head_at``.  Returns
        (chunk indices, None, None) when it ends in NULL within ``limit``, else (indices so
        far, why, the address of the word that holds the bad link)."""
        ps = self.lay.ps
        out, seen = [], set()
        cur, at = head, head_at
        while cur:
            if len(out) >= limit:
                return out, "longer than its count", at
            chunk = cur - 2 * ps if user_link else cur
            if chunk < 0 or (chunk + 2 * ps) % self.lay.align:
                return out, "misaligned entry", at
            i = heap.chunk_index(chunk)
            if i is None or int(heap.addr[i]) != chunk:
                return out, "entry is not a heap chunk", at
            if int(heap.size[i]) != want:
                return out, "entry has the wrong size", at
            if i in seen:
                return out, "cycle", at
            seen.add(i)
            out.append(i)
            at = chunk + 2 * ps
            try:
                raw = self.t.read_word(at)
            except MemoryReadError:
                return out, "link unreadable", at
            cur = ((at >> 12) ^ raw) if safe else raw
        return out, None, None

    def _follow(self, head, head_at, user_link, heap, want, limit):
        """Safe-linked (glibc >= 2.32) first, then plain; the better of the two."""
        best = None
        for safe in (True, False):
            got, why, at = self._chain(head, head_at, user_link, heap, want, limit, safe)
            if why is None:
                return got, None, None
            if best is None or len(got) > len(best[0]):
                best = (got, why, at)
        return best

    def mark_tcaches(self, heap: Heap):
        lay = self.lay
        ps = lay.ps
        for tc in self.model.tcaches:
            if not tc.table:
                continue
            cw = tc.counts_width
            try:
                raw = bytes(self.t.read(tc.table, cw * TCACHE_BINS + ps * TCACHE_BINS))
            except MemoryReadError:
                self.findings.add("tcache-unreadable", "a thread's tcache is unreadable: its free chunks count "
                                  "as in use", tc.table)
                continue
            counts = struct.unpack_from(lay.e + "%d%s" % (TCACHE_BINS, "H" if cw == 2 else "B"), raw, 0)
            entries = struct.unpack_from(lay.e + "%d%s" % (TCACHE_BINS, lay.wfmt), raw, cw * TCACHE_BINS)
            for b in range(TCACHE_BINS):
                if not entries[b] and not counts[b]:
                    continue
                want = lay.tcache_bin_size(b)
                slot = tc.table + cw * TCACHE_BINS + ps * b
                got, why, at = self._follow(entries[b], slot, True, heap, want, counts[b] or 1)
                if why is None and len(got) != counts[b]:
                    why, at = "its count says otherwise", tc.table + cw * b
                if why is None:
                    heap.free[got] = FREE_TCACHE
                    n, nb = heap.tcache_counts.get(tc.table, (0, 0))
                    heap.tcache_counts[tc.table] = (n + len(got), nb + want * len(got))
                    continue
                heap.free[got] = FREE_UNKNOWN
                self.findings.add("tcache-list-bad", "a tcache free list does not validate (%s): the chunks it "
                                  "names are 'state unknown'" % why, at)

    def mark_fastbins(self, heap: Heap):
        lay = self.lay
        for ar in self.model.arenas:
            for b, head in enumerate(ar.fastbins):
                if not head:
                    continue
                slot = ar.address + lay.fb_off + b * lay.ps
                got, why, at = self._follow(head, slot, False, heap, lay.fastbin_size(b), MAX_LIST)
                if why is None:
                    heap.free[got] = FREE_FAST
                    continue
                heap.free[got] = FREE_UNKNOWN
                self.findings.add("fastbin-bad", "a fastbin free list does not validate (%s): the chunks it "
                                  "names are 'state unknown'" % why, at)

    # -- checks ----------------------------------------------------------------
    def check_totals(self, heap: Heap):
        for ar in self.model.arenas:
            if ar.main:
                segs = [s for s in self.segments if s.kind == "main"]
                held = sum(s.end - s.start for s in segs)
            else:
                held = sum(h.size for h in ar.heaps)
            if held != ar.system_mem:
                self.findings.add("system-mem-mismatch", "an arena's heaps hold a different amount than its "
                                  "system_mem says (heaps missing or corrupt)", ar.address)
        mp = self.model.mp
        if mp is not None:
            mm = [s for s in self.segments if s.kind == "mmapped"]
            n = len(mm)
            # mmapped_mem counts each mapping's pages: the chunk and what lies before it (i386's
            # alignment correction, a memalign lead)
            nbytes = sum(s.end - s.start for s in mm)
            if n != mp.n_mmaps:
                self.findings.add("mmapped-count-mismatch", "mp_.n_mmaps says %d mmapped chunks, %d were found"
                                  % (mp.n_mmaps, n), None)
            elif nbytes != mp.mmapped_mem:
                self.findings.add("mmapped-bytes-mismatch", "mp_.mmapped_mem says %d bytes of mmapped chunks, "
                                  "%d were found" % (mp.mmapped_mem, nbytes), None)

    def run(self, progress_sink=None) -> Heap:
        model = self.model
        real = self.t
        if progress_sink is not None:
            # progress by the bytes the walk reads: the heaps, then the anonymous memory that
            # mmapped chunks are looked for in
            from .progress import Progress
            total = sum(m.size for m in self.maps if m.kind in ("main-heap", "arena-heap") and "w" in m.perms[:3])
            total += sum(b - a for a, b in _anon_runs(self.maps))
            self.t = _CountingTarget(real, Progress("heap", total, progress_sink, phase="walking the heaps"))
        try:
            for ar in model.arenas:
                if ar.main:
                    self.walk_main(ar)
                else:
                    self.walk_thread_heaps(ar)
            if not model.arenas or model.how.startswith("fallback"):
                self.walk_shapes()
            self.add_mmapped(find_mmapped_chunks(self.t, self.maps))
        finally:
            if self.t is not real:
                self.t.progress.finish()
                self.t = real
        order = sorted(range(len(self.chunks)), key=lambda k: self.chunks[k][0])
        self.segments = [self.segments[k] for k in order]
        chunks = [list(self.chunks[k]) for k in order]
        self.chunks = []
        # compact arrays (issue 16): uint32 sizes unless a chunk is >= 4 GiB; each segment's
        # arrays are copied into the final ones and let go at once (untouched pages of np.empty
        # cost nothing), so the peak is the result plus one segment, not twice the result
        wide = any(len(c[2]) and c[2].dtype == np.uint64 for c in chunks)

        def cat(k, dt):
            out = np.empty(sum(len(c[k]) for c in chunks), dtype=dt)
            at = 0
            for c in chunks:
                part, c[k] = c[k], None
                out[at:at + len(part)] = part
                at += len(part)
                del part
            return out
        addrs, sizes, inuse, mm = cat(1, np.uint64), cat(2, np.uint64 if wide else np.uint32), cat(3, np.uint8), cat(4, bool)
        free = (inuse == 0).view(np.int8)     # FREE_BITS (== 1) where the next header says free
        del inuse, chunks
        heap = Heap(self.segments, addrs, sizes, free, self.lay.ps, self.findings, model, mm)
        self.mark_tcaches(heap)
        self.mark_fastbins(heap)
        self.check_totals(heap)
        heap.accounting = account(self.t, self.maps, heap)
        heap.accounting["heap_not_walked"] = self.skipped_bytes + sum(
            (s.top if s.top is not None else s.end) - s.walked_to for s in self.segments if s.walked_to is not None)
        heap.skipped = self.skipped
        if heap.accounting["unexplained"] >= UNEXPLAINED_FLAG:
            big = max(heap.accounting["unexplained_regions"], key=lambda r: r[1] - r[0])
            self.findings.add("unexplained-memory", "%d MiB of writable anonymous memory is not malloc's, "
                              "not a stack, not module data: look at it with 'memleak maps' / 'memleak "
                              "vtable-census START END'" % (heap.accounting["unexplained"] >> 20), big[0])
        return heap


MEMALIGN_LEAD = 4 << 20        # how far into an mmapped chunk a memalign'd chunk is looked for


def _anon_runs(maps: List[Mapping]) -> List[Tuple[int, int]]:
    """Runs of adjacent writable anonymous mappings (not arena heaps): one mmap can be several
    mappings (madvise(MADV_HUGEPAGE) on part of it splits it), and several mmaps one mapping."""
    runs: List[Tuple[int, int]] = []
    for m in maps:
        if m.kind not in ("anon", "tls") or "w" not in m.perms[:3] or m.perms.endswith("s"):
            continue
        if runs and runs[-1][1] == m.start:
            runs[-1] = (runs[-1][0], m.end)
        else:
            runs.append((m.start, m.end))
    return runs


def find_mmapped_chunks(target: Target, maps: List[Mapping], cache: bool = True) -> List[Tuple[int, int, int]]:
    """glibc's mmapped chunks (malloc above the mmap threshold) as (chunk, size, mapping start:
    the chunk minus its prev_size), from every page
    of writable anonymous memory that is not an arena heap: a page that starts with prev_size 0
    and a size word whose flags are exactly IS_MMAPPED and whose size is whole pages that fit the
    run of mappings.  Adjacent anonymous mmaps merge into one mapping, so chunks are looked for
    at every page, not only at mapping starts; pages inside an accepted chunk are skipped.
    memalign/posix_memalign move an mmapped chunk forward by a lead that its prev_size holds
    (the stale header at the mapping start stays): such a chunk is taken at its real place.
    Cached on the target (``cache``: maps.py asks about single mappings uncached)."""
    cached = getattr(target, "_mmapped_chunks", None) if cache else None
    if cached is not None:
        return cached
    from .memory.stream import iter_chunks
    ps = target.pointer_size
    dt = np.dtype(("<" if target.byteorder == "little" else ">") + ("u8" if ps == 8 else "u4"))
    per_page = PAGE // ps
    out: List[Tuple[int, int]] = []
    for start, end in _anon_runs(maps):
        skip_to = start
        for addr, data in iter_chunks(target, start, end, 4 << 20):
            n = len(data) // ps
            if n < 2 or addr % PAGE:
                continue
            w = np.frombuffer(data, dtype=dt, count=n)
            heads = np.arange(0, n - 3, per_page)
            page_addr = np.uint64(addr) + heads.astype(np.uint64) * np.uint64(ps)
            found = []
            # prev_size 0 at the page start; or, where MALLOC_ALIGNMENT exceeds the header (i386),
            # glibc's correction: the chunk at page + 8 with prev_size 8
            for corr in ((0, 8) if malloc_alignment(target.arch, ps) > 2 * ps else (0,)):
                k = corr // ps
                prev, sf = w[heads + k], w[heads + k + 1]
                cs = (sf & dt.type(~7 & ((1 << (8 * ps)) - 1))).astype(np.uint64)
                ok = ((prev == corr) & ((sf & dt.type(7)) == IS_MMAPPED) & (cs >= PAGE - corr)
                      & ((cs + np.uint64(corr)) % np.uint64(PAGE) == 0)
                      & (page_addr + np.uint64(corr) + cs <= np.uint64(end)))
                found.extend((int(page_addr[i]) + corr, int(cs[i])) for i in np.flatnonzero(ok))
            for c, size in sorted(found):
                if c < skip_to:
                    continue
                c2, size2 = _memaligned(target, dt, c, size)
                out.append((c2, size2, c - (c % PAGE)))
                skip_to = c + size
    if cache:
        target._mmapped_chunks = out
    return out


def _memaligned(target: Target, dt, c: int, size: int) -> Tuple[int, int]:
    """The chunk memalign made of the mmapped chunk (c, size), if it did: a header inside it at
    c + lead whose prev_size is lead (plus the i386 correction) and whose size is size - lead."""
    ps = target.pointer_size
    n = min(size, MEMALIGN_LEAD) // ps
    data = target.try_read(c, n * ps)
    if data is None or n < 4:
        return c, size
    w = np.frombuffer(bytes(data), dtype=dt).astype(np.uint64)
    base_prev = int(w[0])
    k = np.arange(2, n - 1, dtype=np.uint64)
    lead = k * np.uint64(ps)
    sf = w[3:n]
    hit = np.flatnonzero((w[2:n - 1] == lead + np.uint64(base_prev)) & ((sf & np.uint64(7)) == IS_MMAPPED)
                         & ((sf & ~np.uint64(7)) == np.uint64(size) - lead))
    if len(hit):
        lead_b = int(lead[hit[0]])
        return c + lead_b, size - lead_b
    return c, size


def account(target: Target, maps: List[Mapping], heap: Heap) -> dict:
    """Where every byte of writable anonymous memory went: main heap, arena heaps, mmapped
    chunks, thread stacks, other (module .bss, static TLS blocks), unexplained."""
    out = {"main_heap": 0, "arena_heaps": 0, "mmapped_chunks": 0, "thread_stacks": 0, "other": 0,
           "unexplained": 0, "total": 0}
    unexplained: List[Tuple[int, int]] = []
    mods = [(a, b) for mod in target.modules() for a, b, _f in mod.segments]
    mm = sorted((s.start, s.end) for s in heap.segments if s.kind == "mmapped")
    for m in maps:
        if "w" not in m.perms[:3] or m.perms.endswith("s") or m.kind in ("shm", "file", "vdso", "vvar", "vsyscall"):
            continue
        out["total"] += m.size
        if m.kind == "main-heap":
            out["main_heap"] += m.size
        elif m.kind == "arena-heap":
            out["arena_heaps"] += m.size
        elif m.kind in ("stack", "thread-stack"):
            out["thread_stacks"] += m.size
        else:
            inside = sum(min(b, m.end) - max(a, m.start) for a, b in mm if a < m.end and m.start < b)
            out["mmapped_chunks"] += inside
            rest = m.size - inside
            if not rest:
                continue
            if m.kind == "tls" or any(a < m.end and m.start < b for a, b in mods):
                out["other"] += rest
            else:
                out["unexplained"] += rest
                unexplained.append((m.start, m.end))
    out["unexplained_regions"] = unexplained
    return out


def heap_ranges(target: Target, maps: List[Mapping]) -> List[Tuple[int, int]]:
    """Memory malloc owns, without walking it: main heap, arena heaps' rw parts, mmapped chunks."""
    out = []
    for m in maps:
        if m.kind in ("main-heap", "arena-heap") and "w" in m.perms[:3]:
            out.append((m.start, m.end))
    out.extend((c, c + cs) for c, cs, _m in find_mmapped_chunks(target, maps))
    return sorted(out)


def require_heap(target: Target, maps: Optional[List[Mapping]] = None, progress_sink=None) -> Heap:
    """walk_heap, or one clear error when the target has no glibc heap at all."""
    heap = walk_heap(target, maps, progress_sink)
    if not heap.segments:
        from .errors import MemleakError
        hint = (" (under valgrind malloc is valgrind's: use 'memleak vgdb leak-check')"
                if target.kind == "remote" else ": not glibc malloc?")
        raise MemleakError("no glibc heap found (no [heap], no arena, no mmapped chunk)" + hint)
    return heap


def walk_heap(target: Target, maps: Optional[List[Mapping]] = None, progress_sink=None) -> Heap:
    cached = getattr(target, "_heap", None)
    if cached is None:
        cached = HeapWalker(target, maps).run(progress_sink)
        target._heap = cached
    return cached


class _CountingTarget:
    """The target, with the bytes read through it counted into a Progress (the heap walk's
    progress without touching the walk).  Everything else goes to the real target, attributes
    set on it included (caches such as _mmapped_chunks)."""

    def __init__(self, target: Target, progress):
        object.__setattr__(self, "_real", target)
        object.__setattr__(self, "progress", progress)

    def __getattr__(self, name):
        return getattr(self._real, name)

    def __setattr__(self, name, value):
        setattr(self._real, name, value)

    def read(self, addr: int, n: int):
        data = self._real.read(addr, n)
        self.progress.advance(n)
        return data

    def read_into(self, addr: int, buf) -> None:
        self._real.read_into(addr, buf)
        self.progress.advance(len(buf))

    def fast_read_into(self, addr: int, buf) -> bool:
        ok = self._real.fast_read_into(addr, buf)
        if ok:
            self.progress.advance(len(buf))
        return ok

    def try_read(self, addr: int, n: int):
        data = self._real.try_read(addr, n)
        if data is not None:
            self.progress.advance(n)
        return data
