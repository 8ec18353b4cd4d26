"""memleak snapshot FILE / memleak diff A B: what grew between two moments."""
from __future__ import annotations

import json

from .base import Command, add_json_argument
from ..errors import MemleakError, UsageError
from ..render import table, write_json
from ..snapshot import diff, take
from ..textparse import human_size, signed_size as _signed


class SnapshotCommand(Command):
    name = "snapshot"
    summary = "Save where the memory is now (maps, heap per arena, chunk sizes, classes, threads) to a JSON file."

    def add_arguments(self, p):
        p.add_argument("file", metavar="FILE", help="the snapshot to write (0600)")
        p.add_argument("--strings", metavar="REGEX", action="append", default=[],
                       help="also keep the histogram of REGEX's one (group) over the heap (repeatable)")

    def run(self, ctx, args):
        doc = take(ctx.target, args.strings, ctx.progress_sink())
        write_json(args.file, doc)
        h = doc.get("heap") or {}
        ctx.write("snapshot written to %s: %d mappings, %s in %d in-use chunks, %d classes, %d threads (%.2f s)\n" % (
            args.file, len(doc["maps"]), human_size(h.get("in_use_bytes", 0)), h.get("in_use_chunks", 0),
            len(doc.get("census") or []), len(doc["threads"]), doc["seconds"]))


def _load(path: str) -> dict:
    try:
        with open(path) as fh:
            return json.load(fh)
    except OSError as e:
        raise MemleakError("cannot read %s: %s" % (path, e.strerror))
    except ValueError as e:
        raise MemleakError("%s is not JSON: %s" % (path, e))


class DiffCommand(Command):
    name = "diff"
    summary = "What grew between two snapshots (or two 'watch' samples): regions, classes, chunk sizes, strings."
    needs_target = False

    def add_arguments(self, p):
        p.add_argument("a", metavar="A", help="the earlier snapshot or sample")
        p.add_argument("b", metavar="B", help="the later one")
        p.add_argument("--top", metavar="N", type=int, default=15, help="rows per table (default 15)")
        add_json_argument(p)

    def run(self, ctx, args):
        if args.top < 0:
            raise UsageError("--top takes a count >= 0")
        a, b = _load(args.a), _load(args.b)
        d = diff(a, b, args.a, args.b)
        w = ctx.write
        w("%s (%s) -> %s (%s)\n" % (args.a, a.get("time"), args.b, b.get("time")))
        if d["findings"]:
            w("\n" + "".join("- %s\n" % f for f in d["findings"]))
        else:
            w("\nnothing grew\n")
        n = args.top
        if d["regions"] and n:
            w("\n" + table([[r["start"], r["kind"], r["change"], _signed(r["size_delta"]), _signed(r["rss_delta"]),
                             r["path"] or r["note"] or ""] for r in d["regions"][:n]],
                           ["start", "kind", "change", "size", "rss", "path/note"]) + "\n")
        if d["kinds"] and n:
            w("\n" + table([[k["kind"], human_size(k["before"]), human_size(k["after"]), _signed(k["delta"]),
                             _signed(k["rss_delta"])] for k in d["kinds"]],
                           ["kind", "before", "after", "delta", "rss delta"]) + "\n")
        if d["classes"] and n:
            w("\n" + table([[r["name"], r["before"], r["after"], "%+d" % r["delta"], _signed(r["bytes_delta"])]
                            for r in d["classes"][:n]], ["class", "before", "after", "delta", "bytes"]) + "\n")
        if d["sizes"] and n:
            w("\n" + table([[human_size(r["size"]), "%+d" % r["delta"], _signed(r["delta"] * r["size"])] for r in d["sizes"][:n]],
                           ["chunk size", "delta", "bytes"]) + "\n")
        if d["arenas"] and n:
            w("\n" + table([[r["address"] or "-", r["change"], "%+d" % r["heaps_delta"], "%+d" % r["in_use_chunks_delta"],
                             _signed(r["in_use_bytes_delta"])] for r in d["arenas"][:n]],
                           ["arena", "change", "heaps", "in-use chunks", "in-use bytes"]) + "\n")
        for rx, s in d["strings"].items():
            if s["histogram"] and n:
                w("\n%s: %+d matches\n" % (rx, s["matches_delta"]))
                w(table([[k, "%+d" % v] for k, v in list(s["histogram"].items())[:n]], ["captured", "delta"]) + "\n")
        if args.json:
            write_json(args.json, d)
