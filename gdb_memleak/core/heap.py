"""glibc malloc without debug symbols: walk the main heap, thread-arena heaps and mmapped chunks;
mark chunks free from the next chunk's PREV_INUSE, the per-thread tcaches and the fastbins.

Layout facts used (glibc >= 2.30; safe-linking since 2.32 is detected, not assumed):
main heap's first chunk at the [heap] start (+8 on i386, MALLOC_ALIGNMENT 16); thread heaps are
HEAP_MAX-aligned with heap_info {ar_ptr, prev, size, mprotect_size, ...} and, in an arena's first
heap, its malloc_state; tcache_perthread_struct {u16 counts[64]; entry *entries[64]} is a chunk.
"""
from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

from .errors import MemoryReadError
from .maps import Mapping, classify, main_heap_first_chunk
from .target import Target

PREV_INUSE, IS_MMAPPED, NON_MAIN_ARENA = 1, 2, 4
TCACHE_BINS = 64
PAGE = 4096
FREE_BITS, FREE_TCACHE, FREE_FAST = 1, 2, 3


@dataclass
class Finding:
    address: int
    message: str

    def to_json(self):
        return {"address": hex(self.address), "message": self.message}


@dataclass
class HeapSegment:
    kind: str                   # main | thread | mmapped
    start: int                  # mapping start
    first: int                  # first chunk
    end: int                    # end of the walked part
    arena: Optional[int] = None
    top: Optional[int] = None
    top_size: int = 0


@dataclass
class Heap:
    segments: List[HeapSegment]
    addr: np.ndarray            # chunk addresses, sorted (uint64); top chunks excluded
    size: np.ndarray            # chunk sizes (uint64)
    free: np.ndarray            # 0 in use, else FREE_* reason (int8)
    pointer_size: int
    findings: List[Finding] = field(default_factory=list)

    @property
    def user(self) -> np.ndarray:
        return self.addr + np.uint64(2 * self.pointer_size)

    @property
    def inuse(self) -> np.ndarray:
        return self.free == 0

    def chunk_index(self, address: int) -> Optional[int]:
        """Index of the chunk whose [addr, addr+size) holds ``address``."""
        i = int(np.searchsorted(self.addr, np.uint64(address), side="right")) - 1
        if i >= 0 and address < int(self.addr[i]) + int(self.size[i]):
            return i
        return None


class _Params:
    def __init__(self, ps: int):
        self.ps = ps
        self.align = 16
        self.minsize = 32 if ps == 8 else 16
        self.nfastbins = 10 if ps == 8 else 11
        self.tcache_chunk = ((2 * TCACHE_BINS + ps * TCACHE_BINS + ps + 15) & ~15)
        self.word = ("<Q" if ps == 8 else "<I")


class _Window:
    """Sequential reads of one heap region through a window of WINDOW bytes (bounded memory)."""
    WINDOW = 4 << 20

    def __init__(self, target: Target, start: int, end: int):
        self.t, self.start, self.end = target, start, end
        self.lo = self.hi = start
        self.buf = b""

    def load(self, addr: int, need: int):
        """Make [addr, addr+need) resident; returns (buf, base) or None when unreadable."""
        if self.lo <= addr and addr + need <= self.hi:
            return self.buf, self.lo
        lo = addr - addr % 4096
        hi = min(max(lo + self.WINDOW, addr + need), self.end)
        try:
            self.buf = bytes(self.t.read(lo, hi - lo))
        except MemoryReadError:
            # a page-sized read can still succeed at the walk position
            hi = min(lo + 4096, self.end)
            if addr + need > hi:
                return None
            try:
                self.buf = bytes(self.t.read(lo, hi - lo))
            except MemoryReadError:
                return None
        self.lo, self.hi = lo, hi
        return self.buf, lo


