"""Count C++ objects per class in address ranges: stream memory in chunks, prefilter words by the
address windows that hold vtables, then searchsorted against the sorted address points."""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from . import native
from .heap import Heap
from .memory.stream import map_chunks
from .progress import Progress
from .memory.target import Target
from .vtables import VtableIndex

CHUNK = 1 << 20   # fits in L2 with the prefilter's scratch


@dataclass
class ClassCount:
    cls: int
    count: int = 0
    secondary: int = 0
    embedded: int = 0
    examples: List[int] = field(default_factory=list)
    sizes: Dict[int, int] = field(default_factory=dict)   # chunk usable size -> allocations

    @property
    def size(self) -> Optional[int]:
        return max(self.sizes.items(), key=lambda kv: kv[1])[0] if self.sizes else None


@dataclass
class CensusResult:
    ranges: List[Tuple[int, int]]
    scanned_bytes: int
    skipped: List[Tuple[int, int, str]]
    counts: Dict[int, ClassCount]
    point_hits: np.ndarray            # raw hits per address point
    at_chunk_start: bool
    seconds: float = 0.0


def _dtype(target: Target):
    return np.dtype(("<" if target.byteorder == "little" else ">") + ("u8" if target.pointer_size == 8 else "u4"))


# mappings whose addresses are data: a prefilter window must not stretch over them, or pointers
# into them (most words of a heap) would pass the prefilter
_DATA_KINDS = ("main-heap", "arena-heap", "stack", "thread-stack", "shm")
_SMALL_ANON = 1 << 20


def prefilter_windows(windows: List[Tuple[int, int]], maps=None) -> List[Tuple[int, int]]:
    """Merge the index's clusters of address points into as few [lo, hi] windows as possible: two
    clusters merge when no data mapping (heap, arena, stack, big anonymous memory) lies between
    them, so the gap holds only module images and few words of data point there."""
    if not maps or len(windows) < 2:
        return list(windows)
    data = sorted((m.start, m.end) for m in maps
                  if m.kind in _DATA_KINDS or (m.kind == "anon" and m.end - m.start > _SMALL_ANON))
    starts = [a for a, _ in data]
    out = [windows[0]]
    for lo, hi in windows[1:]:
        gap_lo, gap_hi = out[-1][1] + 1, lo
        j = bisect.bisect_left(starts, gap_hi)   # data mappings starting before the gap's end
        blocked = j > 0 and max(e for _, e in data[:j]) > gap_lo
        if blocked:
            out.append((lo, hi))
        else:
            out[-1] = (out[-1][0], hi)
    return out


_KEY_SHIFT = 20      # 1 MiB blocks: the index clusters address points with gaps of at most this
_COST_RANGE, _COST_SHIFT, _COST_KEY = 7.0, 3.7, 2.0   # measured ms per 64 MiB: sub+le, shift, equal


class _Prefilter:
    """Positions of the words inside any window, computed in preallocated buffers.  A window is
    tested either as a range (subtract, compare: two passes) or, when it covers few 1 MiB
    blocks, as equality of the word's block number with each block (one shift shared by all
    such windows, then one pass per block): whichever plan costs fewest passes."""

    def __init__(self, windows, dt, n):
        windows = sorted(windows, key=lambda w: (w[1] >> _KEY_SHIFT) - (w[0] >> _KEY_SHIFT))
        best, best_j = len(windows) * _COST_RANGE, 0
        nkeys = 0
        for j, (lo, hi) in enumerate(windows, 1):
            nkeys += (hi >> _KEY_SHIFT) - (lo >> _KEY_SHIFT) + 1
            cost = _COST_SHIFT + nkeys * _COST_KEY + (len(windows) - j) * _COST_RANGE
            if cost < best:
                best, best_j = cost, j
        t = np.dtype(dt).type
        self.keys = [t(k) for lo, hi in windows[:best_j]
                     for k in range(lo >> _KEY_SHIFT, (hi >> _KEY_SHIFT) + 1)]
        self.ranges = [(t(lo), t(hi - lo)) for lo, hi in windows[best_j:]]
        self.shift = t(_KEY_SHIFT)
        self.tmp = np.empty(n, dtype=dt)
        self.mask = np.empty(n, dtype=bool)
        self.mask2 = np.empty(n, dtype=bool)

    def __call__(self, w):
        n = len(w)
        if not self.keys and not self.ranges:
            return np.zeros(0, dtype=np.intp)
        tmp, mask, m2 = self.tmp[:n], self.mask[:n], self.mask2[:n]
        first = True
        if self.keys:
            np.right_shift(w, self.shift, out=tmp)
            for key in self.keys:
                np.equal(tmp, key, out=mask if first else m2)
                if not first:
                    np.bitwise_or(mask, m2, out=mask)
                first = False
        for lo, span in self.ranges:
            np.subtract(w, lo, out=tmp)             # unsigned wraparound: one compare per window
            np.less_equal(tmp, span, out=mask if first else m2)
            if not first:
                np.bitwise_or(mask, m2, out=mask)
            first = False
        return np.flatnonzero(mask)


