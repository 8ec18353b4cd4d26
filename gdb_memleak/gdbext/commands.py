"""gdb commands: the ``memleak`` prefix, one gdb.Command per core subcommand, and the
``set/show memleak`` parameters.  Errors the user can cause become gdb.GdbError."""
from __future__ import annotations

import time
import traceback
from typing import Optional

import gdb

from ..core.commands import registry
from ..core.commands.base import Context, HelpShown
from ..core.errors import Interrupted, MemleakError
from ..core.settings import Settings
from ..core.textparse import human_size, parse_size

SETTINGS = Settings()


def _evaluate(expr: str) -> int:
    try:
        v = gdb.parse_and_eval(expr)
        # x's rule: a pointer or an integer is the address; an object (struct, array, function,
        # a variable of any other type) stands for its own address
        code = v.type.strip_typedefs().code
        if code not in (gdb.TYPE_CODE_PTR, gdb.TYPE_CODE_INT, gdb.TYPE_CODE_ENUM, gdb.TYPE_CODE_CHAR,
                        gdb.TYPE_CODE_BOOL) and v.address is not None:
            v = v.address
        elif code == gdb.TYPE_CODE_FUNC and v.address is not None:
            v = v.address
        return int(v.cast(gdb.lookup_type("unsigned long long"))) if v.type.sizeof <= 8 else int(v)
    except gdb.error as e:
        raise MemleakError("cannot evaluate %r: %s" % (expr, e))


def _warn(text: str):
    gdb.write(text.rstrip("\n") + "\n", gdb.STDERR)


def _stop_time_line(cmd, target, seconds: float) -> Optional[str]:
    """How long the command kept a live process stopped, worded for what happened: gdb stopped
    it (at attach or at a breakpoint), not us; the figure is the command's own run time."""
    if target is None or target.kind != "live":
        return None
    return "memleak %s: the command ran for %.2f s while the process was stopped" % (cmd.name, seconds)


def run_command(cmd, arg: str, from_tty: bool):
    """Run one subcommand.  Every way it can end is one of: its output (then, on a live
    process, one line saying how long it ran while the process was stopped), or exactly one
    gdb.GdbError line — a user-facing error, "interrupted" on Ctrl-C, or an internal error."""
    from .target import GdbTarget, process_gone
    t0 = time.monotonic()
    ctx = Context(GdbTarget, SETTINGS, gdb.write, _warn, _evaluate, "gdb")
    resumed = []

    def on_cont(event):
        resumed.append(True)    # the program ran during the command (vgdb watch --breakpoint)
    gdb.events.cont.connect(on_cont)
    try:
        try:
            parser = cmd.build_parser("memleak " + cmd.name, out=gdb.write)
            args = parser.parse_args(gdb.string_to_argv(arg))
            cmd.run(ctx, args)
        except HelpShown:
            return
        except Interrupted:
            raise gdb.GdbError("memleak %s: interrupted" % cmd.name)
        except MemleakError as e:
            raise gdb.GdbError(str(e))
        except gdb.MemoryError as e:
            raise gdb.GdbError("cannot read target memory: %s" % e)
        except KeyboardInterrupt:
            raise gdb.GdbError("memleak %s: interrupted" % cmd.name)
        except gdb.GdbError:
            raise
        except gdb.error as e:
            if str(e).strip() == "Quit":            # gdb's own Ctrl-C
                raise gdb.GdbError("memleak %s: interrupted" % cmd.name)
            t = ctx._target
            if t is not None and hasattr(t, "check_gone"):
                try:
                    t.check_gone(e, force=True)     # the target went away under us: say that
                except MemleakError as gone:
                    raise gdb.GdbError(str(gone))
            if SETTINGS.debug:
                traceback.print_exc()
                raise
            raise gdb.GdbError("memleak %s: gdb failed: %s ('set memleak debug on' shows where)" % (cmd.name, e))
        except Exception as e:
            if SETTINGS.debug:
                traceback.print_exc()
                raise
            raise gdb.GdbError("memleak %s: internal error: %s: %s ('set memleak debug on' shows the traceback)"
                               % (cmd.name, type(e).__name__, e))
        t = ctx._target
        if t is not None and t.kind == "live" and not resumed and process_gone(t.pid):
            raise gdb.GdbError("memleak %s: the process %s exited while the command ran: what it printed is "
                               "incomplete; 'run' it again or open a core" % (cmd.name, t.pid))
        line = None if resumed else _stop_time_line(cmd, t, time.monotonic() - t0)
        if line:
            _warn(line)
    finally:
        try:
            gdb.events.cont.disconnect(on_cont)
        except (ValueError, RuntimeError):
            pass
        t = ctx._target
        close = getattr(t, "close", None)
        if close is not None:
            close()


