"""Offline front door: ``python -m gdb_memleak --core CORE [--exe EXE] [--sysroot DIR] COMMAND …``.

Exit codes: 0 success, 1 analysis error (unreadable/corrupt input), 2 usage error,
3 missing dependency, 130 interrupted.  Every error a user can cause is one line on stderr
("error: ..."); a partial result (``--allow-truncated``) is preceded by "warning: ..." lines
saying what was skipped.  A traceback is shown only for a bug, and only with ``--debug``.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback

from .core.commands import by_name
from .core.commands.base import ArgParser, Context, HelpShown, parse_int
from .core.errors import DependencyError, Interrupted, MemleakError, UsageError
from .core.settings import Settings
from .core.textparse import parse_size


# global options and whether they take a value: accepted before or after the command
GLOBALS = {"--core": True, "--vgdb-pid": True, "--exe": True, "--sysroot": True, "--debug-dir": True,
           "--allow-truncated": False, "--max-dump-size": True, "--no-progress": False, "--debug": False}


def split_globals(argv):
    """(global options, the rest): global options may stand anywhere on the line, as in git or
    valgrind; a command's own options and arguments keep their order."""
    glob, rest = [], []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            rest.extend(argv[i:])
            break
        name = a.split("=", 1)[0]
        if name in GLOBALS:
            glob.append(a)
            if GLOBALS[name] and "=" not in a and i + 1 < len(argv):
                glob.append(argv[i + 1])
                i += 1
        else:
            rest.append(a)
        i += 1
    return glob, rest


class _Version(argparse.Action):
    """--version: the version and the scans' kernel (building it on first use)."""

    def __call__(self, parser, namespace, values, option_string=None):
        from . import __version__
        from .core import native
        sys.stdout.write("gdb_memleak %s\nkernel: %s\n" % (__version__, native.status()))
        sys.stdout.flush()
        raise SystemExit(0)


def _top_parser(commands):
    p = ArgParser(prog="python -m gdb_memleak", out=sys.stdout.write,
                  description="Where did the memory go: analyse a core file without gdb.",
                  epilog="commands: " + "; ".join("%s: %s" % (c.name, c.summary) for c in commands.values()))
    p.add_argument("--core", metavar="CORE", help="core file (gcore or kernel)")
    p.add_argument("--vgdb-pid", metavar="PID", type=int,
                   help="a process running under valgrind --vgdb=yes (for the 'vgdb …' commands)")
    p.add_argument("--exe", metavar="EXE", help="the executable (checked against the core's build-id)")
    p.add_argument("--sysroot", metavar="DIR", help="where the core's shared libraries are found")
    p.add_argument("--debug-dir", metavar="DIR", action="append", default=[],
                   help="also look for separate debug files under DIR (as gdb's debug-file-directory: "
                        "DIR/.build-id/xx/yyyy.debug, DIR/<the file's folder>/<its debuglink>); before "
                        "/usr/lib/debug; repeatable")
    p.add_argument("--allow-truncated", action="store_true",
                   help="analyse a truncated or damaged core: use what is intact; a warning says what is missing "
                        "(segments, threads, registers, mapped files)")
    p.add_argument("--max-dump-size", metavar="SIZE", default="1G", help="dump bound (default 1G)")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    p.add_argument("--version", action=_Version, nargs=0, help="show the version and which kernel the scans use, and exit")
    names = sorted({n.split()[0] for n in commands})
    p.add_argument("command", metavar="COMMAND", choices=names, help="one of: " + ", ".join(names))
    p.add_argument("args", nargs=argparse.REMAINDER, help="the command's own arguments")
    return p


def _one_line(e) -> str:
    """A message on one line whatever it quotes (a path or a name may hold a newline)."""
    return " ".join(str(e).split("\n")).replace("\r", " ")


