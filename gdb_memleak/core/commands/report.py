"""memleak report: every analysis in one run — maps, the class census at chunk start, the heap,
leaks, threads and, given a baseline snapshot, what grew — as text, JSON, or one self-contained
HTML page (core/report/).

The analyses are the other commands' own functions (maps.classify, census.census, heap.walk_heap,
cmd_heap.arena_summaries, leaks.find_leaks, threads.analyze_threads, snapshot.take/diff); this
module only gathers their results into one document and adds the aggregations the page needs
(bytes per arena and class, live vs leaked per class)."""
from __future__ import annotations

import datetime
import json
import os
import time
from collections import OrderedDict
from typing import Dict, List, Optional

import numpy as np

from .base import Command
from ..errors import MemleakError, UsageError
from ..textparse import human_size
from ..vocabulary import NO_CLASS, ORPHAN_REASONS, plural

SCHEMA = "gdb_memleak.report/1"
# writable memory that is no process memory of its own (the kernel's pages, shared files)
NOT_MEMORY = ("vdso", "vvar", "vsyscall")
KIND_LABELS = OrderedDict([
    ("main-heap", "main heap"), ("arena-heap", "arena heaps"), ("mmapped", "mmapped chunks"), ("anon", "anonymous (other)"),
    ("stack", "main stack"), ("thread-stack", "thread stacks"), ("orphan", "orphan stacks"), ("tls", "static TLS"),
    ("file", "module data"), ("shm", "shared memory")])


# -- collecting -----------------------------------------------------------------------------------

def collect(target, show: int = 5, baseline: Optional[dict] = None, baseline_name: str = "baseline",
            progress_sink=None, warn=None) -> dict:
    """The report document of ``target``: every section as plain JSON-able data."""
    from ..maps import classify, totals
    from ..heap import walk_heap
    from ..snapshot import identity
    from ..threads import analyze_threads
    t0 = time.monotonic()
    maps = classify(target)
    doc = OrderedDict()
    doc["schema"] = SCHEMA
    doc["time"] = datetime.datetime.now().isoformat(timespec="seconds")
    doc["target"] = dict(target.describe(), **identity(target))
    tot = totals(maps)
    doc["maps"] = {"mappings": [m.to_json() for m in maps],
                   "totals": {k: {"count": v["count"], "size": v["size"], "rss": v["rss"]} for k, v in tot.items()}}
    rep = analyze_threads(target, maps)
    doc["threads"] = _threads_section(target, rep)

    heap = walk_heap(target, maps, progress_sink) if any(m.kind in ("main-heap", "arena-heap", "anon") for m in maps) else None
    if heap is not None and not heap.segments:
        heap = None
    index = res = None
    if heap is not None:
        from ..vtables import build_index
        index = build_index(target)
        for w in index.warnings:
            if warn:
                warn("warning: " + w)
        doc["heap"] = _heap_section(heap)
        doc["census"] = _census_section(target, maps, heap, index, show)
        res = _find_leaks(target, maps, heap, rep, progress_sink)
        doc["leaks"] = _leaks_section(target, heap, res, index, show)
    else:
        doc["heap"] = doc["census"] = doc["leaks"] = None
    doc["memory"] = memory_tree(maps, heap, res, index, rep, top=8)
    doc["classes"] = class_table(doc["census"], doc["leaks"])
    doc["growth"] = None
    if baseline is not None:
        from ..snapshot import diff, take
        now = take(target, _baseline_strings(baseline), progress_sink)
        doc["growth"] = diff(baseline, now, baseline_name, "now")
    doc["findings"] = findings(doc)
    doc["seconds"] = round(time.monotonic() - t0, 3)
    return doc


def _baseline_strings(baseline: dict) -> List[str]:
    """The --strings regexes the baseline was taken with: the same histograms are taken now."""
    return [rx for rx in (baseline.get("strings") or {})]


