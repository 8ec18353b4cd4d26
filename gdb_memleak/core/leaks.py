"""Reachability over glibc's heap: which in-use chunks no root reaches (leaked), split into
direct and indirect the way memcheck does.

Roots: every thread's registers, each live thread's stack from SP to the mapping's top (that
includes glibc's struct pthread and static TLS), and every other writable mapping that is not
heap: module .data/.bss/.got, anonymous memory, shared memory.  Stacks no live thread owns
(exited-unjoined threads, glibc's stack cache) are excluded unless asked for.

A word is a reference when it is aligned and points into an in-use chunk's user area [user, end):
start and interior pointers both count, as for valgrind's "possibly lost" (which is not "lost").
The heap is read once, in windows: every reference from an in-use chunk becomes an edge
(src, dst); the marking is then a graph walk over arrays, vectorised while the frontier is wide.

Direct vs indirect: a leaked chunk that no other leaked chunk points to is "direct"; so is one
chunk (the lowest-addressed) of each cycle of leaked chunks that nothing else leaked reaches;
every other leaked chunk is "indirect" -- the same split memcheck's clique marking makes.

Memory (issue 16: a few bytes per chunk).  The graph's nodes are the heap's own chunk indices
(free chunks have no edges), so owner lookups search ``Heap.addr`` itself: no copies of
addresses or ends.  Per chunk: the heap's arrays (14 B), the class of the object at the chunk
start (int16), the CSR row starts (int32), a few bool marks; per reference one int32.  The
references are kept in RAM up to a budget (``GDB_MEMLEAK_EDGE_BUDGET``, bytes, K/M/G suffixes;
default 64 MiB + 4 B per chunk) and beyond it go to an unnamed temporary file (0600, unlinked
as soon as it is created: nothing is left behind on exit, Ctrl-C or a kill), read back through
a read-only mapping whose pages are dropped from our RSS as marking goes.  Marking expands the
frontier in bounded batches and dedupes by sorting (no per-chunk scratch array).
"""
from __future__ import annotations

import mmap
import os
import tempfile
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from .heap import Heap
from .maps import Mapping, mapping_at
from .memory.stream import map_chunks
from .progress import Progress
from .memory.target import Target

CHUNK = 4 << 20
WIDE = 256                   # frontier size from which a marking step runs vectorised
BATCH = 1 << 18              # references expanded per vectorised batch (bounded temporaries)
EDGE_BUDGET_ENV = "GDB_MEMLEAK_EDGE_BUDGET"
TMPDIR_ENV = "GDB_MEMLEAK_TMPDIR"


@dataclass
class RootRange:
    start: int
    end: int
    what: str


@dataclass
class LeakResult:
    heap: Heap
    index: np.ndarray            # in-use chunk indices into heap arrays (sorted by address; int32)
    reached: np.ndarray          # bool per in-use chunk
    direct: np.ndarray           # bool per in-use chunk: leaked and direct
    cls: np.ndarray              # per in-use chunk: class index (vtables.VtableIndex) of the object
                                 # at the chunk start (its first word is a primary address point), -1
    roots: List[RootRange]
    excluded: List[Tuple[int, int, str]]
    skipped: List[Tuple[int, int, str]]
    root_bytes: int = 0
    heap_bytes: int = 0
    edges: int = 0
    spilled_bytes: int = 0       # references written to the temporary file (0: all in RAM)
    vindex: object = None        # the VtableIndex ``cls`` refers to

    @property
    def leaked(self) -> np.ndarray:
        return ~self.reached

    def leaked_index(self) -> np.ndarray:
        return self.index[~self.reached]

    @property
    def first_word(self) -> np.ndarray:
        """Per in-use chunk, the primary address point its first word holds, else 0 (uint64):
        ``vindex.primary_class_of(first_word)`` gives ``cls``.  Kept for callers of the old
        field (the first word itself is no longer stored: 8 bytes per chunk)."""
        out = np.zeros(len(self.cls), dtype=np.uint64)
        vi = self.vindex
        if vi is None or not len(vi.points):
            return out
        prim = np.flatnonzero(vi.point_primary)
        rep = np.zeros(len(vi.classes), dtype=np.uint64)
        rep[vi.point_class[prim]] = vi.points[prim]
        has = self.cls >= 0
        out[has] = rep[self.cls[has]]
        return out


