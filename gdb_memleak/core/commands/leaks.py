"""memleak leaks: in-use heap chunks that nothing reaches, by class and size."""
from __future__ import annotations

import time

import numpy as np

from .base import Command, add_json_argument
from ..errors import UsageError
from ..heap import require_heap
from ..leaks import find_leaks
from ..maps import classify
from ..render import table, write_json, write_text
from ..textparse import human_size
from ..vocabulary import NO_CLASS, ORPHAN_REASONS, plural
from ..vtables import build_index

STALE_TEXT = {k: "orphan stack (%s)" % v for k, v in ORPHAN_REASONS.items()}
STALE_TEXT["no-registers"] = "stack of " + ORPHAN_REASONS["no-registers"]     # a root: the thread lives
DUMP_BYTES = 32


def hex_ascii(data: bytes) -> str:
    hx = " ".join("%02x" % b for b in data)
    asc = "".join(chr(b) if 32 <= b < 127 else "." for b in data)
    return "%s  |%s|" % (hx, asc)


def leak_summary(target, heap, res, index, show: int) -> dict:
    """What 'memleak leaks' reports (and 'memleak report' shows): totals, by class, by size, and
    ``show`` examples (direct first, biggest first) with their first bytes."""
    ps = target.pointer_size
    leaked = res.leaked
    li = res.index[leaked]
    sizes = heap.size[li]
    direct = res.direct[leaked]
    cls = res.cls[leaked].astype(np.int64) if res.vindex is index else index.primary_class_of(res.first_word[leaked])
    totals = {"chunks": int(len(li)), "bytes": int(sizes.sum()),
              "direct_chunks": int(direct.sum()), "indirect_chunks": int((~direct).sum()),
              "direct_bytes": int(sizes[direct].sum()), "indirect_bytes": int(sizes[~direct].sum())}
    by_class = []
    for c, n in zip(*np.unique(cls, return_counts=True)):
        sel = cls == c
        entry = {"name": index.classes[int(c)].name if c >= 0 else NO_CLASS, "chunks": int(n),
                 "bytes": int(sizes[sel].sum()), "direct_chunks": int((sel & direct).sum())}
        if c >= 0:
            vc = index.classes[int(c)]
            entry.update({"mangled": vc.mangled, "module": vc.module, "name_source": vc.source})
        by_class.append(entry)
    by_class.sort(key=lambda e: (-e["bytes"], e["name"]))
    by_size = [{"size": int(s), "chunks": int(n), "bytes": int(s) * int(n)}
               for s, n in zip(*np.unique(sizes, return_counts=True))]
    by_size.sort(key=lambda e: (-e["bytes"], e["size"]))
    order = np.lexsort((heap.addr[li], -sizes.astype(np.int64), ~direct))
    examples = []
    for k in order[:show]:
        ci = int(li[k])
        user = int(heap.addr[ci]) + 2 * ps
        raw = target.try_read(user, min(DUMP_BYTES, int(heap.size[ci]) - 2 * ps))
        examples.append({"address": hex(user), "chunk": hex(int(heap.addr[ci])), "size": int(heap.size[ci]),
                         "class": index.classes[int(cls[k])].name if cls[k] >= 0 else None,
                         "kind": "direct" if direct[k] else "indirect",
                         "first_bytes": bytes(raw).hex() if raw is not None else None})
    return {"leaked": totals, "in_use": {"chunks": int(len(res.index)), "bytes": int(heap.size[res.index].sum())},
            "by_class": by_class, "by_size": by_size, "examples": examples,
            "excluded_roots": [{"start": hex(a), "end": hex(b), "reason": why} for a, b, why in res.excluded],
            "skipped": [{"start": hex(a), "end": hex(b), "reason": why} for a, b, why in res.skipped],
            "root_bytes": res.root_bytes, "heap_bytes": res.heap_bytes, "references": res.edges}


