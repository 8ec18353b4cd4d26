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
from typing import Dict, List, Optional, Tuple

import numpy as np

from .errors import MemoryReadError
from .maps import Mapping, classify
from .target import Target

PREV_INUSE, IS_MMAPPED, NON_MAIN_ARENA = 1, 2, 4
TCACHE_BINS = 64
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


def _walk(buf, base: int, first: int, end: int, p: _Params):
    """Step chunk headers from ``first``; returns (addrs, sizes, pbits, stopped_at, finding)."""
    ps = p.ps
    unpack = struct.Struct(p.word).unpack_from
    addrs, sizes, pbits = array("Q"), array("Q"), bytearray()
    a = first
    limit = end
    while a < limit:
        off = a - base + ps
        if off + ps > len(buf):
            return addrs, sizes, pbits, a, "chunk header at 0x%x is outside readable memory" % a
        sf = unpack(buf, off)[0]
        cs = sf & ~7
        # sizes are MALLOC_ALIGNMENT multiples, except top's on i386 (it ends at the page-aligned end)
        if cs < p.minsize or (cs % p.align and a + cs != limit and cs != 2 * ps) or a + cs > limit:
            if cs == 2 * ps and a + cs <= limit:     # fencepost at the end of an old heap
                return addrs, sizes, pbits, limit, None
            return addrs, sizes, pbits, a, "bad chunk size 0x%x at 0x%x" % (sf, a)
        addrs.append(a)
        sizes.append(cs)
        pbits.append(sf & PREV_INUSE)
        a += cs
    return addrs, sizes, pbits, a, None


def _read_all(target: Target, start: int, end: int):
    try:
        return bytes(target.read(start, end - start))
    except MemoryReadError:
        return None


