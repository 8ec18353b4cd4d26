"""memleak vtable-census: objects per C++ class in a range, from symbols or RTTI."""
from __future__ import annotations

import re
import time

from .base import Command, add_json_argument, add_scan_arguments, scan_ranges
from ..errors import MemleakError, UsageError
from ..heap import walk_heap
from ..maps import classify
from ..progress import Progress
from ..render import table, write_json
from ..textparse import human_size
from ..vocabulary import plural
from ..vtables import build_index


class CensusCommand(Command):
    name = "vtable-census"
    summary = "Count C++ objects per class (vtable pointers) in a range, the heap, or all memory."

    def add_arguments(self, p):
        add_scan_arguments(p)
        p.add_argument("--at-chunk-start", action="store_true",
                       help="count only vptrs at a malloc chunk's start (allocations); the rest is 'embedded'")
        p.add_argument("--top", metavar="N", type=int, default=30, help="show the N biggest classes (default 30; 0: all)")
        p.add_argument("--grep", metavar="REGEX", help="only classes whose name matches REGEX")
        p.add_argument("--examples", metavar="K", type=int, default=0, help="K example addresses per class")
        p.add_argument("--raw", action="store_true", help="also list raw hits per vtable address point")
        add_json_argument(p)

    def run(self, ctx, args):
        t = ctx.target
        try:
            grep = re.compile(args.grep) if args.grep else None
        except re.error as e:
            raise UsageError("bad --grep regex: %s" % e)
        t0 = time.monotonic()
        maps = classify(t)
        heap = None
        if args.at_chunk_start:
            heap = walk_heap(t, maps, ctx.progress_sink())
        ranges, label = scan_ranges(ctx, args, maps)
        index = build_index(t)
        for w in index.warnings:
            ctx.warn("warning: " + w)
        if not len(index.points):
            raise MemleakError("no C++ vtables found in any module (no symbols, no RTTI): nothing to count")
        setup = time.monotonic() - t0
        total = sum(e - s for s, e in ranges)
        prog = Progress("vtable-census", total, ctx.progress_sink())
        from ..census import census
        res = census(t, index, ranges, heap if args.at_chunk_start else None, args.examples, prog, maps)
        prog.finish()
        elapsed = time.monotonic() - t0
        rows = []
        for cid, c in res.counts.items():
            vc = index.classes[cid]
            if grep and not grep.search(vc.name):
                continue
            if c.count == 0 and c.secondary == 0 and c.embedded == 0:
                continue
            rows.append((vc, c))
        rows.sort(key=lambda r: (-r[1].count, -r[1].embedded, r[0].name))
        for vc, c in rows[:args.top or None]:
            if not c.sizes:     # no chunk sizes (plain scan): sizeof from debug info, when gdb has it
                sz = t.type_size(vc.name, vc.module)
                if sz:
                    c.sizes[sz] = 1
        shown = rows[:args.top] if args.top else rows
        second = "embedded" if args.at_chunk_start else "secondary"
        body = []
        for vc, c in shown:
            size = c.size
            body.append([c.count, c.embedded if args.at_chunk_start else c.secondary,
                         vc.name + (" [rtti]" if vc.source == "rtti" else ""), vc.module,
                         human_size(size) if size is not None else "-", human_size(size * c.count) if size else "-"]
                        + ([" ".join(hex(a) for a in c.examples)] if args.examples else []))
        ctx.write(table(body, ["count", second, "class", "module", "size", "total"]
                        + (["examples"] if args.examples else [])) + "\n")
        ctx.write("%d classes, %d objects in %s scanned (%s) in %.2f s (setup %.2f s)%s\n" % (
            len(rows), sum(c.count for _, c in rows), human_size(res.scanned_bytes),
            "allocations at chunk start" if args.at_chunk_start else "primary vptrs", elapsed, setup,
            "" if len(shown) == len(rows) else "; top %d shown" % len(shown)))
        if res.skipped:
            ctx.write("skipped %s, %s\n" % (
                plural(len(res.skipped), "unreadable range"), human_size(sum(b - a for a, b, _ in res.skipped))))
        findings = list(heap.findings) if heap is not None else []
        for f in findings:
            ctx.write("heap finding: %s\n" % f.text())
        raw = []
        if args.raw:
            for p in range(len(index.points)):
                if res.point_hits[p]:
                    vc = index.classes[int(index.point_class[p])]
                    raw.append({"vtable": ("_ZTV" + vc.mangled) if vc.source == "symbol" else None,
                                "class": vc.name, "address": hex(int(index.points[p])),
                                "offset": int(index.point_offset[p]), "primary": bool(index.point_primary[p]),
                                "count": int(res.point_hits[p])})
            ctx.write(table([[r["count"], r["class"], "%s+%d" % (r["vtable"] or "?", r["offset"]), r["address"]]
                             for r in raw], ["hits", "class", "address point", "address"]) + "\n")
        if args.json:
            write_json(args.json, {
                "target": t.describe(), "range": label,
                "ranges": [{"start": hex(a), "end": hex(b)} for a, b in ranges],
                "scanned_bytes": res.scanned_bytes, "seconds": round(elapsed, 3), "setup_seconds": round(setup, 3),
                "at_chunk_start": bool(args.at_chunk_start),
                "skipped": [{"start": hex(a), "end": hex(b), "reason": r} for a, b, r in res.skipped],
                "classes": [{"name": vc.name, "mangled": vc.mangled, "module": vc.module, "count": c.count,
                             "secondary": c.secondary, "embedded": c.embedded, "name_source": vc.source,
                             "size": c.size, "examples": [hex(a) for a in c.examples]} for vc, c in rows],
                "points": raw,
                "findings": [f.to_json() for f in findings],
            })