def leak_text(doc: dict, top: int) -> str:
    """The tables of a leak summary (leak_summary's document): totals, by class, by chunk size,
    examples.  One renderer for 'leaks' and the report's text."""
    t = doc["leaked"]
    out = ["%s, %s (%d direct, %s; %d indirect, %s) of %d in use, %s\n" % (
        plural(t["chunks"], "leaked chunk"), human_size(t["bytes"]), t["direct_chunks"], human_size(t["direct_bytes"]),
        t["indirect_chunks"], human_size(t["indirect_bytes"]), doc["in_use"]["chunks"], human_size(doc["in_use"]["bytes"]))]
    if doc["by_class"] and top:
        out.append("\n" + table([[e["chunks"], e["direct_chunks"], human_size(e["bytes"]), e["name"] +
                                  (" [rtti]" if e.get("name_source") == "rtti" else "")] for e in doc["by_class"][:top]],
                                ["leaked", "direct", "bytes", "class (vptr at chunk start)"]) + "\n")
    if doc["by_size"] and top:
        out.append("\n" + table([[human_size(e["size"]), e["chunks"], human_size(e["bytes"])] for e in doc["by_size"][:top]],
                                ["chunk size", "leaked", "bytes"]) + "\n")
    if doc["examples"]:
        out.append("\n" + table([[e["address"], human_size(e["size"]), e["kind"], e["class"] or NO_CLASS,
                                  hex_ascii(bytes.fromhex(e["first_bytes"])[:16]) if e["first_bytes"] is not None
                                  else "(unreadable)"] for e in doc["examples"]],
                                ["address", "size", "leak", "class", "first bytes"]) + "\n")
    return "".join(out)


class LeaksCommand(Command):
    name = "leaks"
    summary = "Find heap chunks nothing reaches (leaked), direct and indirect, by class and size."
    description = (summary + " Roots: registers, live threads' stacks from SP, writable non-heap memory. "
                   "Sizes are glibc chunk sizes (the request plus malloc's header, rounded up).")

    def add_arguments(self, p):
        p.add_argument("--orphan-stacks-as-roots", "--stale-stacks-as-roots", dest="stale_stacks_as_roots",
                       action="store_true",
                       help="also scan orphan stacks (threads that exited without join, glibc's stack cache)")
        p.add_argument("--show", type=int, default=5, metavar="N",
                       help="show N leaked chunks with their first bytes (default 5)")
        p.add_argument("--top", type=int, default=20, metavar="N", help="rows per table (default 20)")
        p.add_argument("--addresses", metavar="FILE",
                       help="write the user address of every leaked chunk to FILE, one per line")
        add_json_argument(p)

    def run(self, ctx, args):
        if args.show < 0 or args.top < 0:
            raise UsageError("--show and --top take a count >= 0")
        t = ctx.target
        t0 = time.monotonic()
        maps = classify(t)
        heap = require_heap(t, maps, ctx.progress_sink())
        orphans = {}

        def stale_reason(m):
            """(why, where glibc's struct pthread starts) for a stack no live thread owns."""
            if not orphans:
                from ..threads import analyze_threads
                orphans.update({o.mapping.start: (o.reason, o.pthread.address if o.pthread else None)
                                for o in analyze_threads(t, maps).orphans})
                orphans.setdefault(None, (None, None))
            reason, pd = orphans.get(m.start, (None, None))
            return STALE_TEXT.get(reason), pd

        res = find_leaks(t, maps, heap, args.stale_stacks_as_roots, ctx.progress_sink(), stale_reason)
        index = build_index(t)
        ps = t.pointer_size
        doc = leak_summary(t, heap, res, index, args.show)
        li = res.index[res.leaked]

        w = ctx.write
        w(leak_text(doc, args.top))
        for a, b, why in res.excluded:
            w("not a root: 0x%x-0x%x (%s): %s\n" % (a, b, human_size(b - a), why))
        for a, b, why in res.skipped:
            w("skipped unreadable 0x%x-0x%x (%s): %s\n" % (a, b, human_size(b - a), why))
        for f in heap.findings:
            w("heap finding: %s\n" % f.text())
        w("scanned %s of roots and %s of heap (%d references) in %.2f s\n" % (
            human_size(res.root_bytes), human_size(res.heap_bytes), res.edges, time.monotonic() - t0))

        if args.addresses:
            users = np.sort(heap.addr[li] + np.uint64(2 * ps))
            write_text(args.addresses, "".join("0x%x\n" % int(a) for a in users), mode=0o600)
        if args.json:
            out = {"target": t.describe()}
            out.update(doc)
            out.update({"roots": [{"start": hex(r.start), "end": hex(r.end), "what": r.what} for r in res.roots],
                        "findings": [f.to_json() for f in heap.findings],
                        "seconds": round(time.monotonic() - t0, 3)})
            write_json(args.json, out)