class _Owner:
    """Vectorised 'which in-use chunk's usable area holds this address', straight over the
    heap's arrays.  The usable area runs from the user pointer through the next chunk's
    prev_size word (malloc_usable_size = chunksize - SIZE_SZ; an mmapped chunk's ends with the
    chunk)."""

    def __init__(self, heap: Heap):
        self.addr, self.size, self.free = heap.addr, heap.size, heap.free
        self.mm = heap.mmapped if heap.mmapped is not None and heap.mmapped.any() else None
        ps = heap.pointer_size
        self.ps = ps
        self.hdr = np.uint64(2 * ps)
        self.n = len(self.addr)
        if self.n:
            # chunks are sorted and disjoint: the last one ends last
            self.lo = int(self.addr[0]) + 2 * ps
            self.hi = int(self.addr[-1]) + int(self.size[-1]) + ps
        else:
            self.lo = self.hi = 0

    def __call__(self, v: np.ndarray, k0: int = 0, k1: Optional[int] = None) -> np.ndarray:
        """Owner chunk index of each value (-1: none); ``k0:k1`` limits the search to those
        chunks.  Values below the first user area must have been filtered out (``prefilter``)."""
        v = v.astype(np.uint64, copy=False)
        if not self.n or not len(v):
            return np.full(len(v), -1, dtype=np.int64)
        k1 = self.n if k1 is None else k1
        hay = self.addr[k0:k1]
        key = v - self.hdr
        if len(v) > 4096 and len(hay) > 65536:
            # sorted needles walk the haystack in order: 5-10x faster than random probes
            order = np.argsort(key)
            i = np.empty(len(v), dtype=np.int64)
            i[order] = np.searchsorted(hay, key[order], side="right")
        else:
            i = np.searchsorted(hay, key, side="right").astype(np.int64)
        i += k0 - 1
        ok = i >= k0
        j = np.where(ok, i, k0)
        end = self.addr[j] + self.size[j] + np.uint64(self.ps)
        if self.mm is not None:
            end -= self.mm[j].astype(np.uint64) * np.uint64(self.ps)
        ok &= (self.free[j] == 0) & (v < end)
        return np.where(ok, i, -1)

    def prefilter(self, w: np.ndarray) -> np.ndarray:
        """Positions of words within [lo, hi): one unsigned compare."""
        if not self.n:
            return np.zeros(0, dtype=np.int64)
        lo = w.dtype.type(self.lo)
        span = w.dtype.type(self.hi - self.lo - 1)
        return np.flatnonzero((w - lo) <= span)


def _dtype(target: Target):
    return np.dtype(("<" if target.byteorder == "little" else ">") + ("u8" if target.pointer_size == 8 else "u4"))


def parse_budget(text: str) -> int:
    """'64M', '1G', '4096', '512k' -> bytes."""
    t = text.strip().lower().rstrip("b").rstrip("i")
    mult = 1
    if t and t[-1] in "kmgt":
        mult = 1 << (10 * ("kmgt".index(t[-1]) + 1))
        t = t[:-1]
    return int(float(t) * mult)


def edge_budget(nodes: int) -> int:
    """Bytes of references kept in RAM before they spill to a temporary file."""
    env = os.environ.get(EDGE_BUDGET_ENV)
    if env:
        try:
            return max(0, parse_budget(env))
        except ValueError:
            pass
    return (64 << 20) + 4 * nodes