def _quiet_stdout():
    """After EPIPE (``| head``): point stdout at /dev/null so the exit flush stays silent."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError):
        pass


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["watch"]:      # no core, no gdb: samples /proc only (its own options)
        from .core.watch import main as watch_main
        return watch_main(argv[1:])
    err = sys.stderr.write
    debug = "--debug" in argv
    try:
        commands = by_name()
        top = _top_parser(commands)
        glob, rest = split_globals(argv)
        ns = top.parse_args(glob + rest)
        if ns.command == "vgdb" and ns.args and ns.args[0] not in ("-h", "--help"):
            subs = sorted(n.split()[1] for n in commands if n.startswith("vgdb "))
            if not ns.args or ns.args[0] not in subs:
                raise UsageError("vgdb needs a subcommand: %s" % ", ".join(subs))
            ns.command = "vgdb " + ns.args.pop(0)
        elif ns.command == "vgdb":
            subs = sorted(n.split()[1] for n in commands if n.startswith("vgdb "))
            sys.stdout.write("vgdb subcommands: %s (python -m gdb_memleak vgdb SUB --help)\n" % ", ".join(subs))
            return 0
        cmd = commands[ns.command]
        # the command's own arguments first: 'COMMAND --help' needs no core
        parser = cmd.build_parser("python -m gdb_memleak %s" % cmd.name, out=sys.stdout.write)
        args = parser.parse_args(ns.args)
        if cmd.name.startswith("vgdb ") and not ns.vgdb_pid:
            raise UsageError("vgdb commands need --vgdb-pid PID (a process under valgrind --vgdb=yes)")
        if not cmd.name.startswith("vgdb ") and not ns.core and cmd.needs_target:
            raise UsageError("--core CORE is required (inside gdb, use the 'memleak' commands instead; "
                             "see 'python -m gdb_memleak --help')")
        for d in ns.debug_dir:
            if not os.path.isdir(d):
                raise UsageError("--debug-dir %s is not a directory" % d)
        settings = Settings(debug=ns.debug, progress=not ns.no_progress)
        try:
            settings.max_dump_size = parse_size(ns.max_dump_size)
        except ValueError as e:
            raise UsageError(str(e))

        def make_target():
            if ns.vgdb_pid:
                from .core.memory.proctarget import VgdbProcessTarget
                return VgdbProcessTarget(ns.vgdb_pid)
            from .core.memory.elfcore import CoreTarget
            t = CoreTarget(ns.core, exe=ns.exe, sysroot=ns.sysroot, allow_truncated=ns.allow_truncated)
            t.check_executable()
            t.debug_dirs = ns.debug_dir
            return t

        ctx = Context(make_target, settings, sys.stdout.write, lambda s: err(s.rstrip("\n") + "\n"),
                      parse_int, "cli")
        cmd.run(ctx, args)
        sys.stdout.flush()
        return 0
    except HelpShown:
        return 0
    except UsageError as e:
        err("error: %s\n" % _one_line(e))
        return 2
    except DependencyError as e:
        err("error: %s\n" % _one_line(e))
        return 3
    except Interrupted:
        err("interrupted\n")
        return 130
    except MemleakError as e:
        err("error: %s\n" % _one_line(e))
        return 1
    except KeyboardInterrupt:
        err("interrupted\n")
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except ImportError as e:
        err("error: missing dependency: %s (run 'make install')\n" % e)
        return 3
    except OSError as e:   # an output file or folder the user named: not writable, no space, ...
        if debug:
            traceback.print_exc()
        err("error: %s%s\n" % (e.strerror or e, ": %s" % e.filename if e.filename else ""))
        return 1
    except MemoryError:
        err("error: out of memory (the core or the analysis is larger than this machine's memory)\n")
        return 1
    except Exception as e:  # a bug in gdb_memleak: keep the traceback behind --debug
        if debug:
            traceback.print_exc()
        else:
            err("internal error: %s: %s (rerun with --debug for the traceback)\n" % (type(e).__name__, e))
        return 70
