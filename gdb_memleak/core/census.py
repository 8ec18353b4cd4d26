"""Count C++ objects per class in address ranges: stream memory in chunks, prefilter words by the
address windows that hold vtables, then searchsorted against the sorted address points."""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

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
    (and outside the heap) are 'embedded'; hits inside free chunks are ignored."""
    ps = target.pointer_size
    dt = _dtype(target)
    pts = index.points.astype(dt) if len(index.points) else index.points
    npts = len(pts)
    hits = np.zeros(npts, dtype=np.int64)
    counts: Dict[int, ClassCount] = {}
    skipped: List[Tuple[int, int, str]] = []
    scanned = 0
    windows = prefilter_windows(index.windows, maps)
    need_pos = heap is not None or examples > 0
    if heap is not None:
        c_addr, c_size = heap.addr, heap.size
        c_user = heap.user
        c_inuse = heap.inuse

    class Scratch:
        def __init__(self):
            self.buf = bytearray(CHUNK)
            self.prefilter = _Prefilter(windows, dt, CHUNK // ps)

    def match(addr, data, sc):
        """(words, positions of address-point hits, their point indices): runs in worker threads."""
        n = len(data) // ps
        if n == 0 or not npts:
            return n, None, None
        w = np.frombuffer(data, dtype=dt, count=n)
        pos = sc.prefilter(w)
        if not len(pos):
            return n, None, None
        cand = w[pos]
        idx = np.searchsorted(pts, cand)
        idx[idx >= npts] = npts - 1
        ok = pts[idx] == cand
        return n, pos[ok], idx[ok]

    pending: List[np.ndarray] = []
    n_pending = 0
    aligned = [(s - s % ps, e) for s, e in ranges]
    for addr, _nbytes, (n, pos, idx) in map_chunks(target, aligned, CHUNK, match, Scratch, progress, skipped):
        scanned += n * ps
        if idx is None or not len(idx):
            continue
        if need_pos:
            where = np.uint64(addr) + pos.astype(np.uint64) * np.uint64(ps)
            if heap is not None and len(c_addr):
                j = np.searchsorted(c_addr, where, side="right") - 1
                jj = np.clip(j, 0, None)
                inside = (j >= 0) & (where < c_addr[jj] + c_size[jj])
                live = ~inside | c_inuse[jj]
                at_start = inside & c_inuse[jj] & (where == c_user[jj])
                idx, where, at_start, jj = idx[live], where[live], at_start[live], jj[live]
            else:
                at_start = np.zeros(len(idx), dtype=bool)
                jj = None
        pending.append(idx)     # hits: bincount in batches (minlength=npts on every chunk costs)
        n_pending += len(idx)
        if n_pending >= 1 << 20:
            hits += np.bincount(np.concatenate(pending), minlength=npts)
            pending, n_pending = [], 0
        if not need_pos:
            continue
        cls_of = index.point_class[idx]
        prim = index.point_primary[idx]
        if heap is not None:
            # usable chunk size per allocation, tallied per (class, size) in one np.unique
            sel = prim & at_start
            keys = (cls_of[sel].astype(np.int64) << 40) | (c_size[jj[sel]].astype(np.int64) - ps)
            for key, n_k in zip(*np.unique(keys, return_counts=True)):
                c = counts.setdefault(int(key) >> 40, ClassCount(int(key) >> 40))
                sz = int(key) & ((1 << 40) - 1)
                c.sizes[sz] = c.sizes.get(sz, 0) + int(n_k)
        if examples:
            sel = np.flatnonzero(prim & at_start) if heap is not None else np.flatnonzero(prim)
            for cls_id in np.unique(cls_of[sel]):
                c = counts.setdefault(int(cls_id), ClassCount(int(cls_id)))
                need = examples - len(c.examples)
                if need > 0:
                    c.examples.extend(int(a) for a in where[sel[cls_of[sel] == cls_id][:need]])
        if heap is not None:
            # at-start counts per class, embedded = primary elsewhere
            for cls_id, n_start in zip(*np.unique(cls_of[prim & at_start], return_counts=True)):
                counts.setdefault(int(cls_id), ClassCount(int(cls_id))).count += int(n_start)
            for cls_id, n_emb in zip(*np.unique(cls_of[prim & ~at_start], return_counts=True)):
                counts.setdefault(int(cls_id), ClassCount(int(cls_id))).embedded += int(n_emb)
            for cls_id, n_sec in zip(*np.unique(cls_of[~prim], return_counts=True)):
                counts.setdefault(int(cls_id), ClassCount(int(cls_id))).secondary += int(n_sec)
    if pending:
        hits += np.bincount(np.concatenate(pending), minlength=npts)
    if heap is None:
        for p in np.flatnonzero(hits):
            cls_id = int(index.point_class[p])
            c = counts.setdefault(cls_id, ClassCount(cls_id))
            if index.point_primary[p]:
                c.count += int(hits[p])
            else:
                c.secondary += int(hits[p])
    return CensusResult(ranges, scanned, skipped, counts, hits, heap is not None)