class _Edges:
    """The references' destinations in source order: in RAM up to ``budget`` bytes (one lazily
    committed allocation: no concatenation, no doubling), then in an unnamed temporary file.
    Use as a context manager: the file (if any) is closed on every way out."""

    def __init__(self, budget: int, dtype):
        self.dtype = np.dtype(dtype)
        self.cap = max(0, budget) // self.dtype.itemsize
        self.ram = np.empty(self.cap, dtype=self.dtype) if self.cap else None
        self.n = 0
        self.fd = None
        self.map = None
        self.spilled = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _spill(self):
        d = os.environ.get(TMPDIR_ENV) or None
        fd, path = tempfile.mkstemp(prefix="gdb-memleak-edges-", dir=d)   # 0600, O_EXCL
        os.unlink(path)          # unnamed from now on: gone with the descriptor, whatever happens
        self.fd = fd
        if self.n:
            self._write(self.ram[:self.n])
        self.ram = None

    def _write(self, a: np.ndarray):
        mv = memoryview(np.ascontiguousarray(a, dtype=self.dtype)).cast("B")
        while len(mv):
            k = os.write(self.fd, mv)
            mv = mv[k:]
        self.spilled += a.nbytes

    def append(self, a: np.ndarray):
        if not len(a):
            return
        if self.fd is None and self.n + len(a) > self.cap:
            self._spill()
        if self.fd is None:
            self.ram[self.n:self.n + len(a)] = a
        else:
            self._write(a)
        self.n += len(a)

    def array(self) -> np.ndarray:
        """All destinations: a view of the RAM buffer, or of a read-only mapping of the file."""
        if self.fd is None:
            return self.ram[:self.n] if self.ram is not None else np.zeros(0, dtype=self.dtype)
        if not self.n:
            return np.zeros(0, dtype=self.dtype)
        self.map = mmap.mmap(self.fd, self.n * self.dtype.itemsize, prot=mmap.PROT_READ)
        return np.frombuffer(self.map, dtype=self.dtype, count=self.n)

    def release(self):
        """Drop the mapped file's pages from our resident set (they stay in the page cache)."""
        if self.map is not None:
            try:
                self.map.madvise(mmap.MADV_DONTNEED)
            except (AttributeError, OSError, ValueError):
                pass

    def close(self):
        self.ram = None
        if self.map is not None:
            try:
                self.map.close()
            except BufferError:      # a view is still alive: the mapping goes with it
                pass
            self.map = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def root_ranges(target: Target, maps: List[Mapping], heap: Heap, stale_stacks_as_roots: bool = False,
                stale_reason=None):
    """(roots, excluded): the memory scanned as roots, and what was left out and why."""
    chunks = sorted((s.start, s.end) for s in heap.segments if s.kind == "mmapped")
    # main_arena is malloc's own bookkeeping: its bins, fastbins and top hold the addresses of
    # free chunks, which are also the last usable word of the chunk before them; not a root
    model = heap.model
    if model is not None and model.main_arena:
        chunks = sorted(chunks + [(model.main_arena, model.main_arena + model.layout.state_size)])
    sps = {}
    for t in target.threads():
        m = mapping_at(maps, t.sp)
        if m is not None:
            sps.setdefault(m.start, []).append(t)
    roots: List[RootRange] = []
    excluded: List[Tuple[int, int, str]] = []
    ps = target.pointer_size
    for m in maps:
        if "w" not in m.perms[:3] or m.kind in ("main-heap", "arena-heap"):
            continue
        owners = sps.get(m.start)
        if m.kind in ("stack", "thread-stack") or owners:
            if owners:
                sp = min(t.sp for t in owners)
                sp -= sp % ps
                roots.append(RootRange(sp, m.end, "stack of " + ", ".join("LWP %d" % t.lwp for t in owners)))
                continue
            reason, keep_from = (stale_reason(m) if stale_reason else None) or (None, None)
            reason = reason or "orphan stack (no live thread owns it: exited without join, or glibc's stack cache)"
            if stale_stacks_as_roots or reason.startswith("stack of a live thread"):
                roots.append(RootRange(m.start, m.end, reason))
            elif keep_from is not None and m.start < keep_from < m.end:
                # glibc's own struct pthread at the top stays live (its DTV, its list links)
                excluded.append((m.start, keep_from, reason))
                roots.append(RootRange(keep_from, m.end, "struct pthread of an orphan stack"))
            else:
                excluded.append((m.start, m.end, reason))
            continue
        what = m.kind + (" " + m.path if m.path else "")
        for a, b in _subtract(m.start, m.end, chunks):
            roots.append(RootRange(a, b, what))
    # RELRO: the part of a module's writable segment made read-only after relocation still
    # holds what the program wrote before (a static executable's glibc keeps malloc'd search
    # paths there)
    scanned = sorted([(r.start, r.end) for r in roots] + [(m.start, m.end) for m in maps if "w" in m.perms[:3]])
    for mod in target.modules():
        for a, b, flags in mod.segments:
            if flags & 2:     # PF_W
                a += -a % ps
                for x, y in _subtract(a, b - b % ps, scanned):
                    roots.append(RootRange(x, y, "relro of " + mod.name))
    # a static executable's glibc puts the initial TLS block (the main thread's TLS variables,
    # its struct pthread) in the brk area before malloc's first chunk
    for seg in heap.segments:
        m = mapping_at(maps, seg.first) if seg.kind == "main" else None
        if m is not None and seg.first - m.start > 2 * ps:
            roots.append(RootRange(m.start, seg.first, "static TLS block before the main heap"))
    roots.sort(key=lambda r: r.start)
    return roots, excluded


