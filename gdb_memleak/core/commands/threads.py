"""memleak threads: every thread's stack and use, stacks nobody owns, and what that means."""
from __future__ import annotations

from .base import Command, add_json_argument
from ..maps import classify
from ..memory.modules import format_symbol, symbolize
from ..render import hexaddr, table, write_json
from ..textparse import human_size
from ..vocabulary import ORPHAN_REASONS, plural
from ..threads import analyze_threads

REASON_TEXT = ORPHAN_REASONS


def frame0_function(target, t):
    if t.function:
        return t.function
    info = symbolize(target, t.pc)
    if info and info["symbol"]:
        return info["symbol"]
    return format_symbol(info)


class ThreadsCommand(Command):
    name = "threads"
    summary = "Every thread's stack (mapping, size, use, guard) and the orphan stacks no live thread owns."

    def add_arguments(self, p):
        p.add_argument("--check", action="store_true", help="also print the findings in words")
        add_json_argument(p)

    def run(self, ctx, args):
        t = ctx.target
        maps = classify(t)
        rep = analyze_threads(t, maps)
        rows, jthreads = [], []
        for ts in rep.threads:
            th, m = ts.thread, ts.mapping
            fn = frame0_function(t, th)
            jthreads.append({"num": th.num, "lwp": th.lwp, "name": th.name, "sp": hex(th.sp), "pc": hex(th.pc),
                             "function": fn, "stack_start": hex(m.start) if m else None,
                             "stack_end": hex(m.end) if m else None, "stack_size": m.size if m else None,
                             "stack_kind": m.kind if m else None, "used": ts.used, "guard": ts.guard,
                             "pthread": hex(ts.pthread.address) if ts.pthread else None})
            rows.append([th.num, th.lwp, th.name or "", hexaddr(th.sp), (fn or "?")[:40],
                         "%s-%s" % (hexaddr(m.start), hexaddr(m.end)) if m else "(SP in no mapping)",
                         human_size(m.size) if m else "-", human_size(ts.used) if ts.used is not None else "-",
                         "%.0f%%" % (100.0 * ts.used / m.size) if m else "-", "yes" if ts.guard else "no"])
        w = ctx.write
        w(table(rows, ["#", "LWP", "name", "SP", "frame 0", "stack", "size", "used", "use", "guard"]) + "\n")
        jorphans = []
        if rep.orphans:
            orow = []
            for o in rep.orphans:
                p = o.pthread
                jorphans.append({"start": hex(o.mapping.start), "end": hex(o.mapping.end), "size": o.mapping.size,
                                 "reason": o.reason, "guard": o.guard,
                                 "pthread": hex(p.address) if p else None, "tid": p.tid if p else None})
                orow.append([hexaddr(o.mapping.start), hexaddr(o.mapping.end), human_size(o.mapping.size),
                             REASON_TEXT[o.reason], hexaddr(p.address) if p else "-",
                             p.tid if p and p.tid is not None and p.tid > 0 else "-"])
            w("\norphan stacks (no live thread owns them):\n")
            w(table(orow, ["start", "end", "size", "why", "struct pthread", "tid"]) + "\n")
        tot = rep.totals()
        w("\n%s, %s of thread stacks in %s; %s, %s; RLIMIT_STACK %s (%s)\n" % (
            plural(tot["threads"], "thread"), human_size(tot["stack_bytes"]), plural(tot["stacks"], "mapping"),
            plural(tot["orphan_stacks"], "orphan stack"), human_size(tot["orphan_bytes"]),
            human_size(rep.rlimit_stack) if rep.rlimit_stack else "unlimited/unknown", rep.rlimit_source))
        if tot["by_size"]:
            w("stack sizes: %s\n" % ", ".join("%d x %s" % (b["stacks"], human_size(b["size"])) for b in tot["by_size"]))
        if args.check:
            w("\n" + ("\n".join("- " + f for f in rep.findings) if rep.findings else "no findings") + "\n")
        if args.json:
            write_json(args.json, {"target": t.describe(), "threads": jthreads, "orphan_stacks": jorphans,
                                   "totals": tot, "findings": rep.findings})
