"""memleak vgdb …: valgrind's leak check, block lists and referrers as data, with class names,
and leak growth across stops.  Needs valgrind's gdbserver (gdb `target remote | vgdb`, or the
offline front end's --vgdb-pid)."""
from __future__ import annotations

import re
import time

import numpy as np

from .base import Command, add_json_argument
from ..errors import MemoryReadError, TargetError, UsageError
from ..render import table, write_json
from ..textparse import human_size, signed_size as _signed
from ..vocabulary import NO_CLASS
from ..vgdb import parse_block_list, parse_leak_check, parse_who_points_at, timeline

KIND_NAMES = ("definite", "indirect", "possible", "reachable")
MODES = ("any", "increased", "changed", "new")


def _frames_text(stack, n=3):
    out = []
    for f in stack:
        if f["function"] in ("malloc", "calloc", "realloc", "operator new(unsigned long)", "operator new[](unsigned long)",
                             "operator new(unsigned int)", "operator new[](unsigned int)", "memalign",
                             "posix_memalign", "aligned_alloc"):
            continue
        out.append("%s (%s)" % (f["function"], f["location"]) if f["location"] else f["function"])
        if len(out) >= n:
            break
    return " < ".join(out)


def leak_check_command(full: bool, kinds: str, mode: str, limit) -> str:
    parts = ["leak_check", "full" if full else "summary"]
    ks = [k.strip() for k in kinds.split(",") if k.strip()]
    if ks == ["all"]:
        parts += ["kinds", "all"]
    else:
        bad = [k for k in ks if k not in KIND_NAMES]
        if bad or not ks:
            raise UsageError("--kinds: %s; use a comma list of %s, or all" % (", ".join(bad) or "empty",
                                                                             ",".join(KIND_NAMES)))
        parts += ["kinds", ",".join(ks)]
    parts.append(mode)          # always explicit: valgrind's default shows only increases
    if limit:
        parts += ["limited", str(limit)]
    return " ".join(parts)


def _check_valgrind_errors(res: dict, command: str):
    if not res["records"] and not any(v["blocks"] for v in res["summary"].values()) and res["errors"]:
        raise TargetError("valgrind rejected 'monitor %s': %s" % (command, res["errors"][0]))


def _record_json(r):
    return {k: r[k] for k in ("record", "kind", "bytes", "bytes_delta", "blocks", "blocks_delta", "direct_bytes",
                              "indirect_bytes", "stack")}


class VgdbLeakCheck(Command):
    name = "vgdb leak-check"
    summary = "valgrind's leak check (monitor leak_check) parsed: loss records by size, summary, stacks."

    def add_arguments(self, p):
        p.add_argument("detail", nargs="?", choices=("full", "summary"), default="full",
                       help="full (records, default) or summary")
        p.add_argument("--kinds", default="definite,indirect,possible",
                       help="comma list of definite,indirect,possible,reachable, or all (default: the lost ones)")
        p.add_argument("--mode", choices=MODES, default="any",
                       help="any (default), increased, changed or new since the last leak search")
        p.add_argument("--limit", type=int, metavar="N", help="at most N loss records (valgrind's 'limited N')")
        p.add_argument("--raw", action="store_true", help="also print valgrind's own text")
        add_json_argument(p)

    def run(self, ctx, args):
        command = leak_check_command(args.detail == "full", args.kinds, args.mode, args.limit)
        text = ctx.target.monitor(command)
        res = parse_leak_check(text)
        _check_valgrind_errors(res, command)
        w = ctx.write
        if args.raw:
            w(text if text.endswith("\n") else text + "\n")
        recs = sorted(res["records"], key=lambda r: (-r["bytes"], r["record"]))
        if recs:
            w(table([[r["record"], r["kind"], human_size(r["bytes"]) + (" (%s)" % _signed(r["bytes_delta"]) if r["bytes_delta"] is not None else ""),
                      str(r["blocks"]) + (" (%+d)" % r["blocks_delta"] if r["blocks_delta"] is not None else ""),
                      _frames_text(r["stack"])] for r in recs],
                    ["record", "kind", "bytes", "blocks", "allocated at"]) + "\n")
        s = res["summary"]
        w("definitely lost %s in %d blocks; indirectly lost %s in %d; possibly lost %s in %d; "
          "still reachable %s in %d; suppressed %s in %d\n" % tuple(
              x for k in ("definitely_lost", "indirectly_lost", "possibly_lost", "still_reachable", "suppressed")
              for x in (human_size(s[k]["bytes"]), s[k]["blocks"])))
        if res["limited"]:
            if args.limit:
                w("%d of %d loss records shown (--limit %d); valgrind's summary covers only those\n" % (
                    len(recs), res["total_records"], args.limit))
            else:
                w("%d of %d loss records shown (the others are of kinds not asked for: --kinds)\n" % (
                    len(recs), res["total_records"]))
        if args.json:
            write_json(args.json, {"command": "monitor " + command, "summary": s,
                                   "records": [_record_json(r) for r in recs], "total_records": res["total_records"],
                                   "limited": res["limited"]})