def _find_leaks(target, maps, heap, rep, progress_sink):
    from .leaks import STALE_TEXT
    from ..leaks import find_leaks
    orphans = {o.mapping.start: (o.reason, o.pthread.address if o.pthread else None) for o in rep.orphans}

    def stale_reason(m):
        reason, pd = orphans.get(m.start, (None, None))
        return STALE_TEXT.get(reason), pd

    return find_leaks(target, maps, heap, False, progress_sink, stale_reason)


def _threads_section(target, rep) -> dict:
    from .threads import frame0_function
    threads = []
    for ts in rep.threads:
        th, m = ts.thread, ts.mapping
        threads.append({"num": th.num, "lwp": th.lwp, "name": th.name, "sp": hex(th.sp), "pc": hex(th.pc),
                        "function": frame0_function(target, th), "stack_start": hex(m.start) if m else None,
                        "stack_end": hex(m.end) if m else None, "stack_size": m.size if m else None,
                        "stack_kind": m.kind if m else None, "used": ts.used, "guard": ts.guard,
                        "pthread": hex(ts.pthread.address) if ts.pthread else None})
    orphans = []
    for o in rep.orphans:
        p = o.pthread
        orphans.append({"start": hex(o.mapping.start), "end": hex(o.mapping.end), "size": o.mapping.size,
                        "reason": o.reason, "why": ORPHAN_REASONS[o.reason], "guard": o.guard,
                        "pthread": hex(p.address) if p else None, "tid": p.tid if p else None})
    return {"threads": threads, "orphan_stacks": orphans, "totals": rep.totals(), "findings": list(rep.findings)}


def _heap_section(heap) -> dict:
    from .heap import _histogram, arena_summaries
    model = heap.model
    mm = heap.mmapped if heap.mmapped is not None else np.zeros(len(heap.addr), dtype=bool)
    used = heap.inuse
    acc = dict(heap.accounting or {})
    acc["unexplained_regions"] = [{"start": hex(a), "end": hex(b), "size": b - a}
                                  for a, b in acc.get("unexplained_regions", [])]
    return {"discovery": heap.how,
            "main_arena": hex(model.main_arena) if model and model.main_arena else None,
            "arenas": arena_summaries(heap),
            "in_use_chunks": int(used.sum()), "in_use_bytes": int(heap.size[used].sum()),
            "free_chunks": int((~used).sum()), "free_bytes": int(heap.size[~used].sum()),
            "mmapped": {"chunks": int(mm.sum()), "bytes": int(heap.size[mm].sum()),
                        "mapped_bytes": sum(s.end - s.start for s in heap.segments if s.kind == "mmapped")},
            "accounting": acc, "histogram": _histogram(heap.size[used & ~mm]),
            "findings": [dict(f.to_json(), text=f.text()) for f in heap.findings]}


def _census_section(target, maps, heap, index, show) -> dict:
    """vtable-census --heap --at-chunk-start, every class."""
    from ..census import census
    from ..heap import heap_ranges
    if not len(index.points):
        return {"classes": [], "scanned_bytes": 0, "skipped": [],
                "note": "no C++ vtables found in any module (no symbols, no RTTI)"}
    res = census(target, index, heap_ranges(target, maps), heap, show, None, maps)
    classes = []
    for cid, c in res.counts.items():
        if not c.count:
            continue
        vc = index.classes[cid]
        classes.append({"name": vc.name, "mangled": vc.mangled, "module": vc.module, "name_source": vc.source,
                        "count": c.count, "embedded": c.embedded, "size": c.size,
                        "bytes": int(sum(k * v for k, v in c.sizes.items())),
                        "examples": [hex(a) for a in c.examples]})
    classes.sort(key=lambda e: (-e["bytes"], -e["count"], e["name"]))
    return {"classes": classes, "scanned_bytes": res.scanned_bytes,
            "skipped": [{"start": hex(a), "end": hex(b), "reason": r} for a, b, r in res.skipped]}


def _leaks_section(target, heap, res, index, show) -> dict:
    """What `memleak leaks` reports (one implementation: cmd_leaks.leak_summary)."""
    from .leaks import leak_summary
    return leak_summary(target, heap, res, index, show)

