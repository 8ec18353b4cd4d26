"""What grew: a snapshot of where the memory is (maps, heap per arena, chunk sizes, classes at
chunk start, threads, string histograms), and the difference between two of them (or two
samples of the /proc watcher), sorted by growth with the findings in words first."""
from __future__ import annotations

import datetime
import time
from collections import Counter
from typing import Dict, List

import numpy as np

from .errors import MemleakError
from .textparse import human_size

SCHEMA = "gdb_memleak.snapshot/1"
SAMPLE_SCHEMA = "gdb_memleak.sample/1"


def identity(target) -> dict:
    main = next((m for m in target.modules() if m.is_main), None)
    return {"exe": main.path if main else target.executable, "build_id": main.build_id if main else None}


def take(target, strings=(), progress_sink=None) -> dict:
    """The snapshot document of ``target``; ``strings`` are REGEX texts (one group each)."""
    from .commands.heap import arena_summaries
    from .heap import walk_heap
    from .maps import classify
    from .threads import analyze_threads
    t0 = time.monotonic()
    maps = classify(target)
    doc = {"schema": SCHEMA, "time": datetime.datetime.now().isoformat(timespec="seconds"),
           "target": dict(target.describe(), **identity(target)),
           "maps": [m.to_json() for m in maps]}
    heap = walk_heap(target, maps, progress_sink) if any(m.kind in ("main-heap", "arena-heap", "anon") for m in maps) else None
    if heap is not None and heap.segments:
        used = heap.inuse
        sizes, counts = np.unique(heap.size[used], return_counts=True)
        mm = heap.mmapped if heap.mmapped is not None else np.zeros(len(heap.addr), dtype=bool)
        doc["heap"] = {"discovery": heap.how, "arenas": arena_summaries(heap),
                       "in_use_chunks": int(used.sum()), "in_use_bytes": int(heap.size[used].sum()),
                       "mmapped": {"chunks": int(mm.sum()), "bytes": int(heap.size[mm].sum())},
                       "sizes": [[int(s), int(c)] for s, c in zip(sizes, counts)],
                       "findings": [f.to_json() for f in heap.findings]}
        doc["census"] = _census(target, maps, heap)
    rep = analyze_threads(target, maps)
    doc["threads"] = [{"lwp": ts.thread.lwp, "stack": hex(ts.mapping.start) if ts.mapping else None}
                      for ts in rep.threads]
    doc["orphan_stacks"] = [{"start": hex(o.mapping.start), "end": hex(o.mapping.end), "size": o.mapping.size,
                             "reason": o.reason} for o in rep.orphans]
    if strings:
        from .commands.strings import _compile
        from .strings import scan_strings
        ranges = sorted(s.scan_range(target.pointer_size) for s in heap.segments) if heap is not None else []
        doc["strings"] = {}
        for text in strings:
            rx = _compile(text, "--strings", groups=1)
            res = scan_strings(target, ranges, None, rx, top=False, heap=heap)
            doc["strings"][text] = {"matches": res.matches,
                                    "histogram": {k.decode("utf-8", "backslashreplace"): n
                                                  for k, n in res.histogram.items()}}
    doc["seconds"] = round(time.monotonic() - t0, 3)
    return doc


def _census(target, maps, heap) -> List[dict]:
    from .census import census
    from .heap import heap_ranges
    from .vtables import build_index
    index = build_index(target)
    if not len(index.points):
        return []
    res = census(target, index, heap_ranges(target, maps), heap, 0, None, maps)
    out = []
    for cid, c in res.counts.items():
        if c.count:
            out.append({"name": index.classes[cid].name, "count": c.count,
                        "bytes": int(sum(k * v for k, v in c.sizes.items()))})
    out.sort(key=lambda e: (-e["bytes"], e["name"]))
    return out


# -- diff --------------------------------------------------------------------------------------

def _int(v) -> int:
    return int(v, 16) if isinstance(v, str) else int(v)


def load_kind(doc: dict, path: str) -> str:
    schema = doc.get("schema", "")
    if schema not in (SCHEMA, SAMPLE_SCHEMA):
        raise MemleakError("%s is not a gdb_memleak snapshot or watch sample (schema %r)" % (path, schema or None))
    return "snapshot" if schema == SCHEMA else "sample"