def _parse_record_range(text: str):
    m = re.match(r"^(\d+)(?:\.\.(\d+))?$", text.strip())
    if not m:
        raise UsageError("give a loss record number N or a range N..M (from 'memleak vgdb leak-check')")
    a, b = int(m.group(1)), int(m.group(2) or m.group(1))
    if b < a or a < 1:
        raise UsageError("bad loss record range %s" % text)
    return a, b


def class_of_blocks(target, addresses):
    """Class name (vptr at the block's start) per address, None when there is none."""
    from ..vtables import build_index
    idx = build_index(target)
    words = []
    for a in addresses:
        try:
            words.append(target.read_word(a))
        except MemoryReadError:
            words.append(0)
    cls = idx.primary_class_of(np.array(words, dtype=np.uint64))
    return [idx.classes[int(c)].name if c >= 0 else None for c in cls]


class VgdbBlocks(Command):
    name = "vgdb blocks"
    summary = "valgrind's block_list for loss record N or N..M: block addresses and sizes, --types for classes."

    def add_arguments(self, p):
        p.add_argument("records", metavar="N|N..M", help="loss record number or range (after a leak-check)")
        p.add_argument("--limit", type=int, metavar="N", help="at most N blocks per record")
        p.add_argument("--types", action="store_true", help="name each block's class from its vptr, group by class")
        add_json_argument(p)

    def run(self, ctx, args):
        a, b = _parse_record_range(args.records)
        command = "block_list %d" % a if a == b else "block_list %d..%d" % (a, b)
        if args.limit:
            command += " limited %d" % args.limit
        text = ctx.target.monitor(command)
        res = parse_block_list(text)
        if not res["records"]:
            raise TargetError("valgrind listed no blocks for 'monitor %s'%s" % (
                command, ": " + res["errors"][0] if res["errors"] else
                " (run 'memleak vgdb leak-check' first: block_list refers to the last leak search)"))
        w = ctx.write
        out_records = []
        for r in res["records"]:
            blocks = r["block_list"]
            if args.types:
                names = class_of_blocks(ctx.target, [int(x["address"], 16) for x in blocks])
                for x, n in zip(blocks, names):
                    x["class"] = n
            w("loss record %d: %s in %d block%s, %s — %s\n" % (
                r["record"], human_size(r["bytes"]), r["blocks"], "" if r["blocks"] == 1 else "s", r["kind"],
                _frames_text(r["stack"])))
            if args.types:
                groups = {}
                for x in blocks:
                    g = groups.setdefault(x.get("class") or NO_CLASS, [0, 0])
                    g[0] += 1
                    g[1] += x["size"]
                w(table([[n, c, human_size(s)] for n, (c, s) in sorted(groups.items(), key=lambda kv: -kv[1][0])],
                        ["class", "blocks", "bytes"]) + "\n")
            w(table([[x["address"], human_size(x["size"]), x.get("class") or NO_CLASS,
                      "indirect (record %d)" % x["indirect_of_record"] if x["indirect_of_record"] else "direct"]
                     for x in blocks], ["address", "size", "class", "lost"]) + "\n")
            rj = _record_json(r)
            rj["blocks_list"] = blocks
            out_records.append(rj)
        if args.json:
            write_json(args.json, {"command": "monitor " + command, "records": out_records})


class VgdbWhoPointsAt(Command):
    name = "vgdb who-points-at"
    summary = "valgrind's who_points_at ADDR [LEN]: every referrer, and where it lives (block, stack, data, register)."

    def add_arguments(self, p):
        p.add_argument("address", metavar="ADDR", help="address (a gdb expression inside gdb)")
        p.add_argument("length", metavar="LEN", nargs="?", type=int, default=1,
                       help="also count pointers into [ADDR, ADDR+LEN) (default 1)")
        add_json_argument(p)

    def run(self, ctx, args):
        addr = ctx.evaluate(args.address)
        if args.length < 1:
            raise UsageError("LEN must be at least 1")
        command = "who_points_at 0x%x %d" % (addr, args.length)
        res = parse_who_points_at(ctx.target.monitor(command))
        w = ctx.write
        if not res["referrers"]:
            w("nothing points at 0x%x%s\n" % (addr, " (+%d)" % args.length if args.length > 1 else ""))
        else:
            w(table([[r["address"] or "register %s (thread %d)" % (r["register"], r["thread"]),
                      ("interior +%d" % r["offset"]) if r["interior"] else "start", r["where"],
                      r["description"][:80]] for r in res["referrers"]],
                    ["referrer", "points at", "where", "valgrind says"]) + "\n")
        if args.json:
            write_json(args.json, {"command": "monitor " + command, **res})