def _writable(m) -> bool:
    return "w" in m.perms[:3] and m.kind not in NOT_MEMORY


def _segment_groups(heap):
    """Each heap segment's group, in the order cmd_heap.arena_summaries lists arenas (mmapped
    chunks: one group of their own, last)."""
    seg_keys = ["mmapped" if seg.kind == "mmapped" else (seg.arena if seg.arena is not None else ("shape", seg.start))
                for seg in heap.segments]
    # arenas in the order of their first segment (as arena_summaries), the mmapped chunks last
    # wherever they lie between the arenas' heaps
    keys = [k for k in OrderedDict.fromkeys(seg_keys) if k != "mmapped"] + \
        (["mmapped"] if "mmapped" in seg_keys else [])
    at = {k: i for i, k in enumerate(keys)}
    return keys, [at[k] for k in seg_keys]


def _class_bytes_per_group(heap, res, index):
    """{group: [(class name, bytes, chunks, leaked bytes, leaked chunks), …] by bytes} for in-use chunks."""
    keys, seg_group = _segment_groups(heap)
    out = {k: [] for k in keys}
    if res is None or not len(res.index):
        return keys, out
    starts = np.array([s.start for s in heap.segments], dtype=np.uint64)
    order = np.argsort(starts, kind="stable")
    addr = heap.addr[res.index]
    pos = np.searchsorted(starts[order], addr, side="right").astype(np.int64) - 1
    pos[pos < 0] = 0
    group = np.array(seg_group, dtype=np.int64)[order][pos]
    cls = index.primary_class_of(res.first_word) if index is not None else np.full(len(addr), -1, dtype=np.int64)
    ncls = len(index.classes) + 1 if index is not None else 1
    key = group * ncls + (cls + 1)
    size = heap.size[res.index].astype(np.float64)
    leaked = res.leaked.astype(np.float64)
    n = len(keys) * ncls
    b = np.bincount(key, weights=size, minlength=n)
    c = np.bincount(key, minlength=n)
    lb = np.bincount(key, weights=size * leaked, minlength=n)
    lc = np.bincount(key, weights=leaked, minlength=n)
    for k in np.flatnonzero(c):
        g, ci = divmod(int(k), ncls)
        name = index.classes[ci - 1].name if ci else NO_CLASS
        out[keys[g]].append((name, int(b[k]), int(c[k]), int(lb[k]), int(lc[k])))
    for rows in out.values():
        rows.sort(key=lambda r: (-r[1], r[0]))
    return keys, out