def _subtract(start: int, end: int, holes: List[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """[start, end) minus the sorted, disjoint ``holes``."""
    out = []
    cur = start
    for a, b in holes:
        if b <= cur or a >= end:
            continue
        if a > cur:
            out.append((cur, a))
        cur = max(cur, b)
    if cur < end:
        out.append((cur, end))
    return out


def _batches(frontier: np.ndarray, indptr: np.ndarray, limit: int = BATCH):
    """(starts, counts) of the frontier's edge rows, cut so that each batch expands to about
    ``limit`` references at most (one node with more is a batch of its own); the frontier is
    taken a slice at a time, so no temporary grows with it."""
    for f0 in range(0, len(frontier), limit):
        part = frontier[f0:f0 + limit]
        starts = indptr[part].astype(np.int64)
        counts = indptr[part + 1].astype(np.int64) - starts
        total = int(counts.sum())
        if total <= limit:
            yield starts, counts
            continue
        cum = np.cumsum(counts)
        i0 = 0
        while i0 < len(part):
            base = int(cum[i0 - 1]) if i0 else 0
            i1 = max(int(np.searchsorted(cum, base + limit, side="right")), i0 + 1)
            yield starts[i0:i1], counts[i0:i1]
            i0 = i1


def _gather(starts: np.ndarray, counts: np.ndarray, indices: np.ndarray) -> np.ndarray:
    total = int(counts.sum())
    if not total:
        return np.zeros(0, dtype=indices.dtype)
    offs = np.repeat(starts - np.cumsum(counts) + counts, counts)
    offs += np.arange(total)
    return indices[offs]


def _expand(frontier: np.ndarray, indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """All successors of the frontier nodes (with repeats)."""
    parts = [_gather(s, c, indices) for s, c in _batches(frontier, indptr)]
    if not parts:
        return np.zeros(0, dtype=indices.dtype)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _fresh(vals: np.ndarray, seen: np.ndarray, stamp=None) -> np.ndarray:
    """The distinct values of ``vals`` not yet ``seen``, which are then marked seen.  Dedupes by
    sorting what is left (numpy's vectorised sort beats a scatter/gather through a per-chunk
    stamp array, and needs no such array)."""
    vals = vals[~seen[vals]]
    if len(vals) > 1:
        vals = np.sort(vals)
        keep = np.empty(len(vals), dtype=bool)
        keep[0] = True
        np.not_equal(vals[1:], vals[:-1], out=keep[1:])
        vals = vals[keep]
    seen[vals] = True
    return vals


def mark(seen: np.ndarray, seeds: np.ndarray, indptr: np.ndarray, indices: np.ndarray,
         allowed: Optional[np.ndarray] = None, tick=None) -> None:
    """Set ``seen`` for everything reachable from ``seeds`` (seeds included).  The work list is
    a stack of arrays of fresh nodes, each node in it once (4 bytes), never concatenated; an
    array is taken with numpy in batches of about BATCH references when it is wide, with a
    plain loop over memoryviews when it is narrow (linked lists).  Depth first over arrays, so
    the list stays short.  ``tick(references)`` is called as work is done (progress, and the
    spill file's pages let go)."""
    if allowed is not None:
        seeds = seeds[allowed[seeds]]
    todo = [_fresh(seeds.astype(indices.dtype, copy=False), seen)]
    ip = memoryview(indptr)
    ix = memoryview(indices)
    sv = memoryview(seen.view(np.uint8))
    av = memoryview(allowed.view(np.uint8)) if allowed is not None else None

    def fresh_of(d):
        """The fresh nodes among the references ``d`` (a slice of indices), onto the list."""
        for a in range(0, len(d), BATCH):
            x = d[a:a + BATCH]
            if allowed is not None:
                x = x[allowed[x]]
            x = _fresh(x, seen)
            if len(x):
                todo.append(x)

    while todo:
        f = todo.pop()
        if len(f) >= WIDE:
            for s, c in _batches(f, indptr):
                fresh_of(_gather(s, c, indices))
                if tick is not None:
                    tick(int(c.sum()))
            continue
        stack = f.tolist()
        steps = 0
        followed = 0
        while stack and len(stack) < 4 * WIDE and steps < 200000:
            f = stack.pop()
            steps += 1
            k0, k1 = ip[f], ip[f + 1]
            followed += k1 - k0
            if k1 - k0 > WIDE:
                # one node with many references (a big pointer array): take them with numpy
                fresh_of(indices[k0:k1])
                continue
            for k in range(k0, k1):
                d = ix[k]
                if not sv[d] and (av is None or av[d]):
                    sv[d] = 1
                    stack.append(d)
        if tick is not None:
            tick(followed)
        if stack:
            todo.append(np.array(stack, dtype=indices.dtype))


def split_direct(leaked: np.ndarray, indptr: np.ndarray, indices: np.ndarray, tick=None) -> np.ndarray:
    """Direct leaks among ``leaked`` (bool per node), per memcheck's cliques (see module doc)."""
    n = len(leaked)
    direct = np.zeros(n, dtype=bool)
    lk = np.flatnonzero(leaked)
    if not len(lk):
        return direct
    # leaked chunks another leaked chunk points to (self edges were never recorded)
    pointed = np.zeros(n, dtype=bool)
    for s, c in _batches(lk, indptr):
        succ = _gather(s, c, indices)
        pointed[succ[leaked[succ]]] = True
        if tick is not None:
            tick(int(c.sum()))
    roots = lk[~pointed[lk]]
    del pointed
    direct[roots] = True
    covered = np.zeros(n, dtype=bool)
    mark(covered, roots, indptr, indices, allowed=leaked, tick=tick)
    # what remains hangs off cycles nothing else leaked reaches: memcheck's loop, in address order
    rest = lk[~covered[lk]]
    if len(rest):
        ip, ix = memoryview(indptr), memoryview(indices)
        cv = memoryview(covered.view(np.uint8))
        lv = memoryview(leaked.view(np.uint8))
        for i in rest.tolist():
            if cv[i]:
                continue
            direct[i] = True
            cv[i] = 1
            stack = [i]
            while stack:
                f = stack.pop()
                for k in range(ip[f], ip[f + 1]):
                    d = ix[k]
                    if lv[d] and not cv[d]:
                        cv[d] = 1
                        stack.append(d)
    return direct


_libc_trim = []


def trim_malloc():
    """Give freed malloc memory back to the system (glibc's malloc_trim: every arena, pages
    inside the heaps too).  numpy's window-sized temporaries come from malloc's arenas (the scan
    threads' own ones as well) and would otherwise stay in our RSS.  No-op without glibc."""
    if not _libc_trim:
        fn = None
        try:
            import ctypes
            fn = ctypes.CDLL(None).malloc_trim
            fn.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            pass
        _libc_trim.append(fn)
    if _libc_trim[0] is not None:
        _libc_trim[0](0)


def _nonzero32(mask: np.ndarray) -> np.ndarray:
    """np.flatnonzero as int32 (int64 when it must), without a full-size int64 temporary."""
    if len(mask) >= (1 << 31):
        return np.flatnonzero(mask)
    out = np.empty(int(np.count_nonzero(mask)), dtype=np.int32)
    at = 0
    step = 1 << 24
    for a in range(0, len(mask), step):
        nz = np.flatnonzero(mask[a:a + step])
        out[at:at + len(nz)] = nz + a
        at += len(nz)
    return out


class _Scan:
    """Work on one window of heap: its references (src, dst) and the class at each chunk start."""
    __slots__ = ("buf",)

    def __init__(self):
        self.buf = bytearray(CHUNK)


def find_leaks(target: Target, maps: List[Mapping], heap: Heap, stale_stacks_as_roots: bool = False,
               progress_sink=None, stale_reason=None, vindex=None) -> LeakResult:
    from .vtables import build_index
    ps = target.pointer_size
    dt = _dtype(target)
    if vindex is None:
        vindex = build_index(target)
    owner = _Owner(heap)
    n = owner.n
    idt = np.int32 if n < (1 << 31) else np.int64
    cdt = np.int16 if len(vindex.classes) < (1 << 15) - 1 else np.int32
    cls_all = np.full(n, -1, dtype=cdt)
    points, pclass, pprim = vindex.points, vindex.point_class, vindex.point_primary
    plo = int(points[0]) if len(points) else 0
    pspan = int(points[-1]) - plo if len(points) else 0
    hdr = np.uint64(2 * ps)
    skipped: List[Tuple[int, int, str]] = []

    # 1. one pass over the heap, in address order: references between in-use chunks (edge
    # rows counted per source: sources come out sorted, so the counts are the CSR's row
    # lengths and the destinations its columns), and the class of each chunk's first word
    heap_ranges = sorted(seg.scan_range(ps) for seg in heap.segments)
    heap_ranges = [(a - a % ps, b) for a, b in heap_ranges]
    heap_total = sum(b - a for a, b in heap_ranges)
    roots, excluded = root_ranges(target, maps, heap, stale_stacks_as_roots, stale_reason)
    root_total = sum(r.end - r.start for r in roots)
    prog = Progress("leaks", heap_total, progress_sink, phase="scanning the heap")
    counts = np.zeros(n + 1, dtype=np.int64 if heap.size.dtype == np.uint64 else np.int32)

    def scan(addr, data, sc):
        cnt = len(data) // ps
        if not cnt:
            return None
        w = np.frombuffer(data, dtype=dt, count=cnt)
        top = addr + cnt * ps
        # chunks whose user pointer (first word) is in this window
        u0, u1 = np.searchsorted(heap.addr, np.array([addr, top], dtype=np.uint64) - hdr)
        cls = None
        if u1 > u0 and len(points):
            fw = w[((heap.addr[u0:u1] + hdr - np.uint64(addr)) // np.uint64(ps)).astype(np.int64)]
            fw = fw.astype(np.uint64, copy=False)
            sel = np.flatnonzero((fw - np.uint64(plo)) <= np.uint64(pspan))
            if len(sel):
                v = fw[sel]
                i = np.searchsorted(points, v)
                i[i >= len(points)] = len(points) - 1
                ok = (points[i] == v) & pprim[i]
                cls = (int(u0), sel[ok], pclass[i[ok]])
        pos = owner.prefilter(w)
        if not len(pos):
            return cls, None
        dst = owner(w[pos])
        ok = dst >= 0
        pos, dst = pos[ok], dst[ok]
        # sources: only the chunks overlapping this window
        k0, k1 = np.searchsorted(heap.addr, np.array([addr, top], dtype=np.uint64))
        src = owner(np.uint64(addr) + pos.astype(np.uint64) * np.uint64(ps), max(int(k0) - 1, 0), int(k1))
        ok = (src >= 0) & (src != dst)
        if not ok.any():
            return cls, None
        src, dst = src[ok], dst[ok].astype(idt)
        s0 = int(src[0])
        return cls, (s0, np.bincount(src - s0), dst)

    nedges = 0
    trim_malloc()
    with _Edges(edge_budget(n), idt) as edges:
        for k, (_a, _n, r) in enumerate(map_chunks(target, heap_ranges, CHUNK, scan, _Scan, prog, skipped)):
            if k % 64 == 63:
                trim_malloc()
            if r is None:
                continue
            cls, e = r
            if cls is not None:
                u0, sel, c = cls
                cls_all[u0 + sel] = c
            if e is not None:
                s0, cnt, dst = e
                counts[s0 + 1:s0 + 1 + len(cnt)] += cnt.astype(counts.dtype, copy=False)
                edges.append(dst)
        nedges = edges.n
        # CSR row starts, in place when they fit int32
        if counts.dtype == np.int32 and nedges >= (1 << 31):
            counts = counts.astype(np.int64)
        indptr = np.cumsum(counts, out=counts)
        del counts
        indices = edges.array()
        spilled = edges.spilled

        # 2. roots: registers, live stacks, writable non-heap memory
        prog.phase("scanning roots", root_total)
        seeds = []
        regs = []
        for t in target.threads():
            regs.extend(v for v in t.regs.values() if isinstance(v, int) and owner.lo <= v < owner.hi)
        if regs:
            o = owner(np.array(regs, dtype=np.uint64))
            seeds.append(o[o >= 0])

        def root_scan(addr, data, sc):
            cnt = len(data) // ps
            if not cnt:
                return None
            w = np.frombuffer(data, dtype=dt, count=cnt)
            pos = owner.prefilter(w)
            if not len(pos):
                return None
            o = owner(w[pos])
            return o[o >= 0]

        for _a, _n, o in map_chunks(target, [(r.start, r.end) for r in roots], CHUNK, root_scan, _Scan, prog,
                                    skipped):
            if o is not None and len(o):
                seeds.append(o)

        # 3. marking, then memcheck's direct/indirect split
        trim_malloc()
        prog.phase("marking", max(1, 2 * nedges), unit="references")

        last_trim = [0]

        def tick(k):
            prog.advance(k)
            last_trim[0] += k
            if last_trim[0] >= 4 * BATCH:      # every few batches: let go of what they freed
                last_trim[0] = 0
                edges.release()
                trim_malloc()
        reached = np.zeros(n, dtype=bool)
        if seeds:
            mark(reached, np.concatenate(seeds).astype(np.int64), indptr, indices, tick=tick)
        del seeds
        leaked = np.equal(heap.free, 0)
        leaked &= ~reached
        direct = split_direct(leaked, indptr, indices, tick=tick)
        del leaked, indptr, indices
    prog.finish()
    trim_malloc()

    # 4. in-use chunks only, as callers know them
    inuse = _nonzero32(heap.free == 0)
    reached_u = reached[inuse]
    del reached
    direct_u = direct[inuse]
    del direct
    cls_u = cls_all[inuse]
    del cls_all
    return LeakResult(heap, inuse, reached_u, direct_u, cls_u, roots, excluded, skipped,
                      root_total, heap_total, nedges, spilled, vindex)