def diff(a: dict, b: dict, name_a: str = "A", name_b: str = "B") -> dict:
    load_kind(a, name_a)
    load_kind(b, name_b)
    ia, ib = a.get("target", {}), b.get("target", {})
    if ia.get("build_id") and ib.get("build_id") and ia["build_id"] != ib["build_id"]:
        raise MemleakError("%s and %s are of different programs (%s, build-id %s; %s, build-id %s): nothing "
                           "to compare" % (name_a, name_b, ia.get("exe"), ia["build_id"], ib.get("exe"), ib["build_id"]))
    out = {"a": {"time": a.get("time"), "target": ia}, "b": {"time": b.get("time"), "target": ib}}
    findings: List[str] = []
    out["regions"], out["kinds"] = _regions(a.get("maps", []), b.get("maps", []), findings)
    out["classes"] = _classes(a.get("census"), b.get("census"), findings)
    out["sizes"] = _sizes(a.get("heap"), b.get("heap"), findings)
    out["arenas"] = _arenas(a.get("heap"), b.get("heap"))
    out["threads"] = _threads(a, b, findings)
    out["strings"] = _strings(a.get("strings") or {}, b.get("strings") or {}, findings)
    out["findings"] = findings
    return out


# kind names of documents written before "heap" came to mean all memory malloc owns
_OLD_KINDS = {"heap": "main-heap", "arena": "arena-heap"}


def _kind(m: dict) -> str:
    return _OLD_KINDS.get(m["kind"], m["kind"])


def _regions(ma, mb, findings):
    ma = [dict(m, kind=_kind(m)) for m in ma]
    mb = [dict(m, kind=_kind(m)) for m in mb]
    ka = {(_int(m["start"]), m["kind"]): m for m in ma}
    kb = {(_int(m["start"]), m["kind"]): m for m in mb}
    rows = []
    for key in set(ka) | set(kb):
        x, y = ka.get(key), kb.get(key)
        sx = x["size"] if x else 0
        sy = y["size"] if y else 0
        rx = x.get("rss") if x else None
        ry = y.get("rss") if y else None
        rss_delta = (ry or 0) - (rx or 0) if (x is None or rx is not None) and (y is None or ry is not None) \
            and (rx is not None or ry is not None) else None
        if x is None:
            change = "new"
        elif y is None:
            change = "removed"
        elif sy > sx or (sy == sx and (rss_delta or 0) > 0):
            change = "grown"
        elif sy < sx or (rss_delta or 0) < 0:
            change = "shrunk"
        else:
            continue
        m = y or x
        rows.append({"start": hex(key[0]), "kind": key[1], "path": m.get("path"), "note": m.get("note"),
                     "perms": m.get("perms"), "change": change, "size_delta": sy - sx, "rss_delta": rss_delta,
                     "size": sy})
    # memory that can hold data first: a PROT_NONE reserve that moves is no growth
    rows.sort(key=lambda r: ("w" not in (r["perms"] or "")[:3], -max(r["size_delta"], r["rss_delta"] or 0), r["start"]))
    kinds: Dict[str, dict] = {}
    for side, maps in (("before", ma), ("after", mb)):
        for m in maps:
            if "w" not in (m.get("perms") or "")[:3]:
                continue
            k = kinds.setdefault(m["kind"], {"kind": m["kind"], "before": 0, "after": 0, "rss_before": None,
                                             "rss_after": None})
            k[side] += m["size"]
            if m.get("rss") is not None:
                k["rss_" + side] = (k["rss_" + side] or 0) + m["rss"]
    klist = []
    for k in kinds.values():
        k["delta"] = k["after"] - k["before"]
        k["rss_delta"] = (k["rss_after"] - k["rss_before"]) if k["rss_after"] is not None and k["rss_before"] is not None else None
        if k["delta"] or k["rss_delta"]:
            klist.append(k)
    klist.sort(key=lambda k: -max(k["delta"], k["rss_delta"] or 0))
    grown = [r for r in rows if max(r["size_delta"], r["rss_delta"] or 0) > 0 and "w" in (r["perms"] or "")[:3]]
    if grown:
        r = grown[0]
        what = r["kind"].replace("-", " ")
        by = max(r["size_delta"], r["rss_delta"] or 0)
        findings.append("%s %s %s %s%s" % (what, r["start"], "appeared with" if r["change"] == "new" else "grew",
                                           human_size(by), " (RSS)" if (r["rss_delta"] or 0) > r["size_delta"] else ""))
    return rows, klist


