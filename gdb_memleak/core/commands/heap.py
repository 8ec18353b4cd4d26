"""memleak heap: glibc arenas and their heaps, in-use/free chunks, size histogram, fragmentation,
and where every byte of writable anonymous memory went."""
from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np

from .base import Command, add_json_argument
from ..heap import FREE_BITS, FREE_FAST, FREE_TCACHE, FREE_UNKNOWN, require_heap
from ..maps import classify
from ..render import table, write_json
from ..textparse import human_size

SIZE_CLASSES = [32, 64, 128, 256, 512, 1024, 4096, 16384, 65536, 131072, 1 << 20, 1 << 62]
ACCOUNT_ROWS = (("main_heap", "main heap"), ("arena_heaps", "arena heaps"), ("mmapped_chunks", "mmapped chunks"),
                ("thread_stacks", "thread stacks"), ("other", "other (module .bss, static TLS)"),
                ("unexplained", "unexplained"))


def _histogram(sizes: np.ndarray):
    edges = np.array(SIZE_CLASSES, dtype=np.uint64)
    idx = np.searchsorted(edges, sizes, side="left")
    out = []
    lo = 0
    for i, hi in enumerate(SIZE_CLASSES):
        sel = idx == i
        n = int(sel.sum())
        if n:
            out.append({"min": lo + 1 if lo else 0, "max": hi if hi < (1 << 62) else None,
                        "chunks": n, "bytes": int(sizes[sel].sum())})
        lo = hi
    return out


def _counts(sizes, free, state):
    sel = free == state
    return int(sel.sum()), int(sizes[sel].sum())


def arena_summaries(heap):
    """One dict per arena (and per shape-found heap without one): its heaps and chunk counts."""
    groups = OrderedDict()
    for seg in heap.segments:
        if seg.kind == "mmapped":
            continue
        key = seg.arena if seg.arena is not None else ("shape", seg.start)
        groups.setdefault(key, []).append(seg)
    arenas = {a.address: a for a in (heap.model.arenas if heap.model else [])}
    out = []
    for key, segs in groups.items():
        ar = arenas.get(key)
        parts = []
        for seg in segs:
            k0, k1 = np.searchsorted(heap.addr, np.array([seg.first, seg.end], dtype=np.uint64))
            parts.append((heap.size[k0:k1], heap.free[k0:k1]))
        sizes = np.concatenate([p[0] for p in parts])
        free = np.concatenate([p[1] for p in parts])
        d = {"address": hex(key) if ar else None, "kind": segs[0].kind,
             "system_mem": ar.system_mem if ar else None,
             "top": hex(ar.top) if ar else (hex(segs[-1].top) if segs[-1].top else None),
             "top_size": ar.top_size if ar else segs[-1].top_size,
             "heaps": [{"start": hex(s.start), "end": hex(s.end), "size": s.end - s.start,
                        "first_chunk": hex(s.first), "heap_info": hex(s.heap_info) if s.heap_info else None,
                        "walked_to": hex(s.walked_to) if s.walked_to is not None else None} for s in segs]}
        d["in_use_chunks"], d["in_use_bytes"] = _counts(sizes, free, 0)
        d["tcache_chunks"], d["tcache_bytes"] = _counts(sizes, free, FREE_TCACHE)
        d["fastbin_chunks"], d["fastbin_bytes"] = _counts(sizes, free, FREE_FAST)
        d["bin_chunks"], d["bin_bytes"] = _counts(sizes, free, FREE_BITS)
        d["unknown_chunks"], d["unknown_bytes"] = _counts(sizes, free, FREE_UNKNOWN)
        d["free_chunks"] = d["tcache_chunks"] + d["fastbin_chunks"] + d["bin_chunks"]
        d["free_bytes"] = d["tcache_bytes"] + d["fastbin_bytes"] + d["bin_bytes"]
        span = sum(s.end - s.start for s in segs)
        d["size"] = span
        d["fragmentation"] = round(d["free_bytes"] / span, 4) if span else 0.0
        out.append(d)
    return out