def _walk(win: _Window, first: int, end: int, p: _Params):
    """Step chunk headers from ``first`` to ``end``; returns (addrs, sizes, pbits, stopped_at,
    finding) with numpy arrays.  The sequential part is a tight loop over a memoryview of each
    window that only follows sizes; the checks and the flags are done per window with numpy."""
    ps = p.ps
    shift = 3 if ps == 8 else 2
    fmt = "Q" if ps == 8 else "I"
    dt = np.uint64 if ps == 8 else np.uint32
    minsize, mask = p.minsize, ~7
    out_a, out_s, out_p = [], [], []
    a = first
    finding = None
    while a < end:
        got = win.load(a, 2 * ps)
        if got is None:
            finding = "chunk header at 0x%x is outside readable memory" % a
            break
        buf, base = got
        nbytes = len(buf) - len(buf) % ps
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
        # sizes are MALLOC_ALIGNMENT multiples, except top's on i386 (it ends at the page-aligned end)
        bad = np.flatnonzero((cs % np.uint64(p.align) != 0) & (addrs + cs != np.uint64(end)))
        if len(bad):
            k = int(bad[0])
            out_a.append(addrs[:k]); out_s.append(cs[:k])
            out_p.append((sf[:k] & np.uint64(PREV_INUSE)).astype(np.uint8))
            a = int(addrs[k])
            finding = "bad chunk size 0x%x at 0x%x" % (int(sf[k]), a)
            break
        out_a.append(addrs); out_s.append(cs); out_p.append((sf & np.uint64(PREV_INUSE)).astype(np.uint8))
        a = base + (i << shift)
        if s < minsize and i < iend:
            # size below the minimum: a fencepost ends an old heap; anything else is corruption
            if s == 2 * ps:
                a = end
                break
            finding = "bad chunk size 0x%x at 0x%x" % (int(mv[i + 1]), a)
            break
    addrs = np.concatenate(out_a) if out_a else np.zeros(0, dtype=np.uint64)
    sizes = np.concatenate(out_s) if out_s else np.zeros(0, dtype=np.uint64)
    pbits = np.concatenate(out_p).astype(np.uint8) if out_p else np.zeros(0, dtype=np.uint8)
    if a > end and len(addrs):
        # the last chunk runs past the end
        a = int(addrs[-1])
        finding = finding or "chunk at 0x%x runs past the end 0x%x" % (a, end)
        addrs, sizes, pbits = addrs[:-1], sizes[:-1], pbits[:-1]
    return addrs, sizes, pbits, a, finding


