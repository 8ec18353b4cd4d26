"""memleak strings: regex matches, a histogram of one captured group, and the most repeated
printable strings over a range, the heap, anonymous or all writable memory."""
from __future__ import annotations

import re
import time

from .base import Command, add_json_argument, add_scan_arguments, scan_ranges
from ..errors import UsageError
from ..maps import classify
from ..progress import Progress
from ..render import table, write_json
from ..strings import MAX_LEN, scan_strings
from ..textparse import human_size


def _compile(text, what, groups=None):
    try:
        rx = re.compile(text.encode("utf-8", "surrogateescape"))
    except re.error as e:
        raise UsageError("bad %s regex %r: %s" % (what, text, e))
    if groups is not None and rx.groups != groups:
        raise UsageError("%s needs a regex with exactly one (group): %r has %d" % (what, text, rx.groups))
    return rx


def _text(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


class StringsCommand(Command):
    name = "strings"
    summary = "Count regex matches, histogram a captured group, and find the most repeated strings in memory."
    description = (summary + " Bytes are matched as they are (Python 're' over bytes); chunks are read with an "
                   "overlap, so a match across a chunk border counts once. Without --pattern or --histogram, "
                   "the most repeated printable strings (ASCII and UTF-16LE) are listed with the bytes their "
                   "copies waste.")

    def add_arguments(self, p):
        add_scan_arguments(p)
        p.add_argument("--pattern", metavar="REGEX", help="count the matches of REGEX")
        p.add_argument("--histogram", metavar="REGEX",
                       help="histogram of the text REGEX's one (group) captures, e.g. 'channelid=([0-9]+)'")
        p.add_argument("--top", metavar="N", type=int, default=None,
                       help="rows of the histogram and of the repeated strings (default 20); with --pattern or "
                            "--histogram, also list the N most repeated strings")
        p.add_argument("--min-len", metavar="N", type=int, default=8,
                       help="shortest printable string counted as a repeated string (default 8)")
        p.add_argument("--in-use", action="store_true",
                       help="with --heap: only in-use chunks (stale bytes in free chunks do not count)")
        add_json_argument(p)

    def run(self, ctx, args):
        t = ctx.target
        t0 = time.monotonic()
        if args.min_len < 1 or (args.top is not None and args.top < 0):
            raise UsageError("--min-len takes a length >= 1 and --top a count >= 0")
        if args.in_use and not args.heap:
            raise UsageError("--in-use needs --heap")
        pattern = _compile(args.pattern, "--pattern") if args.pattern else None
        hist = _compile(args.histogram, "--histogram", groups=1) if args.histogram else None
        top_n = 20 if args.top is None else args.top
        want_top = (pattern is None and hist is None) or args.top is not None
        maps = classify(t)
        ranges, label = scan_ranges(ctx, args, maps)
        heap = None
        if args.in_use:
            from ..heap import walk_heap
            heap = walk_heap(t, maps, ctx.progress_sink())
            ranges = sorted(s.scan_range(t.pointer_size) for s in heap.segments)
        total = sum(b - a for a, b in ranges)
        prog = Progress("strings", total, ctx.progress_sink())
        res = scan_strings(t, ranges, pattern, hist, args.min_len, want_top and top_n > 0, heap, prog)
        prog.finish()
        elapsed = time.monotonic() - t0
        w = ctx.write
        histogram = sorted(((_text(k), n) for k, n in res.histogram.items()), key=lambda kv: (-kv[1], kv[0]))
        top = res.top(top_n) if want_top else []
        if pattern is not None or hist is not None:
            w("%d match%s of %s in %s\n" % (res.matches, "" if res.matches == 1 else "es",
                                            args.pattern or args.histogram, human_size(res.scanned_bytes)))
        if hist is not None and top_n:
            w(table([[n, k] for k, n in histogram[:top_n]], ["count", "captured"]) + "\n")
            if len(histogram) > top_n:
                w("%d distinct values; top %d shown\n" % (len(histogram), top_n))
        if top:
            w(table([[r["count"], human_size(r["bytes"]), r["encoding"], _clip(r["text"])] for r in top],
                    ["copies", "wasted", "encoding", "string"]) + "\n")
        elif want_top and top_n:
            w("no printable string of %d+ characters is repeated\n" % args.min_len)
        if res.skipped:
            w("skipped %d unreadable range%s, %s\n" % (len(res.skipped), "" if len(res.skipped) == 1 else "s",
                                                       human_size(sum(b - a for a, b, _ in res.skipped))))
        if heap is not None:
            for f in heap.findings:
                w("heap finding: %s\n" % f.text())
        w("scanned %s in %.2f s%s\n" % (human_size(res.scanned_bytes), elapsed,
                                        " (in-use chunks only)" if args.in_use else ""))
        if args.json:
            write_json(args.json, {
                "target": t.describe(), "range": label, "in_use": bool(args.in_use),
                "scanned_bytes": res.scanned_bytes, "matches": res.matches,
                "histogram": dict(histogram), "top": top, "max_match_length": MAX_LEN,
                "skipped": [{"start": hex(a), "end": hex(b), "reason": r} for a, b, r in res.skipped],
                "findings": [f.to_json() for f in heap.findings] if heap is not None else [],
                "seconds": round(elapsed, 3)})


def _clip(text: str, n: int = 80) -> str:
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= n else text[:n - 1] + "…"