class HeapCommand(Command):
    name = "heap"
    summary = "Walk glibc's heap (no libc debug info): arenas, heaps, in-use/free chunks, where the memory went."

    def add_arguments(self, p):
        p.add_argument("--histogram", action="store_true", help="also print the in-use size histogram")
        add_json_argument(p)

    def run(self, ctx, args):
        t = ctx.target
        t0 = time.monotonic()
        heap = require_heap(t, classify(t), ctx.progress_sink())
        model = heap.model
        arenas = arena_summaries(heap)
        rows = []
        for d in arenas:
            rows.append([d["kind"], d["address"] or "(by shape)", len(d["heaps"]), human_size(d["size"]),
                         d["in_use_chunks"], human_size(d["in_use_bytes"]),
                         "%d (%d tcache, %d fast)" % (d["free_chunks"], d["tcache_chunks"], d["fastbin_chunks"]),
                         human_size(d["free_bytes"]), human_size(d["top_size"]), "%.1f%%" % (100 * d["fragmentation"])])
        mm = heap.mmapped if heap.mmapped is not None else np.zeros(len(heap.addr), dtype=bool)
        mmapped = {"chunks": int(mm.sum()), "bytes": int(heap.size[mm].sum()),
                   "mapped_bytes": sum(s.end - s.start for s in heap.segments if s.kind == "mmapped"),
                   "n_mmaps": model.mp.n_mmaps if model and model.mp else None,
                   "mmapped_mem": model.mp.mmapped_mem if model and model.mp else None}
        w = ctx.write
        w(table(rows, ["arena", "malloc_state", "heaps", "size", "in use", "in-use bytes", "free chunks",
                       "free bytes", "top", "frag"]) + "\n")
        used = heap.inuse
        unknown = heap.free == FREE_UNKNOWN
        w("total: %d chunks in use (%s), %d free (%s)%s; %d mmapped chunk%s (%s)\n" % (
            int(used.sum()), human_size(int(heap.size[used].sum())), int((~used & ~unknown).sum()),
            human_size(int(heap.size[~used & ~unknown].sum())),
            ", %d of unknown state" % int(unknown.sum()) if unknown.any() else "",
            mmapped["chunks"], "" if mmapped["chunks"] == 1 else "s", human_size(mmapped["bytes"])))
        w("found by: %s; %d arena%s, %d thread tcache%s\n" % (
            heap.how, len(arenas), "" if len(arenas) == 1 else "s", len(model.tcaches) if model else 0,
            "" if model and len(model.tcaches) == 1 else "s"))
        acc = heap.accounting or {}
        if acc:
            w("\nwritable anonymous memory: %s\n" % human_size(acc["total"]))
            w(table([[label, human_size(acc[key])] for key, label in ACCOUNT_ROWS], ["where", "bytes"]) + "\n")
            if acc.get("heap_not_walked"):
                w("heap bytes no walk went through (see the findings): %s\n" % human_size(acc["heap_not_walked"]))
        hist = _histogram(heap.size[used & ~mm])
        if args.histogram:
            w("\n" + table([["%s-%s" % (human_size(h["min"]), human_size(h["max"]) if h["max"] else "…"),
                             h["chunks"], human_size(h["bytes"])] for h in hist],
                           ["chunk size", "in use", "bytes"]) + "\n")
        for f in heap.findings:
            w("finding: %s\n" % f.text())
        if args.json:
            tcaches = []
            for tc in (model.tcaches if model else []):
                tcaches.append({"lwp": tc.lwp, "thread_pointer": hex(tc.thread_pointer),
                                "address": hex(tc.table) if tc.table else None})
            for d in tcaches:
                d["chunks"], d["bytes"] = heap.tcache_counts.get(int(d["address"], 16) if d["address"] else 0, (0, 0))
            accj = dict(acc)
            accj["unexplained_regions"] = [{"start": hex(a), "end": hex(b), "size": b - a}
                                           for a, b in acc.get("unexplained_regions", [])]
            write_json(args.json, {"target": t.describe(), "discovery": heap.how,
                                   "main_arena": hex(model.main_arena) if model and model.main_arena else None,
                                   "arenas": arenas, "mmapped": mmapped, "tcaches": tcaches,
                                   "mp": model.mp.to_json() if model and model.mp else None,
                                   "tls_offset": model.tls_offset if model else None,
                                   "accounting": accj, "histogram": hist,
                                   "findings": [f.to_json() for f in heap.findings],
                                   "seconds": round(time.monotonic() - t0, 3)})
