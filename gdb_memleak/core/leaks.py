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
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from .heap import Heap
from .maps import Mapping, mapping_at
from .memory.stream import iter_chunks
from .progress import Progress
from .memory.target import Target

CHUNK = 4 << 20
WIDE = 256                   # frontier size from which a marking step runs vectorised


@dataclass
class RootRange:
    start: int
    end: int
    what: str


@dataclass
class LeakResult:
    heap: Heap
    index: np.ndarray            # in-use chunk indices into heap arrays (sorted by address)
    reached: np.ndarray          # bool per in-use chunk
    direct: np.ndarray           # bool per in-use chunk: leaked and direct
    first_word: np.ndarray       # first user word of each in-use chunk (uint64)
    roots: List[RootRange]
    excluded: List[Tuple[int, int, str]]
    skipped: List[Tuple[int, int, str]]
    root_bytes: int = 0
    heap_bytes: int = 0
    edges: int = 0

    @property
    def leaked(self) -> np.ndarray:
        return ~self.reached

    def leaked_index(self) -> np.ndarray:
        return self.index[~self.reached]


class _Owner:
    """Vectorised 'which in-use chunk's usable area holds this address'.  The usable area runs
    from the user pointer through the next chunk's prev_size word (malloc_usable_size =
    chunksize - SIZE_SZ; an mmapped chunk's ends with the chunk)."""

    def __init__(self, user: np.ndarray, end: np.ndarray):
        self.user = user
        self.end = end
        self.n = len(user)
        self.lo = int(user[0]) if self.n else 0
        self.hi = int(end.max()) if self.n else 0

    def __call__(self, v: np.ndarray, k0: int = 0, k1: Optional[int] = None) -> np.ndarray:
        """Owner index of each value (-1: none); ``k0:k1`` limits the search to those chunks."""
        if not self.n:
            return np.full(len(v), -1, dtype=np.int64)
        v = v.astype(np.uint64, copy=False)
        k1 = self.n if k1 is None else k1
        hay = self.user[k0:k1]
        if len(v) > 4096 and len(hay) > 65536:
            # sorted needles walk the haystack in order: 5-10x faster than random probes
            order = np.argsort(v)
            i = np.empty(len(v), dtype=np.int64)
            i[order] = np.searchsorted(hay, v[order], side="right")
        else:
            i = np.searchsorted(hay, v, side="right").astype(np.int64)
        i += k0 - 1
        j = np.clip(i, 0, None)
        ok = (i >= k0) & (v < self.end[j])
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