def _classes(ca, cb, findings):
    if ca is None and cb is None:
        return []
    da = {c["name"]: c for c in ca or []}
    db = {c["name"]: c for c in cb or []}
    rows = []
    for name in set(da) | set(db):
        x, y = da.get(name, {"count": 0, "bytes": 0}), db.get(name, {"count": 0, "bytes": 0})
        if x["count"] == y["count"] and x["bytes"] == y["bytes"]:
            continue
        rows.append({"name": name, "before": x["count"], "after": y["count"], "delta": y["count"] - x["count"],
                     "bytes_delta": y["bytes"] - x["bytes"]})
    rows.sort(key=lambda r: (-r["bytes_delta"], -r["delta"], r["name"]))
    if rows and rows[0]["delta"] > 0:
        r = rows[0]
        findings.append("%s %+d instances (%s%s)" % (r["name"], r["delta"], "+" if r["bytes_delta"] >= 0 else "-",
                                                    human_size(abs(r["bytes_delta"]))))
    return rows


def _sizes(ha, hb, findings):
    if ha is None and hb is None:
        return []
    ca = Counter({s: c for s, c in (ha or {}).get("sizes", [])})
    cb = Counter({s: c for s, c in (hb or {}).get("sizes", [])})
    rows = [{"size": s, "delta": cb[s] - ca[s]} for s in set(ca) | set(cb) if cb[s] != ca[s]]
    rows.sort(key=lambda r: (-r["delta"] * r["size"], r["size"]))
    if rows and rows[0]["delta"] > 0:
        r = rows[0]
        findings.append("%d-byte chunks %+d (%s)" % (r["size"], r["delta"], human_size(r["delta"] * r["size"])))
    return rows


def _arenas(ha, hb):
    if ha is None or hb is None:
        return []
    da = {x["address"]: x for x in ha.get("arenas", [])}
    db = {x["address"]: x for x in hb.get("arenas", [])}
    rows = []
    for addr in set(da) | set(db):
        x, y = da.get(addr), db.get(addr)
        rows.append({"address": addr, "change": "new" if x is None else "removed" if y is None else "same",
                     "heaps_delta": len((y or {}).get("heaps", [])) - len((x or {}).get("heaps", [])),
                     "in_use_bytes_delta": (y or {}).get("in_use_bytes", 0) - (x or {}).get("in_use_bytes", 0),
                     "in_use_chunks_delta": (y or {}).get("in_use_chunks", 0) - (x or {}).get("in_use_chunks", 0)})
    rows.sort(key=lambda r: -r["in_use_bytes_delta"])
    return [r for r in rows if r["change"] != "same" or r["in_use_bytes_delta"] or r["heaps_delta"]]


def _threads(a, b, findings):
    ta = {t["lwp"] if "lwp" in t else t.get("tid") for t in a.get("threads", [])}
    tb = {t["lwp"] if "lwp" in t else t.get("tid") for t in b.get("threads", [])}
    oa = {o["start"]: o for o in a.get("orphan_stacks", [])}
    ob = {o["start"]: o for o in b.get("orphan_stacks", [])}
    new_orphans = [ob[s] for s in ob if s not in oa]
    res = {"before": len(ta), "after": len(tb), "new": sorted(tb - ta), "gone": sorted(ta - tb),
           "orphan_stacks_before": len(oa), "orphan_stacks_after": len(ob), "new_orphan_stacks": new_orphans}
    if new_orphans:
        findings.append("%d new orphan stack%s (%s): threads that exited without pthread_join?" % (
            len(new_orphans), "" if len(new_orphans) == 1 else "s", human_size(sum(o["size"] for o in new_orphans))))
    elif len(tb) > len(ta):
        findings.append("threads %d -> %d" % (len(ta), len(tb)))
    return res


def _strings(sa, sb, findings):
    out = {}
    for rx in set(sa) | set(sb):
        ha = (sa.get(rx) or {}).get("histogram", {})
        hb = (sb.get(rx) or {}).get("histogram", {})
        deltas = {k: hb.get(k, 0) - ha.get(k, 0) for k in set(ha) | set(hb) if hb.get(k, 0) != ha.get(k, 0)}
        out[rx] = {"matches_delta": (sb.get(rx) or {}).get("matches", 0) - (sa.get(rx) or {}).get("matches", 0),
                   "histogram": dict(sorted(deltas.items(), key=lambda kv: -kv[1]))}
        if deltas:
            k, d = max(deltas.items(), key=lambda kv: kv[1])
            if d > 0:
                findings.append("%s: %r %+d" % (rx, k, d))
    return out
