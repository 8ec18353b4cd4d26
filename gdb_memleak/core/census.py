"""Count C++ objects per class in address ranges: stream memory in chunks, prefilter words by the
address windows that hold vtables, then searchsorted against the sorted address points."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from .heap import Heap
from .progress import Progress, iter_chunks
from .target import Target
from .vtables import VtableIndex

CHUNK = 2 << 20


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


def census(target: Target, index: VtableIndex, ranges: List[Tuple[int, int]], heap: Optional[Heap] = None,
           examples: int = 0, progress: Optional[Progress] = None) -> CensusResult:
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
    windows = [(np.asarray(lo, dtype=dt), np.asarray(hi - lo, dtype=dt)) for lo, hi in index.windows]
    need_pos = heap is not None or examples > 0
    if heap is not None:
        c_addr, c_size = heap.addr, heap.size
        c_user = heap.user
        c_inuse = heap.inuse
    for start, end in ranges:
        start -= start % ps
        for addr, data in iter_chunks(target, start, end, CHUNK, progress, skipped):
            n = len(data) // ps
            if n == 0:
                continue
            w = np.frombuffer(data, dtype=dt, count=n)
            scanned += n * ps
            if not npts:
                continue
            mask = None
            for lo, span in windows:
                m = (w - lo) <= span        # unsigned wraparound: one compare per window
                mask = m if mask is None else (mask | m)
            pos = np.flatnonzero(mask)
            if not len(pos):
                continue
            cand = w[pos]
            idx = np.searchsorted(pts, cand)
            idx[idx >= npts] = npts - 1
            ok = pts[idx] == cand
            if not ok.any():
                continue
            idx = idx[ok]
            if not need_pos:
                hits += np.bincount(idx, minlength=npts)
                continue
            where = np.uint64(addr) + pos[ok].astype(np.uint64) * np.uint64(ps)
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
            hits += np.bincount(idx, minlength=npts)
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
    if heap is None:
        for p in np.flatnonzero(hits):
            cls_id = int(index.point_class[p])
            c = counts.setdefault(cls_id, ClassCount(cls_id))
            if index.point_primary[p]:
                c.count += int(hits[p])
            else:
                c.secondary += int(hits[p])
    return CensusResult(ranges, scanned, skipped, counts, hits, heap is not None)