class HeapWalker:
    def __init__(self, target: Target, maps: Optional[List[Mapping]] = None):
        self.t = target
        self.p = _Params(target.pointer_size)
        self.maps = maps if maps is not None else classify(target)
        self.segments: List[HeapSegment] = []
        self.findings: List[Finding] = []
        self.chunks: List[Tuple[List[int], List[int], List[int]]] = []   # per segment: addrs, sizes, inuse
        self.bufs: Dict[int, Tuple[int, bytes]] = {}

    # -- segments --------------------------------------------------------------
    def walk_main(self, m: Mapping):
        buf = _read_all(self.t, m.start, m.end)
        if buf is None:
            self.findings.append(Finding(m.start, "main heap unreadable"))
            return
        best = None
        for first in ((m.start, m.start + 8) if self.p.ps == 4 else (m.start,)):
            res = _walk(buf, m.start, first, m.end, self.p)
            if res[3] == m.end and res[0]:
                best = (first, res)
                break
            if best is None or len(res[0]) > len(best[1][0]):
                best = (first, res)
        first, (addrs, sizes, pbits, stop, err) = best
        if err:
            self.findings.append(Finding(stop, "main heap: %s; walk stopped" % err))
        self._add("main", m.start, first, stop, None, addrs, sizes, pbits, buf)

    def walk_arena(self, m: Mapping):
        ps = self.p.ps
        buf = _read_all(self.t, m.start, m.end)
        if buf is None:
            return
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
            res = _walk(buf, m.start, c, end, self.p)
            if res[3] == end and res[0]:
                addrs, sizes, pbits, stop, _ = res
                self._add("thread", m.start, c, end, ar_ptr, addrs, sizes, pbits, buf)
                return
        self.findings.append(Finding(m.start, "thread heap: no chunk walk ends at the heap end 0x%x" % end))

    def walk_mmapped(self, m: Mapping):
        """mmapped chunks (IS_MMAPPED) at the start of an anonymous mapping, back to back."""
        ps = self.p.ps
        head = self.t.try_read(m.start, 2 * ps)
        if head is None:
            return
        prev, sf = struct.unpack("<2" + self.p.word[1], bytes(head))
        if not sf & IS_MMAPPED or prev % 16 or prev >= 4096:
            return
        addrs, sizes = [], []
        a = m.start
        while a + 2 * ps <= m.end:
            h = self.t.try_read(a, 2 * ps)
            if h is None:
                break
            prev, sf = struct.unpack("<2" + self.p.word[1], bytes(h))
            cs = sf & ~7
            c = a + prev
            if not sf & IS_MMAPPED or prev % 16 or prev >= 4096 or cs < self.p.minsize or c + cs > m.end:
                break
            # an mmapped chunk's header is at the chunk start (a + prev_size) in glibc: the
            # common case prev=0 makes a == c
            if prev:
                h2 = self.t.try_read(c, 2 * ps)
                if h2 is None:
                    break
                cs = struct.unpack("<2" + self.p.word[1], bytes(h2))[1] & ~7
            addrs.append(c)
            sizes.append(cs)
            nxt = (c + cs + 4095) & ~4095
            if nxt <= a:
                break
            a = nxt
        if addrs:
            self._add("mmapped", m.start, addrs[0], a, None, addrs, sizes, None, None, mmapped=True)

    def _add(self, kind, start, first, end, arena, addrs, sizes, pbits, buf, mmapped=False):
        if not addrs:
            return
        seg = HeapSegment(kind, start, first, end, arena)
        if mmapped:
            inuse = bytes([1]) * len(addrs)
        else:
            # the last chunk is top: free by definition, not an allocation
            seg.top, seg.top_size = addrs[-1], sizes[-1]
            inuse = bytes(pbits[1:])
            addrs, sizes = addrs[:-1], sizes[:-1]
        self.segments.append(seg)
        self.chunks.append((addrs, sizes, inuse))
        if buf is not None:
            self.bufs[start] = (start, buf)

    # -- free lists ------------------------------------------------------------
    def _word_at(self, addr):
        for base, buf in self.bufs.values():
            off = addr - base
            if 0 <= off and off + self.p.ps <= len(buf):
                return struct.unpack_from(self.p.word, buf, off)[0]
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
        for mod in self.t.modules():
            if "libc" not in mod.name:
                continue
            for a, b, flags in mod.segments:
                if not flags & 2:   # PF_W
                    continue
                data = self.t.try_read(a, b - a)
                if data is None:
                    continue
                w = np.frombuffer(bytes(data)[: (b - a) // ps * ps], dtype=np.uint64 if ps == 8 else np.uint32)
                hits = np.nonzero(w == top)[0]
                for h in hits:
                    return a + int(h) * ps - top_off
        return None

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
            elif m.kind == "anon" and "w" in m.perms[:3] and is_mmapped_chunk_start(self.t, m):
                self.walk_mmapped(m)
        def cat(k, dt):
            parts = [np.frombuffer(c[k], dtype=dt) if isinstance(c[k], (array, bytearray, bytes))
                     else np.asarray(c[k], dtype=dt) for c in self.chunks]
            return np.concatenate(parts).astype(dt) if parts else np.zeros(0, dtype=dt)
        addrs, sizes, inuse = cat(0, np.uint64), cat(1, np.uint64), cat(2, np.uint8).astype(bool)
        order = np.argsort(addrs, kind="stable")
        free = np.where(inuse[order], 0, FREE_BITS).astype(np.int8)
        heap = Heap(self.segments, addrs[order], sizes[order], free, self.p.ps, self.findings)
        self.mark_tcache(heap)
        self.mark_fastbins(heap)
        self.bufs.clear()
        return heap


def is_mmapped_chunk_start(target: Target, m: Mapping) -> bool:
    """Does an anonymous mapping start with a glibc mmapped chunk (IS_MMAPPED, small prev_size)?"""
    ps = target.pointer_size
    head = target.try_read(m.start, 2 * ps)
    if head is None:
        return False
    prev, sf = struct.unpack("<2" + ("Q" if ps == 8 else "I"), bytes(head))
    cs = sf & ~7
    return bool(sf & IS_MMAPPED) and prev % 16 == 0 and prev < 4096 and 4 * ps <= cs <= m.size


def heap_ranges(target: Target, maps: List[Mapping]) -> List[Tuple[int, int]]:
    """Memory malloc owns, without walking it: main heap, arena heaps' rw parts, mmapped chunks."""
    out = []
    for m in maps:
        if m.kind in ("heap", "arena") and "w" in m.perms[:3]:
            out.append((m.start, m.end))
        elif m.kind == "anon" and "w" in m.perms[:3] and is_mmapped_chunk_start(target, m):
            out.append((m.start, m.end))
    return sorted(out)


def walk_heap(target: Target, maps: Optional[List[Mapping]] = None) -> Heap:
    cached = getattr(target, "_heap", None)
    if cached is None:
        cached = HeapWalker(target, maps).run()
        target._heap = cached
    return cached