def memory_tree(maps, heap, res, index, rep, top: int = 8) -> dict:
    """Where the writable memory went, as a tree for the treemap: kind -> arena/heap/owner -> class.
    Node values are bytes; a parent's value is the sum of its children."""
    nodes: List[dict] = []
    ids = set()

    def add(nid, parent, label, value=0, kind=None, **extra):
        while nid in ids:
            nid += "'"
        ids.add(nid)
        nodes.append(dict(id=nid, parent=parent, label=label, bytes=int(value), kind=kind, **extra))
        return nid

    writable = [m for m in maps if _writable(m)]
    by_kind: Dict[str, list] = OrderedDict((k, []) for k in KIND_LABELS)
    orphan_starts = {o.mapping.start: o for o in (rep.orphans if rep else [])}
    owners = {}
    for ts in (rep.threads if rep else []):
        if ts.mapping is not None:
            owners.setdefault(ts.mapping.start, ts.thread)
    mm_ranges = sorted((s.start, s.end) for s in heap.segments if s.kind == "mmapped") if heap else []
    for m in writable:
        kind = m.kind
        if kind == "thread-stack" and m.start in orphan_starts:
            kind = "orphan"
        by_kind.setdefault(kind, []).append(m)

    root = add("all", "", "writable memory", kind="root")
    groups = per_group = None
    if heap is not None:
        from .heap import arena_summaries
        groups, per_group = _class_bytes_per_group(heap, res, index)
        summaries = arena_summaries(heap)

    def class_leaves(parent, rows):
        """The top classes of one arena/heap, then the rest of its in-use bytes in one leaf."""
        used = 0
        for name, b, c, lb, lc in rows[:top]:
            add(parent + "/" + name, parent, name, b, "class", chunks=c, leaked_bytes=lb, leaked_chunks=lc)
            used += b
        rest = rows[top:]
        if rest:
            b = sum(r[1] for r in rest)
            add(parent + "/other", parent, "%d other classes" % len(rest), b, "class",
                chunks=sum(r[2] for r in rest), leaked_bytes=sum(r[3] for r in rest),
                leaked_chunks=sum(r[4] for r in rest))
            used += b
        return used

    for kind, label in list(KIND_LABELS.items()) + [(k, k) for k in by_kind if k not in KIND_LABELS]:
        ms = by_kind.get(kind) or []
        if kind == "mmapped":
            if not mm_ranges:
                continue
        elif not ms:
            continue
        kid = add("all/" + kind, root, label, kind=kind)
        if kind in ("main-heap", "arena-heap") and heap is not None:
            span = sum(m.size for m in ms)
            covered = 0
            want = "main" if kind == "main-heap" else "thread"
            for g, d in zip(groups, summaries):
                if d["kind"] != want:
                    continue
                name = ("main arena" if want == "main" else "arena %s" % d["address"]) if d["address"] else \
                    "heap %s (found by shape)" % d["heaps"][0]["start"]
                if len(d["heaps"]) > 1:
                    name += " (%d heaps)" % len(d["heaps"])
                aid = add(kid + "/" + name, kid, name, kind="arena", address=d["address"])
                used = class_leaves(aid, per_group.get(g, []))
                free = d["free_bytes"] + d["unknown_bytes"]
                if free:
                    add(aid + "/free", aid, "free chunks", free, "free")
                if d["top_size"]:
                    add(aid + "/top", aid, "top chunk (unused)", d["top_size"], "free")
                rest = d["size"] - used - free - (d["top_size"] or 0)
                if rest > 0:
                    add(aid + "/hdr", aid, "heap headers, fenceposts", rest, "overhead")
                covered += max(d["size"], used + free + (d["top_size"] or 0))
            if span > covered:
                add(kid + "/rest", kid, "not walked (page rounding, reserve)", span - covered, "overhead")
        elif kind == "mmapped":
            mid = add(kid + "/chunks", kid, "%s" % plural(len(mm_ranges), "mmapped chunk"), kind="mmapped")
            used = class_leaves(mid, per_group.get("mmapped", []) if per_group else [])
            mapped = sum(b - a for a, b in mm_ranges)
            if mapped > used:
                add(mid + "/slack", mid, "page rounding, headers", mapped - used, "overhead")
        elif kind == "anon":
            for m in ms:
                inside = sum(min(b, m.end) - max(a, m.start) for a, b in mm_ranges if a < m.end and m.start < b)
                if m.size - inside > 0:
                    add(kid + "/0x%x" % m.start, kid, "0x%x (%s)" % (m.start, m.note or "anon"), m.size - inside,
                        "anon", start=hex(m.start))
            if not any(n["parent"] == kid for n in nodes):
                nodes.pop()
                ids.discard(kid)
        elif kind in ("thread-stack", "stack"):
            for m in ms:
                th = owners.get(m.start)
                name = ("thread %d (LWP %d)" % (th.num, th.lwp)) if th else (m.name or "0x%x" % m.start)
                sid = add(kid + "/0x%x" % m.start, kid, name, m.size, kind, start=hex(m.start))
                used = min(max(m.end - th.sp, 0), m.size) if th is not None else 0
                if used:        # a stack is mostly untouched: the part above SP is what the thread uses
                    add(sid + "/used", sid, "in use (SP to top)", used, kind)
                    add(sid + "/free", sid, "unused (below SP)", m.size - used, "free")
        elif kind == "orphan":
            for m in ms:
                o = orphan_starts[m.start]
                add(kid + "/0x%x" % m.start, kid, "0x%x: %s" % (m.start, ORPHAN_REASONS[o.reason]), m.size,
                    "orphan", start=hex(m.start), reason=o.reason)
        elif kind == "file":
            per = OrderedDict()
            for m in ms:
                per[m.path or "?"] = per.get(m.path or "?", 0) + m.size
            for path, size in sorted(per.items(), key=lambda kv: -kv[1]):
                add(kid + "/" + path, kid, os.path.basename(path) or path, size, "file", path=path)
        else:
            for m in ms:
                add(kid + "/0x%x" % m.start, kid, "0x%x %s" % (m.start, m.name or ""), m.size, kind, start=hex(m.start))
    _sum_up(nodes)
    return {"unit": "bytes", "nodes": [n for n in nodes if n["bytes"] > 0 or n["id"] == "all"]}


