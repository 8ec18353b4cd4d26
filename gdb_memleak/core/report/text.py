"""The report as text: the page's sections as tables, for the terminal (no --html)."""
from __future__ import annotations

from typing import List

from ..render import table
from ..textparse import human_size, signed_size
from ..vocabulary import ORPHAN, plural
from . import sections


INDENT = "· "       # tabulate strips leading blanks


def _pct(part, whole) -> str:
    return "%.0f%%" % (100.0 * part / whole) if whole else "-"


def tree_rows(memory: dict, top: int) -> List[list]:
    """The treemap as an indented table: every kind, its top children, their top classes."""
    nodes = memory["nodes"]
    kids = {}
    for n in nodes:
        kids.setdefault(n["parent"], []).append(n)
    root = next(n for n in nodes if n["id"] == "all")
    rows = []

    def walk(n, depth):
        ch = sorted(kids.get(n["id"], []), key=lambda x: -x["bytes"])
        for c in ch[:top]:
            extra = ""
            if c.get("leaked_chunks"):
                extra = "%d leaked (%s)" % (c["leaked_chunks"], human_size(c["leaked_bytes"]))
            rows.append([INDENT * depth + c["label"], human_size(c["bytes"]), _pct(c["bytes"], root["bytes"]),
                         c.get("chunks", "") if c.get("kind") == "class" else "", extra])
            walk(c, depth + 1)
        if len(ch) > top:
            rest = ch[top:]
            rows.append([INDENT * depth + "(%d more)" % len(rest), human_size(sum(x["bytes"] for x in rest)),
                         _pct(sum(x["bytes"] for x in rest), root["bytes"]), "", ""])

    walk(root, 0)
    return rows


def render_text(doc: dict, top: int = 15) -> str:
    out: List[str] = []
    w = out.append
    secs = sections(doc)
    tgt = doc["target"]
    w("memleak report: %s, pid %s, %s (%s)\n" % (tgt.get("exe") or tgt.get("executable") or "?", tgt.get("pid"),
                                               tgt.get("kind"), tgt.get("arch")))

    def head(key):
        w("\n== %s ==\n" % secs[key])

    head("findings")
    for f in doc["findings"]:
        w("- [%s] %s\n" % (f["section"], f["text"]))
    if not doc["findings"]:
        w("no findings\n")

    head("memory")
    w(table(tree_rows(doc["memory"], top), ["where", "bytes", "share", "objects", "leaked"]) + "\n")
    h = doc.get("heap")
    if h is not None:
        w("\n" + table([[a["kind"], a["address"] or "(by shape)", len(a["heaps"]), human_size(a["size"]),
                         a["in_use_chunks"], human_size(a["in_use_bytes"]), a["free_chunks"],
                         human_size(a["free_bytes"]), human_size(a["top_size"]), "%.1f%%" % (100 * a["fragmentation"])]
                        for a in h["arenas"]],
                       ["arena", "malloc_state", "heaps", "size", "in use", "in-use bytes", "free", "free bytes",
                        "top", "frag"]) + "\n")
        w("found by: %s; %d mmapped chunks (%s)\n" % (h["discovery"], h["mmapped"]["chunks"],
                                                     human_size(h["mmapped"]["bytes"])))

    head("address-space")
    tot = doc["maps"]["totals"]
    rows = [[k, v["count"], human_size(v["size"])] for k, v in sorted(tot.items(), key=lambda kv: -kv[1]["size"])]
    rows.append(["total", sum(v["count"] for v in tot.values()), human_size(sum(v["size"] for v in tot.values()))])
    w(table(rows, ["kind", "mappings", "size"]) + "\n")
    big = sorted(doc["maps"]["mappings"], key=lambda m: -m["size"])[:top]
    w("\nlargest mappings:\n" + table([[m["start"], m["end"], human_size(m["size"]), m["perms"], m["kind"],
                                         (m["path"] or ("LWP %d" % m["owner_lwp"] if m["owner_lwp"] else "")
                                          or m["note"] or "")] for m in big],
                                        ["start", "end", "size", "perms", "kind", "owner/path"]) + "\n")

    head("classes")
    cs = doc.get("classes") or []
    if cs:
        w(table([[c["name"], c["count"], c["reachable"], c["leaked"], human_size(c["size"]),
                  human_size(c["bytes"])] for c in cs[:top]],
                ["class", "in use", "reachable", "leaked", "size", "bytes"]) + "\n")
        if len(cs) > top:
            w("(%d more classes)\n" % (len(cs) - top))
    else:
        w((doc.get("census") or {}).get("note") or "no C++ objects counted (no heap)")
        w("\n")

    head("leaks")
    lk = doc.get("leaks")
    if lk is None:
        w("no glibc heap: no leak check\n")
    else:
        from ..commands.leaks import leak_text
        w(leak_text(lk, top))

    head("threads")
    th = doc["threads"]
    w(table([[x["num"], x["lwp"], x["name"] or "", x["sp"], (x["function"] or "?")[:40],
              "%s-%s" % (x["stack_start"], x["stack_end"]) if x["stack_start"] else "(SP in no mapping)",
              human_size(x["stack_size"]), human_size(x["used"]),
              _pct(x["used"], x["stack_size"]) if x["stack_size"] else "-", "yes" if x["guard"] else "no"]
             for x in th["threads"]],
            ["#", "LWP", "name", "SP", "frame 0", "stack", "size", "used", "use", "guard"]) + "\n")
    if th["orphan_stacks"]:
        w("\n%ss (no live thread owns them):\n" % ORPHAN)
        w(table([[o["start"], o["end"], human_size(o["size"]), o["why"], o["pthread"] or "-",
                  o["tid"] if o["tid"] is not None else "-"] for o in th["orphan_stacks"]],
                ["start", "end", "size", "why", "struct pthread", "tid"]) + "\n")
    tt = th["totals"]
    w("%s, %s of thread stacks; %s, %s\n" % (plural(tt["threads"], "thread"), human_size(tt["stack_bytes"]),
                                             plural(tt["orphan_stacks"], ORPHAN), human_size(tt["orphan_bytes"])))

    g = doc.get("growth")
    if g is not None:
        head("growth")
        w("%s -> now\n" % (g["a"].get("time") or "baseline"))
        w("".join("- %s\n" % f for f in g["findings"]) or "nothing grew\n")
        if g["regions"]:
            w("\n" + table([[r["start"], r["kind"], r["change"], signed_size(r["size_delta"]),
                             signed_size(r["rss_delta"]), r["path"] or r["note"] or ""] for r in g["regions"][:top]],
                           ["start", "kind", "change", "size", "rss", "path/note"]) + "\n")
        if g["kinds"]:
            w("\n" + table([[k["kind"], human_size(k["before"]), human_size(k["after"]), signed_size(k["delta"])]
                            for k in g["kinds"]], ["kind", "before", "after", "delta"]) + "\n")
        if g["classes"]:
            w("\n" + table([[r["name"], r["before"], r["after"], "%+d" % r["delta"], signed_size(r["bytes_delta"])]
                            for r in g["classes"][:top]], ["class", "before", "after", "delta", "bytes"]) + "\n")
        if g["sizes"]:
            w("\n" + table([[r["size"], "%+d" % r["delta"], signed_size(r["delta"] * r["size"])]
                            for r in g["sizes"][:top]], ["chunk size", "delta", "bytes"]) + "\n")
    w("\nreport of %s in %.2f s\n" % (plural(len(secs), "section"), doc["seconds"]))
    return "".join(out)