class MemleakPrefix(gdb.Command):
    """Find where a process's memory went: mappings, dumps, objects, leaks, threads.

Usage: memleak SUBCOMMAND [ARGS]   ('help memleak SUBCOMMAND' for each one)
The same subcommands run offline: python -m gdb_memleak --core CORE SUBCOMMAND ..."""

    def __init__(self):
        super().__init__("memleak", gdb.COMMAND_DATA, gdb.COMPLETE_NONE, True)

    def invoke(self, arg, from_tty):
        self.dont_repeat()
        if arg.strip():
            raise gdb.GdbError("memleak: unknown subcommand %r (see 'help memleak')" % arg.split()[0])
        _list_subcommands("")


def _list_subcommands(prefix: str):
    """What gdb's prefix commands print: each subcommand with its one-line summary."""
    rows = [(c.name, c.summary) for c in registry() if (c.name.startswith(prefix + " ") if prefix else True)]
    rows = [(n[len(prefix) + 1:] if prefix else n, s) for n, s in rows]
    if not prefix:
        rows = [r for r in rows if " " not in r[0]] + [("vgdb", "valgrind's gdbserver answers as data "
                                                        "(memleak vgdb SUBCOMMAND)")]
    width = max(len(n) for n, _ in rows)
    gdb.write("List of memleak%s subcommands:\n\n" % (" " + prefix if prefix else ""))
    for n, s in sorted(rows):
        gdb.write("memleak %s%s -- %s\n" % (prefix + " " if prefix else "", n.ljust(width), s))
    gdb.write("\nType \"help memleak%s SUBCOMMAND\" for its options.\n" % (" " + prefix if prefix else ""))


_FILE_OPTIONS = ("--json", "--addresses", "--output", "-o", "--html", "--baseline")


def _completer(cmd):
    """Subcommand options, their fixed values (--kind, --sort, choices), file names after file
    options, gdb's expression completion for addresses."""
    from gdb_memleak.core.commands.maps import KIND_CHOICES
    parser = cmd.build_parser("memleak " + cmd.name, add_help=False)
    opts = sorted(o for a in parser._actions for o in a.option_strings if o.startswith("--"))
    values = {}
    for a in parser._actions:
        for o in a.option_strings:
            if a.choices:
                values[o] = sorted(str(c) for c in a.choices)
            elif o == "--kind":
                values[o] = list(KIND_CHOICES)

    def complete(self, text, word):
        words = text.split()
        last = "" if not words or text.endswith(" ") else words[-1]
        prev = (words[-1] if text.endswith(" ") else words[-2]) if len(words) >= (1 if text.endswith(" ") else 2) \
            else None
        word = word or ""
        cut = len(last) - len(word)          # gdb completes the part after its word-break characters

        def fit(cands):
            return [c[cut:] for c in cands if c.startswith(last)]
        if prev in _FILE_OPTIONS:
            import glob
            import os
            return fit(sorted(p + ("/" if os.path.isdir(p) else "") for p in glob.glob(os.path.expanduser(last) + "*")))
        if prev in values:
            have = last.rpartition(",")[0]
            return fit([(have + "," if have else "") + v for v in values[prev]])
        if last.startswith("-"):
            return fit(opts)
        return gdb.COMPLETE_EXPRESSION
    return complete


def _make_command_class(cmd):
    def __init__(self):
        gdb.Command.__init__(self, "memleak " + cmd.name, gdb.COMMAND_DATA)

    def invoke(self, arg, from_tty):
        self.dont_repeat()
        run_command(cmd, arg, from_tty)

    return type("Memleak_" + cmd.name.replace("-", "_").replace(" ", "_"), (gdb.Command,),
                {"__doc__": cmd.help_text("memleak " + cmd.name), "__init__": __init__, "invoke": invoke,
                 "complete": _completer(cmd)})