def _expand(frontier: np.ndarray, indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """All successors of the frontier nodes (with repeats)."""
    starts = indptr[frontier]
    counts = indptr[frontier + 1] - starts
    total = int(counts.sum())
    if not total:
        return np.zeros(0, dtype=indices.dtype)
    offs = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(total)
    return indices[offs]


def _fresh(vals: np.ndarray, seen: np.ndarray, stamp: np.ndarray) -> np.ndarray:
    """The distinct values of ``vals`` not yet ``seen``, which are then marked seen.  Dedupes
    with a scatter/gather through ``stamp`` (np.unique would sort or hash: much slower)."""
    vals = vals[~seen[vals]]
    if len(vals) > 1:
        pos = np.arange(len(vals), dtype=np.int64)
        stamp[vals] = pos
        vals = vals[stamp[vals] == pos]
    seen[vals] = True
    return vals


def mark(seen: np.ndarray, seeds: np.ndarray, indptr: np.ndarray, indices: np.ndarray,
         allowed: Optional[np.ndarray] = None) -> None:
    """Set ``seen`` for everything reachable from ``seeds`` (seeds included).  Wide frontiers
    step with numpy; narrow ones (linked lists) with a plain loop over memoryviews."""
    stamp = np.empty(len(seen), dtype=np.int64)
    if allowed is not None:
        seeds = seeds[allowed[seeds]]
    frontier = _fresh(seeds, seen, stamp)
    ip = memoryview(indptr)
    ix = memoryview(indices)
    sv = memoryview(seen.view(np.uint8))
    av = memoryview(allowed.view(np.uint8)) if allowed is not None else None
    while len(frontier):
        if len(frontier) >= WIDE:
            nxt = _expand(frontier, indptr, indices)
            if allowed is not None:
                nxt = nxt[allowed[nxt]]
            frontier = _fresh(nxt, seen, stamp)
            continue
        stack = frontier.tolist()
        steps = 0
        while stack and len(stack) < 4 * WIDE and steps < 200000:
            f = stack.pop()
            steps += 1
            k0, k1 = ip[f], ip[f + 1]
            if k1 - k0 > WIDE:
                # one node with many references (a big pointer array): take them with numpy
                d = indices[k0:k1]
                if allowed is not None:
                    d = d[allowed[d]]
                stack.extend(_fresh(d, seen, stamp).tolist())
                continue
            for k in range(k0, k1):
                d = ix[k]
                if not sv[d] and (av is None or av[d]):
                    sv[d] = 1
                    stack.append(d)
        frontier = np.array(stack, dtype=np.int64)


def split_direct(leaked: np.ndarray, indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Direct leaks among ``leaked`` (bool per node), per memcheck's cliques (see module doc)."""
    n = len(leaked)
    direct = np.zeros(n, dtype=bool)
    lk = np.flatnonzero(leaked)
    if not len(lk):
        return direct
    # in-degree from other leaked chunks (self edges were never recorded)
    succ = _expand(lk, indptr, indices)
    succ = succ[leaked[succ]]
    indeg = np.bincount(succ, minlength=n)
    roots = lk[indeg[lk] == 0]
    direct[roots] = True
    covered = np.zeros(n, dtype=bool)
    mark(covered, roots, indptr, indices, allowed=leaked)
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


def find_leaks(target: Target, maps: List[Mapping], heap: Heap, stale_stacks_as_roots: bool = False,
               progress_sink=None, stale_reason=None) -> LeakResult:
    ps = target.pointer_size
    dt = _dtype(target)
    inuse = np.flatnonzero(heap.inuse)
    owner = _Owner(heap.user[inuse], heap.usable_end[inuse])
    n = owner.n
    first_word = np.zeros(n, dtype=np.uint64)
    skipped: List[Tuple[int, int, str]] = []

    # 1. one pass over the heap, in address order: references between in-use chunks, and each
    # chunk's first word.  Sources come out sorted, so the edge lists are already a CSR.
    heap_ranges = sorted(seg.scan_range(ps) for seg in heap.segments)
    heap_total = sum(b - a for a, b in heap_ranges)
    roots, excluded = root_ranges(target, maps, heap, stale_stacks_as_roots, stale_reason)
    root_total = sum(r.end - r.start for r in roots)
    prog = Progress("leaks", heap_total + root_total, progress_sink)
    idt = np.int32 if n < (1 << 31) else np.int64
    srcs, dsts = [], []
    for a, b in heap_ranges:
        a -= a % ps
        for addr, data in iter_chunks(target, a, b, CHUNK, prog, skipped):
            cnt = len(data) // ps
            if not cnt:
                continue
            w = np.frombuffer(data, dtype=dt, count=cnt)
            top = addr + cnt * ps
            k0, k1 = np.searchsorted(owner.user, np.array([addr, top], dtype=np.uint64))
            if k1 > k0:
                first_word[k0:k1] = w[((owner.user[k0:k1] - np.uint64(addr)) // np.uint64(ps)).astype(np.int64)]
            pos = owner.prefilter(w)
            if not len(pos):
                continue
            dst = owner(w[pos])
            ok = dst >= 0
            pos, dst = pos[ok], dst[ok]
            # sources: only the chunks overlapping this window
            src = owner(np.uint64(addr) + pos.astype(np.uint64) * np.uint64(ps), max(int(k0) - 1, 0), int(k1))
            ok = (src >= 0) & (src != dst)
            if ok.any():
                srcs.append(src[ok].astype(idt))
                dsts.append(dst[ok].astype(idt))
    src = np.concatenate(srcs) if srcs else np.zeros(0, dtype=idt)
    indices = np.concatenate(dsts) if dsts else np.zeros(0, dtype=idt)
    del srcs, dsts
    indptr = np.searchsorted(src, np.arange(n + 1, dtype=idt)).astype(np.int64)
    nedges = len(src)
    del src

    # 2. roots: registers, live stacks, writable non-heap memory
    seeds = []
    regs = []
    for t in target.threads():
        regs.extend(v for v in t.regs.values() if isinstance(v, int) and 0 <= v < (1 << (8 * ps)))
    if regs:
        o = owner(np.array(regs, dtype=np.uint64))
        seeds.append(o[o >= 0])
    for r in roots:
        for addr, data in iter_chunks(target, r.start, r.end, CHUNK, prog, skipped):
            cnt = len(data) // ps
            if not cnt:
                continue
            w = np.frombuffer(data, dtype=dt, count=cnt)
            pos = owner.prefilter(w)
            if len(pos):
                o = owner(w[pos])
                seeds.append(o[o >= 0])
    prog.finish()
    reached = np.zeros(n, dtype=bool)
    if seeds:
        mark(reached, np.concatenate(seeds).astype(np.int64), indptr, indices)
    direct = split_direct(~reached, indptr, indices)
    return LeakResult(heap, inuse, reached, direct, first_word, roots, excluded, skipped,
                      root_total, heap_total, nedges)