def _sum_up(nodes: List[dict]) -> None:
    """A parent's bytes = the sum of its children's (nodes are listed parents first)."""
    children: Dict[str, List[dict]] = {}
    for n in nodes:
        children.setdefault(n["parent"], []).append(n)
    for n in reversed(nodes):
        kids = children.get(n["id"])
        if kids:
            n["bytes"] = sum(k["bytes"] for k in kids)


def class_table(census: Optional[dict], leaks: Optional[dict]) -> List[dict]:
    """Per class: allocations in use (census at chunk start) and how many of them are leaked."""
    if census is None:
        return []
    leaked = {e["name"]: e for e in (leaks or {}).get("by_class", [])}
    rows = []
    for c in census["classes"]:
        lk = leaked.get(c["name"], {})
        lc = lk.get("chunks", 0)
        rows.append({"name": c["name"], "module": c["module"], "count": c["count"], "size": c["size"],
                     "bytes": c["bytes"], "leaked": lc, "leaked_bytes": lk.get("bytes", 0),
                     "reachable": max(c["count"] - lc, 0)})
    return rows


# -- findings ----------------------------------------------------------------------------------

def findings(doc: dict) -> List[dict]:
    """What to look at, in words with numbers, most telling first."""
    out: List[dict] = []

    def f(section, text, level="info"):
        out.append({"section": section, "level": level, "text": text})

    lk = doc.get("leaks")
    if lk is not None:
        t = lk["leaked"]
        if t["chunks"]:
            top = lk["by_class"][0] if lk["by_class"] else None
            f("leaks", "%s leaked, %s (%d direct, %d indirect) of %d in use (%s)%s" % (
                plural(t["chunks"], "chunk"), human_size(t["bytes"]), t["direct_chunks"], t["indirect_chunks"],
                lk["in_use"]["chunks"], human_size(lk["in_use"]["bytes"]),
                "; most bytes: %s, %s in %s" % (top["name"], human_size(top["bytes"]), plural(top["chunks"], "chunk"))
                if top else ""), "warn")
            named = [e for e in lk["by_class"] if e["name"] != NO_CLASS]
            if named and named[0] is not top:
                e = named[0]
                f("leaks", "most leaked bytes of a C++ class: %s, %s in %s" % (
                    e["name"], human_size(e["bytes"]), plural(e["chunks"], "object")), "warn")
        else:
            f("leaks", "no leaked chunk: every one of the %d in-use chunks (%s) is reachable" % (
                lk["in_use"]["chunks"], human_size(lk["in_use"]["bytes"])))
    g = doc.get("growth")
    if g is not None:
        for text in g["findings"]:
            f("growth", "since the baseline: " + text, "warn")
        if not g["findings"]:
            f("growth", "nothing grew since the baseline")
    for text in doc["threads"]["findings"]:
        f("threads", text, "warn" if ("never joined" in text or "no owning" in text or "uses" in text) else "info")
    h = doc.get("heap")
    if h is not None:
        for x in h["findings"]:
            f("heap", x["text"], "warn")
        acc = h["accounting"]
        if acc.get("total"):
            biggest = max((k for k in ("main_heap", "arena_heaps", "mmapped_chunks", "thread_stacks", "other",
                                       "unexplained")), key=lambda k: acc.get(k, 0))
            f("heap", "writable anonymous memory %s: %s in %s (%.0f%%); malloc holds %s in %s" % (
                human_size(acc["total"]), human_size(acc[biggest]), biggest.replace("_", " "),
                100.0 * acc[biggest] / acc["total"], human_size(h["in_use_bytes"]),
                plural(h["in_use_chunks"], "chunk in use", "chunks in use")))
        frag = [a for a in h["arenas"] if a["fragmentation"] >= 0.25 and a["size"] >= (1 << 20)]
        for a in frag:
            f("heap", "arena %s: %.0f%% of its %s is free chunks (fragmentation)" % (
                a["address"] or "(by shape)", 100 * a["fragmentation"], human_size(a["size"])), "warn")
    cs = doc.get("classes") or []
    if cs:
        c = cs[0]
        f("census", "biggest class: %s, %s objects, %s%s" % (
            c["name"], c["count"], human_size(c["bytes"]),
            " (%d leaked)" % c["leaked"] if c["leaked"] else ""))
    elif doc.get("census") is not None and doc["census"].get("note"):
        f("census", doc["census"]["note"])
    if doc.get("heap") is None:
        f("heap", "no glibc heap found: no arenas, no class census, no leak check")
    return out