class _SubPrefix(gdb.Command):
    """valgrind's gdbserver answers as data: memleak vgdb leak-check | blocks | who-points-at | watch.

Needs gdb connected to valgrind: valgrind --vgdb=yes --vgdb-error=0 PROG, then target remote | vgdb --pid=N"""

    def __init__(self, word):
        super().__init__("memleak " + word, gdb.COMMAND_DATA, gdb.COMPLETE_NONE, True)
        self.word = word

    def invoke(self, arg, from_tty):
        self.dont_repeat()
        if arg.strip():
            raise gdb.GdbError("memleak %s: unknown subcommand %r (see 'help memleak %s')" % (
                self.word, arg.split()[0], self.word))
        _list_subcommands(self.word)


class _SetPrefix(gdb.Command):
    """Settings of gdb_memleak."""

    def __init__(self, verb):
        super().__init__("%s memleak" % verb, gdb.COMMAND_DATA, gdb.COMPLETE_NONE, True)
        self.verb = verb

    def invoke(self, arg, from_tty):
        self.dont_repeat()
        if self.verb == "show" or not arg.strip():
            for name in ("debug", "progress", "max-dump-size"):
                gdb.write(gdb.execute("show memleak " + name, to_string=True))
            if self.verb == "show":
                from ..core import native
                gdb.write("The scans' kernel is %s (GDB_MEMLEAK_NATIVE=0 before starting gdb: numpy).\n"
                          % native.status())
            if self.verb == "set":
                gdb.write("Use 'set memleak SETTING VALUE'.\n")
            return
        raise gdb.GdbError("set memleak: unknown setting %r (see 'help set memleak')" % arg.split()[0])


class DebugParam(gdb.Parameter):
    """Show Python tracebacks of gdb_memleak's internal errors."""
    set_doc = "Set whether gdb_memleak shows tracebacks of internal errors."
    show_doc = "Show whether gdb_memleak shows tracebacks of internal errors."

    def __init__(self):
        super().__init__("memleak debug", gdb.COMMAND_DATA, gdb.PARAM_BOOLEAN)
        self.value = SETTINGS.debug

    def get_set_string(self):
        SETTINGS.debug = bool(self.value)
        return ""

    def get_show_string(self, svalue):
        return "memleak debug is %s." % svalue


class ProgressParam(gdb.Parameter):
    """Print progress lines during work that takes over ~2 seconds."""
    set_doc = "Set whether gdb_memleak prints progress on long work."
    show_doc = "Show whether gdb_memleak prints progress on long work."

    def __init__(self):
        super().__init__("memleak progress", gdb.COMMAND_DATA, gdb.PARAM_BOOLEAN)
        self.value = SETTINGS.progress

    def get_set_string(self):
        SETTINGS.progress = bool(self.value)
        return ""

    def get_show_string(self, svalue):
        return "memleak progress is %s." % svalue


class MaxDumpSizeParam(gdb.Parameter):
    """Largest total 'memleak dump' writes without --force (e.g. 1G, 512M)."""
    set_doc = "Set the largest total size 'memleak dump' writes without --force."
    show_doc = "Show the largest total size 'memleak dump' writes without --force."

    def __init__(self):
        super().__init__("memleak max-dump-size", gdb.COMMAND_DATA, gdb.PARAM_STRING)
        self.value = "1G"

    def get_set_string(self):
        try:
            SETTINGS.max_dump_size = parse_size(self.value)
        except ValueError as e:
            self.value = human_size(SETTINGS.max_dump_size).replace(" ", "").replace("iB", "")
            raise gdb.GdbError(str(e))
        return ""

    def get_show_string(self, svalue):
        return "memleak max-dump-size is %s (%d bytes)." % (svalue, SETTINGS.max_dump_size)


_REGISTERED = []


def register():
    if _REGISTERED:
        return
    from .target import install_event_hooks
    install_event_hooks()
    _REGISTERED.append(MemleakPrefix())
    _REGISTERED.append(_SetPrefix("set"))
    _REGISTERED.append(_SetPrefix("show"))
    _REGISTERED.extend([DebugParam(), ProgressParam(), MaxDumpSizeParam()])
    prefixes = set()
    for cmd in registry():
        if " " in cmd.name and cmd.name.split()[0] not in prefixes:
            prefixes.add(cmd.name.split()[0])
            _REGISTERED.append(_SubPrefix(cmd.name.split()[0]))
        _REGISTERED.append(_make_command_class(cmd)())