class _Watch:
    """Leak checks collected by `vgdb watch --every-stop` until --stop."""
    checks: list = []
    disconnect = None
    command = ""


class VgdbWatch(Command):
    name = "vgdb watch"
    summary = "leak_check at each stop (or breakpoint hit): per-record growth as a timeline."

    def add_arguments(self, p):
        g = p.add_mutually_exclusive_group()
        g.add_argument("--every-stop", action="store_true", help="check at every stop from now on (gdb)")
        g.add_argument("--breakpoint", metavar="LOCATION", help="continue to LOCATION --times times (gdb)")
        g.add_argument("--interval", type=float, metavar="SEC", help="check every SEC seconds (offline --vgdb-pid)")
        g.add_argument("--report", action="store_true", help="print what --every-stop collected")
        g.add_argument("--stop", action="store_true", help="end --every-stop and print its report")
        p.add_argument("--times", type=int, default=3, metavar="N", help="number of checks (default 3)")
        p.add_argument("--kinds", default="all", help="kinds to check (default all)")
        add_json_argument(p)

    def _check(self, target, command):
        res = parse_leak_check(target.monitor(command))
        _check_valgrind_errors(res, command)
        return {"time": time.time(), "summary": res["summary"], "records": res["records"]}

    def run(self, ctx, args):
        command = leak_check_command(True, args.kinds, "increased", None)
        if args.times < 1:
            raise UsageError("--times must be at least 1")
        if args.every_stop:
            if _Watch.disconnect:
                raise UsageError("already watching every stop ('memleak vgdb watch --stop' ends it)")
            ctx.target.monitor("v.info n_errs_found")     # fail now, not at the first stop
            _Watch.checks = [self._check(ctx.target, command)]
            _Watch.command = command
            _Watch.disconnect = ctx.target.on_stop(lambda t: _Watch.checks.append(self._check(t, _Watch.command)))
            ctx.write("watching: a leak check at every stop ('memleak vgdb watch --report' or --stop)\n")
            return
        if args.report or args.stop:
            if not _Watch.checks:
                raise UsageError("nothing collected: start with 'memleak vgdb watch --every-stop'")
            checks = _Watch.checks
            if args.stop and _Watch.disconnect:
                _Watch.disconnect()
                _Watch.disconnect = None
        elif args.breakpoint:
            checks = [self._check(ctx.target, command)]
            try:
                for _ in range(args.times):
                    if not ctx.target.continue_to(args.breakpoint):
                        ctx.warn("the program stopped elsewhere or ended: %d checks collected" % len(checks))
                        break
                    checks.append(self._check(ctx.target, command))
            finally:
                release = getattr(ctx.target, "release", None)
                if release:
                    release()
        elif args.interval:
            checks = [self._check(ctx.target, command)]
            for _ in range(args.times):
                time.sleep(args.interval)
                checks.append(self._check(ctx.target, command))
        else:
            raise UsageError("give --every-stop, --breakpoint LOCATION, --interval SEC, --report or --stop")
        self._report(ctx, checks, args)

    def _report(self, ctx, checks, args):
        rows = timeline(checks)
        grew = [r for r in rows if r["grew_every_time"]]
        w = ctx.write
        w("%d leak checks; %d loss records, %d grew at every check\n" % (len(checks), len(rows), len(grew)))
        if grew:
            w(table([[r["kind"], " -> ".join(human_size(b or 0) for b in r["bytes"]), _signed(r["growth"]),
                      _frames_text(r["stack"])] for r in grew],
                    ["kind", "bytes at each check", "growth", "allocated at"]) + "\n")
        if args.json:
            write_json(args.json, {"command": "monitor " + leak_check_command(True, args.kinds, "increased", None),
                                   "checks": [{"time": c["time"], "summary": c["summary"]} for c in checks],
                                   "records": [{k: r[k] for k in ("kind", "stack", "bytes", "blocks", "deltas",
                                                                  "growth", "grew_every_time")} for r in rows]})
