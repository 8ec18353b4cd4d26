"""memleak heap: glibc arenas and chunks, in-use/free, size histogram, fragmentation."""
from __future__ import annotations

import time

import numpy as np

from .command import Command, add_json_argument
from .heap import FREE_BITS, FREE_FAST, FREE_TCACHE, require_heap
from .maps import classify
from .render import table, write_json
from .textparse import human_size

SIZE_CLASSES = [32, 64, 128, 256, 512, 1024, 4096, 16384, 65536, 131072, 1 << 20, 1 << 62]


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


class HeapCommand(Command):
    name = "heap"
    summary = "Walk glibc's heap (no libc debug info): arenas, in-use/free chunks, sizes, fragmentation."

    def add_arguments(self, p):
        p.add_argument("--histogram", action="store_true", help="also print the in-use size histogram")
        add_json_argument(p)

    def run(self, ctx, args):
        t = ctx.target
        t0 = time.monotonic()
        heap = require_heap(t, classify(t))
        rows, arenas = [], []
        for seg in heap.segments:
            if seg.kind == "mmapped":
                continue
            sel = (heap.addr >= np.uint64(seg.start)) & (heap.addr < np.uint64(seg.end))
            sizes, free = heap.size[sel], heap.free[sel]
            used = free == 0
            d = {"kind": seg.kind, "start": hex(seg.start), "end": hex(seg.end),
                 "arena": hex(seg.arena) if seg.arena else None,
                 "in_use_chunks": int(used.sum()), "in_use_bytes": int(sizes[used].sum()),
                 "free_chunks": int((~used).sum()), "free_bytes": int(sizes[~used].sum()),
                 "tcache_chunks": int((free == FREE_TCACHE).sum()), "fastbin_chunks": int((free == FREE_FAST).sum()),
                 "bin_chunks": int((free == FREE_BITS).sum()), "top_size": seg.top_size}
            span = seg.end - seg.start
            d["fragmentation"] = round(d["free_bytes"] / span, 4) if span else 0.0
            arenas.append(d)
            rows.append([seg.kind, d["start"], human_size(span), d["in_use_chunks"], human_size(d["in_use_bytes"]),
                         "%d (%d tcache, %d fast)" % (d["free_chunks"], d["tcache_chunks"], d["fastbin_chunks"]),
                         human_size(d["free_bytes"]), human_size(seg.top_size), "%.1f%%" % (100 * d["fragmentation"])])
        mm_sel = np.zeros(len(heap.addr), dtype=bool)
        for seg in heap.segments:
            if seg.kind == "mmapped":
                mm_sel |= (heap.addr >= np.uint64(seg.start)) & (heap.addr < np.uint64(seg.end))
        mmapped = {"chunks": int(mm_sel.sum()), "bytes": int(heap.size[mm_sel].sum())}
        ctx.write(table(rows, ["arena", "start", "size", "in use", "in-use bytes", "free chunks", "free bytes",
                               "top", "frag"]) + "\n")
        used = heap.inuse
        ctx.write("total: %d chunks in use (%s), %d free (%s); %d mmapped chunks (%s)\n" % (
            int(used.sum()), human_size(int(heap.size[used].sum())), int((~used).sum()),
            human_size(int(heap.size[~used].sum())), mmapped["chunks"], human_size(mmapped["bytes"])))
        for f in heap.findings:
            ctx.write("finding at 0x%x: %s\n" % (f.address, f.message))
        hist = _histogram(heap.size[used & ~mm_sel])
        if args.histogram:
            ctx.write("\n" + table([["%s-%s" % (human_size(h["min"]), human_size(h["max"]) if h["max"] else "…"),
                                     h["chunks"], human_size(h["bytes"])] for h in hist],
                                   ["chunk size", "in use", "bytes"]) + "\n")
        if args.json:
            write_json(args.json, {"target": t.describe(), "arenas": arenas, "mmapped": mmapped,
                                   "histogram": hist, "findings": [f.to_json() for f in heap.findings],
                                   "seconds": round(time.monotonic() - t0, 3)})
