"""The base of the command layer shared by gdb and the offline CLI: argument parsing that
never exits, the run context, and the Command class every subcommand derives from.  The
registry of subcommands is the package (``commands/__init__.py``)."""
from __future__ import annotations

import argparse
from typing import Callable, Optional

from ..errors import UsageError
from ..settings import Settings
from ..memory.target import Target


class HelpShown(Exception):
    """``-h`` was given: the help text was written, nothing else to do."""


class ArgParser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of exiting the process (gdb must survive)."""

    def __init__(self, *a, out: Optional[Callable[[str], None]] = None, **kw):
        kw.setdefault("add_help", True)
        super().__init__(*a, **kw)
        self._out = out

    def error(self, message):
        hint = ("help %s" % self.prog) if self.prog.startswith("memleak") else ("%s --help" % self.prog)
        raise UsageError("%s: %s (see '%s')" % (self.prog, message, hint))

    def exit(self, status=0, message=None):
        if status:
            raise UsageError((message or "%s: bad arguments" % self.prog).strip())
        raise HelpShown()

    def _print_message(self, message, file=None):
        if message and self._out is not None:
            self._out(message)


class Context:
    """What a command runs against: the target, settings, output sinks and address evaluation."""

    def __init__(self, target_factory: Callable[[], Target], settings: Settings,
                 write: Callable[[str], None], warn: Callable[[str], None],
                 evaluate: Callable[[str], int], front: str):
        self._target_factory = target_factory
        self._target: Optional[Target] = None
        self.settings = settings
        self.write = write
        self.warn = warn
        self.evaluate = evaluate
        self.front = front        # "gdb" or "cli"

    @property
    def target(self) -> Target:
        if self._target is None:
            self._target = self._target_factory()
            for w in self._target.warnings:
                self.warn("warning: " + w)
        return self._target

    def progress_sink(self):
        return self.warn if self.settings.progress else None


def parse_int(text: str) -> int:
    """Offline address/number syntax: hex (0x…) or decimal."""
    try:
        v = int(str(text).replace("_", ""), 0)
    except ValueError:
        raise UsageError("not an address: %r (offline, use hex like 0x1f3a000 or decimal)" % text)
    if v < 0:
        raise UsageError("not an address: %r is negative" % text)
    return v


class Command:
    name = ""
    summary = ""
    description = ""
    needs_target = True       # False: runs on files alone (offline without --core)

    def build_parser(self, prog: str, out=None, add_help: bool = True) -> ArgParser:
        p = ArgParser(prog=prog, description=self.description or self.summary, out=out, add_help=add_help)
        self.add_arguments(p)
        return p

    def add_arguments(self, p: ArgParser):
        pass

    def run(self, ctx: Context, args) -> None:
        raise NotImplementedError

    def help_text(self, prog: str) -> str:
        """gdb's help: the summary line, then Usage: with UPPERCASE metavariables, what the
        description adds to the summary, then each option once (no -h: 'help' is gdb's)."""
        p = self.build_parser(prog, add_help=False)
        p.description = None
        raw_usage = p.format_usage()
        body = p.format_help()[len(raw_usage):].strip("\n")
        usage = raw_usage.strip()
        if usage.lower().startswith("usage:"):
            usage = "Usage:" + usage[6:]
        parts = [self.summary, usage]
        extra = (self.description or "")[len(self.summary):].strip() if (self.description or "").startswith(
            self.summary) else (self.description or "").strip()
        if extra:
            import textwrap
            parts.append("\n" + textwrap.fill(extra, 79))
        if body:
            parts.append("\n" + body)
        return "\n".join(parts)


def add_json_argument(p: ArgParser):
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON to FILE")


def add_range_arguments(p: ArgParser):
    p.add_argument("start", nargs="?", metavar="START", help="start address (a gdb expression inside gdb)")
    p.add_argument("end", nargs="?", metavar="END", help="end address, exclusive")


def resolve_range(ctx: Context, args):
    """Evaluate START END; None when neither is given."""
    if args.start is None and args.end is None:
        return None
    if args.start is None or args.end is None:
        raise UsageError("give both START and END")
    start, end = ctx.evaluate(args.start), ctx.evaluate(args.end)
    top = 1 << (8 * ctx.target.pointer_size)
    for what, v in (("START", start), ("END", end)):
        if v < 0 or v > top or (what == "START" and v == top):
            raise UsageError("%s %s is not an address of this %d-bit target" % (
                what, ("-0x%x" % -v) if v < 0 else "0x%x" % v, 8 * ctx.target.pointer_size))
    if end <= start:
        raise UsageError("empty or reversed range 0x%x-0x%x: END must be above START" % (start, end))
    return start, end


def clip_range(rng, maps):
    """The parts of [start, end) that are mapped, as (start, end, mapping) pieces in address
    order; one clear error when none is: unmapped space is never read."""
    start, end = rng
    out = [(max(start, m.start), min(end, m.end), m) for m in maps if m.start < end and start < m.end]
    if not out:
        from ..errors import MemleakError
        raise MemleakError("0x%x-0x%x is not mapped in the target: not one byte of it (see 'memleak maps')" % (start, end))
    return out


def add_scan_arguments(p: ArgParser, heap_help: str = "main heap, arena heaps and mmapped chunks"):
    """START END, or one of --heap, --anon, --all: what a scanning command reads."""
    add_range_arguments(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--heap", action="store_true", help=heap_help)
    g.add_argument("--anon", action="store_true", help="every writable anonymous mapping (the heap and other anonymous memory)")
    g.add_argument("--all", action="store_true", help="all writable memory")


def scan_ranges(ctx: Context, args, maps):
    """(ranges, label) for add_scan_arguments' options; ranges clipped to the mappings."""
    rng = resolve_range(ctx, args)
    modes = sum(bool(x) for x in (rng, args.heap, args.anon, args.all))
    if modes != 1:
        raise UsageError("give START END, or one of --heap, --anon, --all")
    if rng:
        # only the mapped parts are read: unmapped space costs nothing
        return [(a, b) for a, b, _m in clip_range(rng, maps)], {"start": hex(rng[0]), "end": hex(rng[1])}
    if args.heap:
        from ..heap import heap_ranges
        ranges, label = heap_ranges(ctx.target, maps), {"heap": True}
    elif args.anon:
        ranges = [(m.start, m.end) for m in maps if m.kind in ("main-heap", "arena-heap", "anon") and "w" in m.perms[:3]]
        label = {"anon": True}
    else:
        ranges = [(m.start, m.end) for m in maps if "w" in m.perms[:3] and m.kind not in ("vvar",)]
        label = {"all": True}
    if not ranges:
        from ..errors import MemleakError
        raise MemleakError("nothing to scan: no mapping of that kind")
    return ranges, label