class HeapWalker:
    def __init__(self, target: Target, maps: Optional[List[Mapping]] = None):
        self.t = target
        self.p = _Params(target.pointer_size)
        self.maps = maps if maps is not None else classify(target)
        self.segments: List[HeapSegment] = []
        self.findings: List[Finding] = []
        self.chunks: list = []      # per segment: (start, addrs, sizes, inuse) numpy arrays

    # -- segments --------------------------------------------------------------
    def walk_main(self, m: Mapping):
        win = _Window(self.t, m.start, m.end)
        if win.load(m.start, 4 * self.p.ps) is None:
            self.findings.append(Finding(m.start, "main heap unreadable"))
            return
        best = None
        firsts = [m.start, m.start + 8] if self.p.ps == 4 else [m.start]
        for first in firsts + [None]:
            if first is None:     # a static executable's TLS block comes first: look for the chunks
                first = main_heap_first_chunk(self.t, m.start, m.end)
                if first is None or first in firsts:
                    break
            res = _walk(win, first, m.end, self.p)
            if res[3] == m.end and len(res[0]):
                best = (first, res)
                break
            if best is None or len(res[0]) > len(best[1][0]):
                best = (first, res)
        first, (addrs, sizes, pbits, stop, err) = best
        if err:
            self.findings.append(Finding(stop, "main heap: %s; walk stopped" % err))
        self._add("main", m.start, first, stop, None, addrs, sizes, pbits)

    def walk_arena(self, m: Mapping):
        ps = self.p.ps
        win = _Window(self.t, m.start, m.end)
        got = win.load(m.start, 4096)
        if got is None:
            self.findings.append(Finding(m.start, "thread heap unreadable"))
            return
        buf = got[0]
        ar_ptr, prev, size, _mprot = struct.unpack_from("<4" + self.p.word[1], buf, 0)
        end = min(m.start + size, m.end)
        # the first chunk follows heap_info (and malloc_state in an arena's first heap): find the
        # 16-aligned offset from which the walk ends exactly at the heap's end
        # chunk headers sit where the user pointer (chunk + 2*SIZE_SZ) is MALLOC_ALIGNMENT-aligned
        lo = m.start + 4 * ps
        first = ((lo + 2 * ps + 15) & ~15) - 2 * ps
        cands = range(first, min(m.start + 4096, end), 16)
        for c in cands:
            sf = struct.unpack_from(self.p.word, buf, c - m.start + ps)[0]
            if not sf & PREV_INUSE or (sf & ~7) < self.p.minsize:
                continue
            res = _walk(win, c, end, self.p)
            if res[3] == end and len(res[0]):
                addrs, sizes, pbits, stop, _ = res
                self._add("thread", m.start, c, end, ar_ptr, addrs, sizes, pbits)
                return
        self.findings.append(Finding(m.start, "thread heap: no chunk walk ends at the heap end 0x%x" % end))

    def add_mmapped(self, chunks: List[Tuple[int, int]]):
        for c, cs in chunks:
            self._add("mmapped", c, c, c + cs, None, [c], [cs], None, mmapped=True)

    def _add(self, kind, start, first, end, arena, addrs, sizes, pbits, mmapped=False):
        if not len(addrs):
            return
        seg = HeapSegment(kind, start, first, end, arena)
        addrs, sizes = np.asarray(addrs, dtype=np.uint64), np.asarray(sizes, dtype=np.uint64)
        if mmapped:
            inuse = np.ones(len(addrs), dtype=np.uint8)
        else:
            # the last chunk is top: free by definition, not an allocation; a chunk is in use
            # when the next one's PREV_INUSE is set
            seg.top, seg.top_size = int(addrs[-1]), int(sizes[-1])
            inuse = np.asarray(pbits[1:], dtype=np.uint8)
            addrs, sizes = addrs[:-1], sizes[:-1]
        self.segments.append(seg)
        self.chunks.append((start, addrs, sizes, inuse))

    # -- free lists ------------------------------------------------------------
    def _word_at(self, addr):
        return self.t.read_word(addr)

    def _reveal(self, pos, val, safe):
        return ((pos >> 12) ^ val) if safe else val

    def _chain(self, head, field_off, heap: Heap, want_size, count_limit, safe):
        """Follow a singly linked free list; head/next point to ``field_off`` before the link field."""
        out = []
        seen = set()
        cur = head
        while cur and len(out) < count_limit:
            chunk = cur - field_off if field_off else cur
            i = heap.chunk_index(chunk)
            if i is None or int(heap.addr[i]) != chunk or (want_size and int(heap.size[i]) != want_size) \
                    or chunk in seen:
                return None
            seen.add(chunk)
            out.append(i)
            link_addr = chunk + 2 * self.p.ps
            try:
                cur = self._reveal(link_addr, self._word_at(link_addr), safe)
            except MemoryReadError:
                return None
        return out if cur == 0 else None

    def mark_tcache(self, heap: Heap):
        ps = self.p.ps
        tsize = self.p.tcache_chunk
        cand = np.nonzero((heap.size == tsize) & (heap.free == 0))[0]
        for i in cand:
            user = int(heap.addr[i]) + 2 * ps
            try:
                raw = bytes(self.t.read(user, 2 * TCACHE_BINS + ps * TCACHE_BINS))
            except MemoryReadError:
                continue
            counts = struct.unpack_from("<%dH" % TCACHE_BINS, raw, 0)
            entries = struct.unpack_from("<%d%s" % (TCACHE_BINS, self.p.word[1]), raw, 2 * TCACHE_BINS)
            if not any(entries):
                continue
            marks = []
            ok = True
            for b in range(TCACHE_BINS):
                if bool(counts[b]) != bool(entries[b]):
                    ok = False
                    break
                if not entries[b]:
                    continue
                want = self.p.minsize + b * self.p.align
                chain = None
                for safe in (True, False):
                    chain = self._chain(entries[b], 2 * ps, heap, want, counts[b], safe)
                    if chain is not None and len(chain) == counts[b]:
                        break
                    chain = None
                if chain is None:
                    ok = False
                    break
                marks.extend(chain)
            if ok:
                heap.free[marks] = FREE_TCACHE
            elif any(entries):
                self.findings.append(Finding(int(heap.addr[i]), "a tcache-like block whose lists do not validate"))

    def find_main_arena(self, top: int) -> Optional[int]:
        """&main_arena from the word in libc's writable data that points at the main heap's top."""
        ps = self.p.ps
        top_off = 16 + self.p.nfastbins * ps if ps == 8 else 12 + self.p.nfastbins * ps
        mods = self.t.modules()
        libc = [mod for mod in mods if "libc" in mod.name]
        for mod in libc or [mod for mod in mods if mod.is_main]:     # static: main_arena is the exe's
            for a, b, flags in mod.segments:
                if not flags & 2:   # PF_W
                    continue
                data = self.t.try_read(a, b - a)
                if data is None:
                    continue
                w = np.frombuffer(bytes(data)[: (b - a) // ps * ps], dtype=np.uint64 if ps == 8 else np.uint32)
                hits = np.nonzero(w == top)[0]
                for h in hits:
                    cand = a + int(h) * ps - top_off
                    if self._bins_look_like_arena(cand, top_off):
                        return cand
        return None

    def _bins_look_like_arena(self, arena: int, top_off: int) -> bool:
        """malloc_state's bins after top and last_remainder: each (fd, bk) pair is either empty
        (both point back at the bin itself, as a chunk: &bins[2i] - 2*SIZE_SZ) or points at
        chunks; and some bins are empty.  Other words that happen to equal top fail this."""
        ps = self.p.ps
        nbins = 127
        base = arena + top_off + 2 * ps
        try:
            words = self.t.read_words(base, 2 * (nbins - 1))
        except MemoryReadError:
            return False
        empty = 0
        for i in range(nbins - 1):
            fd, bk = words[2 * i], words[2 * i + 1]
            own = base + 2 * i * ps - 2 * ps
            if fd == own and bk == own:
                empty += 1
            elif (fd == own) != (bk == own) or not fd or not bk or fd % (2 * ps) or bk % (2 * ps):
                return False
        return empty > 0

    def mark_fastbins(self, heap: Heap):
        ps = self.p.ps
        arenas = set()
        for seg in self.segments:
            if seg.kind == "main" and seg.top:
                a = self.find_main_arena(seg.top)
                if a:
                    arenas.add(a)
            elif seg.kind == "thread" and seg.arena:
                arenas.add(seg.arena)
        fb_off = 16 if ps == 8 else 12
        for ar in arenas:
            try:
                bins = self.t.read_words(ar + fb_off, self.p.nfastbins)
            except MemoryReadError:
                continue
            for b, head in enumerate(bins):
                if not head:
                    continue
                want = (b + 2) * (16 if ps == 8 else 8)
                chain = None
                for safe in (True, False):
                    chain = self._chain(head, 0, heap, want, 1 << 20, safe)
                    if chain is not None:
                        break
                if chain is None:
                    self.findings.append(Finding(head, "fastbin %d of arena 0x%x does not validate" % (b, ar)))
                    continue
                heap.free[chain] = FREE_FAST

    def run(self) -> Heap:
        for m in self.maps:
            if m.kind == "heap" and "w" in m.perms[:3]:
                self.walk_main(m)
            elif m.kind == "arena" and m.note != "reserved":
                self.walk_arena(m)
        self.add_mmapped(find_mmapped_chunks(self.t, self.maps))
        # segments do not overlap and each is walked in address order: sorting them sorts all
        self.chunks.sort(key=lambda c: c[0])
        self.segments.sort(key=lambda sg: sg.start)

        def cat(k, dt):
            parts = [c[k] for c in self.chunks]
            return np.concatenate(parts).astype(dt, copy=False) if parts else np.zeros(0, dtype=dt)
        addrs, sizes, inuse = cat(1, np.uint64), cat(2, np.uint64), cat(3, np.uint8)
        self.chunks = []
        free = np.where(inuse != 0, 0, FREE_BITS).astype(np.int8)
        del inuse
        heap = Heap(self.segments, addrs, sizes, free, self.p.ps, self.findings)
        self.mark_tcache(heap)
        self.mark_fastbins(heap)
        return heap


def find_mmapped_chunks(target: Target, maps: List[Mapping]) -> List[Tuple[int, int]]:
    """glibc's mmapped chunks (malloc above the mmap threshold) as (chunk, size), from every page
    of writable anonymous memory: a page that starts with prev_size 0 and a size word whose flags
    are exactly IS_MMAPPED and whose size is whole pages that fit the mapping.  Adjacent anonymous
    mmaps merge into one mapping, so chunks are looked for at every page, not only at mapping
    starts; pages inside an accepted chunk are skipped.  Cached on the target."""
    cached = getattr(target, "_mmapped_chunks", None)
    if cached is not None:
        return cached
    from .progress import iter_chunks
    ps = target.pointer_size
    dt = np.dtype(("<" if target.byteorder == "little" else ">") + ("u8" if ps == 8 else "u4"))
    per_page = PAGE // ps
    out: List[Tuple[int, int]] = []
    for m in maps:
        if m.kind != "anon" or "w" not in m.perms[:3]:
            continue
        skip_to = m.start
        for addr, data in iter_chunks(target, m.start, m.end, 4 << 20):
            n = len(data) // ps
            if n < 2 or addr % PAGE:
                continue
            w = np.frombuffer(data, dtype=dt, count=n)
            heads = np.arange(0, n - 3, per_page)
            page_addr = np.uint64(addr) + heads.astype(np.uint64) * np.uint64(ps)
            found = []
            # prev_size 0 at the page start; or, where MALLOC_ALIGNMENT exceeds the header (i386),
            # glibc's correction: the chunk at page + 8 with prev_size 8
            for corr in ((0, 8) if ps == 4 else (0,)):
                k = corr // ps
                prev, sf = w[heads + k], w[heads + k + 1]
                cs = (sf & dt.type(~7 & ((1 << (8 * ps)) - 1))).astype(np.uint64)
                ok = ((prev == corr) & ((sf & dt.type(7)) == IS_MMAPPED) & (cs >= PAGE - corr)
                      & ((cs + np.uint64(corr)) % np.uint64(PAGE) == 0)
                      & (page_addr + np.uint64(corr) + cs <= np.uint64(m.end)))
                found.extend((int(page_addr[i]) + corr, int(cs[i])) for i in np.flatnonzero(ok))
            for c, size in sorted(found):
                if c < skip_to:
                    continue
                out.append((c, size))
                skip_to = c + size
    target._mmapped_chunks = out
    return out


def heap_ranges(target: Target, maps: List[Mapping]) -> List[Tuple[int, int]]:
    """Memory malloc owns, without walking it: main heap, arena heaps' rw parts, mmapped chunks."""
    out = []
    for m in maps:
        if m.kind in ("heap", "arena") and "w" in m.perms[:3]:
            out.append((m.start, m.end))
    out.extend((c, c + cs) for c, cs in find_mmapped_chunks(target, maps))
    return sorted(out)


def require_heap(target: Target, maps: Optional[List[Mapping]] = None) -> Heap:
    """walk_heap, or one clear error when the target has no glibc heap at all."""
    heap = walk_heap(target, maps)
    if not heap.segments:
        from .errors import MemleakError
        hint = (" (under valgrind malloc is valgrind's: use 'memleak vgdb leak-check')"
                if target.kind == "remote" else ": not glibc malloc?")
        raise MemleakError("no glibc heap found (no [heap], no arena, no mmapped chunk)" + hint)
    return heap


def walk_heap(target: Target, maps: Optional[List[Mapping]] = None) -> Heap:
    cached = getattr(target, "_heap", None)
    if cached is None:
        cached = HeapWalker(target, maps).run()
        target._heap = cached
    return cached