# -- the command --------------------------------------------------------------------------------

def _load_baseline(path: str) -> dict:
    from ..snapshot import load_kind
    try:
        with open(path) as fh:
            doc = json.load(fh)
    except OSError as e:
        raise MemleakError("cannot read %s: %s" % (path, e.strerror))
    except ValueError as e:
        raise MemleakError("%s is not JSON: %s" % (path, e))
    if not isinstance(doc, dict):
        raise MemleakError("%s is not a gdb_memleak snapshot" % path)
    if load_kind(doc, path) != "snapshot":
        raise MemleakError("%s is a 'watch' sample: --baseline takes a snapshot ('memleak snapshot FILE')" % path)
    return doc


class ReportCommand(Command):
    name = "report"
    summary = "Every analysis in one run (maps, census, heap, leaks, threads, growth): text, JSON or one HTML page."
    description = (summary + " Findings first, then where the memory went (arena and class), the address space, "
                   "top classes live vs leaked, leaks, thread stacks and, with --baseline, what grew. The HTML "
                   "page is self-contained (charts inlined: no network) and written 0600.")

    def add_arguments(self, p):
        p.add_argument("--html", metavar="FILE", help="write the report as one self-contained HTML page (0600)")
        p.add_argument("--json", metavar="FILE", help="write the combined data as JSON (0600)")
        p.add_argument("--baseline", metavar="SNAPSHOT",
                       help="a snapshot taken earlier ('memleak snapshot FILE'): add what grew since")
        p.add_argument("--top", metavar="N", type=int, default=15, help="rows per table and chart (default 15)")
        p.add_argument("--show", metavar="N", type=int, default=5, help="leaked chunks shown with their bytes (default 5)")

    def run(self, ctx, args):
        if args.top < 1 or args.show < 0:
            raise UsageError("--top takes a count >= 1, --show a count >= 0")
        baseline = _load_baseline(args.baseline) if args.baseline else None
        if args.html:
            from ..report.html import check_dependencies
            check_dependencies()          # before minutes of analysis, not after
        doc = collect(ctx.target, args.show, baseline, args.baseline or "baseline", ctx.progress_sink(), ctx.warn)
        from ..report.text import render_text
        if args.json:
            from ..render import write_json
            write_json(args.json, doc)
        if args.html:
            from ..files import write_file
            from ..report.html import render_html
            page = render_html(doc, args.top)
            write_file(args.html, page.encode("utf-8"))
            ctx.write("report written to %s (%s): %s\n" % (args.html, human_size(len(page.encode("utf-8"))),
                                                         "; ".join(x["text"] for x in doc["findings"][:1]) or
                                                         "no findings"))
        else:
            ctx.write(render_text(doc, args.top))