def census(target: Target, index: VtableIndex, ranges: List[Tuple[int, int]], heap: Optional[Heap] = None,
           examples: int = 0, progress: Optional[Progress] = None, maps=None) -> CensusResult:
    """``heap`` given: count only vptrs at an in-use chunk's user start; others in in-use chunks
    (and outside the heap) are 'embedded'; hits inside free chunks are ignored.

    Two paths with the same results: the compiled kernel (core/native: one pass per chunk over
    the words, a hashed block bitset then a hash table of the address points; hits counted per
    scan thread, or their positions returned when needed) and numpy (prefilter + searchsorted)."""
    ps = target.pointer_size
    dt = _dtype(target)
    npts = len(index.points)
    hits = np.zeros(npts, dtype=np.int64)
    starts = np.zeros(npts, dtype=np.int64)     # live hits at an in-use chunk's user start
    counts: Dict[int, ClassCount] = {}
    sizes: Dict[Tuple[int, int], int] = {}      # (class, usable size) -> allocations
    skipped: List[Tuple[int, int, str]] = []
    scanned = 0
    need_pos = heap is not None or examples > 0
    kernel = native.lib() if npts else None
    point_class, point_primary = index.point_class, index.point_primary
    windows = prefilter_windows(index.windows, maps)
    if kernel is not None:
        table = native.PointsTable(index.points, windows)
        swap = native.host_swap(target.byteorder)
    else:
        pts = index.points.astype(dt) if npts else index.points
    if heap is not None:
        c_addr = np.ascontiguousarray(heap.addr, dtype=np.uint64)
        c_size = np.ascontiguousarray(heap.size, dtype=np.uint64)
        if kernel is not None:
            c_free = np.ascontiguousarray(heap.free, dtype=np.int8)
        else:
            c_inuse = heap.inuse
            c_user = c_addr + np.uint64(2 * ps)
    scratches: list = []
    # the kernel does the whole census at chunk start (no example addresses wanted)
    tally = kernel is not None and heap is not None and not examples
    if tally:
        primary_u8 = np.ascontiguousarray(point_primary, dtype=np.uint8)

    class Scratch:
        def __init__(self):
            self.buf = bytearray(CHUNK)
            if tally:
                self.tally = native.HeapTally(table, primary_u8, c_addr, c_size, c_free, 2 * ps, CHUNK // ps)
            elif kernel is not None:
                self.counts = None if need_pos else np.zeros(npts, dtype=np.int64)
                self.pos = np.empty(CHUNK // ps, dtype=np.int32) if need_pos else None
                self.idx = np.empty(CHUNK // ps, dtype=np.int32) if need_pos else None
            else:
                self.prefilter = _Prefilter(windows, dt, CHUNK // ps)
            scratches.append(self)

    def find(data, n, sc):
        """(word positions, point indices) of the address points among the n words of data;
        with the kernel and no positions needed, only counted into sc.counts: (None, None)."""
        if kernel is not None:
            ptr = np.frombuffer(data, dtype=np.uint8, count=n * ps).ctypes.data
            if not need_pos:
                table.scan(ptr, n, ps, swap, sc.counts)
                return None, None
            k = table.scan(ptr, n, ps, swap, None, sc.pos, sc.idx)
            return sc.pos[:k].astype(np.uint64), sc.idx[:k].astype(np.intp)
        w = np.frombuffer(data, dtype=dt, count=n)
        pos = sc.prefilter(w)
        if not len(pos):
            return None, None
        cand = w[pos]
        idx = np.searchsorted(pts, cand)
        idx[idx >= npts] = npts - 1
        ok = pts[idx] == cand
        return pos[ok].astype(np.uint64), idx[ok]

    def owners(where):
        """What each hit is in the heap: 0 outside every chunk, 1 at an in-use chunk's user start,
        2 elsewhere in an in-use chunk, 3 in a free chunk; and the chunk's index (-1: none)."""
        if not len(c_addr):
            return np.full(len(where), -1, dtype=np.int64), np.zeros(len(where), dtype=np.uint8)
        if kernel is not None:
            return native.owners(where, c_addr, c_size, c_free, 2 * ps)
        j = np.searchsorted(c_addr, where, side="right") - 1
        jj = np.clip(j, 0, None)
        inside = (j >= 0) & (where < c_addr[jj] + c_size[jj])
        what = np.where(~inside, 0, np.where(~c_inuse[jj], 3, np.where(where == c_user[jj], 1, 2))).astype(np.uint8)
        return np.where(inside, jj, -1), what

    def match(addr, data, sc):
        """Runs in the scan threads: (words, None) or (words, (live hits' point indices, those at
        a chunk start, (class, usable size) keys of primary ones there, addresses, example picks))."""
        n = len(data) // ps
        if n == 0 or not npts:
            return n, None
        if tally:
            sc.tally.scan(np.frombuffer(data, dtype=np.uint8, count=n * ps).ctypes.data, n, addr, ps, swap)
            return n, None
        pos, idx = find(data, n, sc)
        if idx is None or not len(idx):
            return n, None
        where = np.uint64(addr) + pos * np.uint64(ps)
        prim = point_primary[idx]
        if heap is None:
            return n, (idx, None, None, where, np.flatnonzero(prim) if examples else None)
        owner, what = owners(where)
        live = what != 3
        if not live.all():
            idx, where, prim, owner, what = idx[live], where[live], prim[live], owner[live], what[live]
        at = what == 1
        sel = prim & at
        keys = (point_class[idx[sel]].astype(np.int64) << 40) | (c_size[owner[sel]].astype(np.int64) - ps)
        return n, (idx, idx[at], keys, where, np.flatnonzero(sel) if examples else None)

    pending: List[np.ndarray] = []
    pending_starts: List[np.ndarray] = []
    pending_keys: List[np.ndarray] = []
    n_pending = 0

    def flush():
        nonlocal hits, starts, n_pending
        if pending:
            hits += np.bincount(np.concatenate(pending), minlength=npts)
        if pending_starts:
            starts += np.bincount(np.concatenate(pending_starts), minlength=npts)
        if pending_keys:
            for key, n_k in zip(*np.unique(np.concatenate(pending_keys), return_counts=True)):
                k2 = (int(key) >> 40, int(key) & ((1 << 40) - 1))
                sizes[k2] = sizes.get(k2, 0) + int(n_k)
        del pending[:], pending_starts[:], pending_keys[:]
        n_pending = 0

    aligned = [(s - s % ps, e) for s, e in ranges]
    for addr, _nbytes, (n, r) in map_chunks(target, aligned, CHUNK, match, Scratch, progress, skipped):
        scanned += n * ps
        if r is None:
            continue
        idx, at_idx, keys, where, sel = r
        pending.append(idx)     # hits: bincount in batches (minlength=npts on every chunk costs)
        n_pending += len(idx)
        if heap is not None:
            pending_starts.append(at_idx)
            pending_keys.append(keys)
        if n_pending >= 1 << 20:
            flush()
        if examples and len(sel):
            cls_of = point_class[idx[sel]]
            for cls_id in np.unique(cls_of):
                c = counts.setdefault(int(cls_id), ClassCount(int(cls_id)))
                need = examples - len(c.examples)
                if need > 0:
                    c.examples.extend(int(a) for a in where[sel[cls_of == cls_id][:need]])
    flush()
    if kernel is not None and not need_pos:
        for sc in scratches:
            hits += sc.counts
    if tally:
        for sc in scratches:
            hits += sc.tally.hits
            starts += sc.tally.starts
            for key, n_k in zip(*sc.tally.pairs()):
                k2 = (int(point_class[int(key) >> 40]), (int(key) & ((1 << 40) - 1)) - ps)
                sizes[k2] = sizes.get(k2, 0) + int(n_k)
    found: Dict[int, ClassCount] = {}
    for p in np.flatnonzero(hits):
        cls_id = int(point_class[p])
        c = found.get(cls_id) or counts.get(cls_id) or ClassCount(cls_id)
        found[cls_id] = c
        if heap is None:
            if point_primary[p]:
                c.count += int(hits[p])
            else:
                c.secondary += int(hits[p])
        elif point_primary[p]:
            c.count += int(starts[p])
            c.embedded += int(hits[p] - starts[p])
        else:
            c.secondary += int(hits[p])
    for (cls_id, sz), n_k in sorted(sizes.items()):
        found[cls_id].sizes[sz] = n_k
    counts = {k: found[k] for k in sorted(found)}
    return CensusResult(ranges, scanned, skipped, counts, hits, heap is not None)
