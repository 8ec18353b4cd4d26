"""A corpus of real C/C++ programs from Debian packages, driven deterministically to stops.

Each :class:`Program` is a stripped, packaged executable nobody on this project wrote (glibc
malloc, checked with ldd).  For each we can

* ``gdb_run_to(workdir, stop)``: gdb commands that start it and leave it stopped either
  mid-run ("mid": all its threads alive, a deterministic point of the main work) or at the
  entry of ``exit_group`` ("exit": after all atexit/destructors, before the kernel tears it down);
* ``valgrind_argv(workdir, xml)``: the very same run (argv, env, cwd, redirections, inputs) under
  memcheck, so the leak set at "exit" can be compared with valgrind's;
* :func:`snapshot`: one ``gdb -nx -batch`` session that runs to a stop, writes a core with
  ``gcore``, runs caller-supplied commands live, and kills the program (cores are cached);
* :func:`valgrind_leaks`: the valgrind run (cached) parsed into a leak summary.

Everything is generated under the caller's work directory (one sub-directory per program).
See README.md beside this file for the programs, how they are driven and what valgrind says.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ClassVar

from . import inputs

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVER = os.path.join(HERE, "driver.py")
MC_CLIENT = os.path.join(HERE, "mc_client.py")
STOPS = ("mid", "exit")
INPUT_VERSION = "4"        # bump when a generator changes: prepare() then rewrites the inputs
CACHE_VERSION = "2"        # bump when run-to commands change: cached cores/valgrind runs are redone

VALGRIND_OPTS = ("--leak-check=full", "--show-leak-kinds=all", "--errors-for-leak-kinds=none", "--vgdb=no",
                 "--num-callers=40", "--child-silent-after-fork=yes", "--trace-children=no")


def _lock(path):
    """An exclusive flock on PATH.lock (parallel test workers share the cache)."""
    @contextlib.contextmanager
    def cm():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
    return cm()


_FD_LIMIT = []


def _valgrind_fd_limit():
    """RLIMIT_NOFILE as a program sees it under valgrind (the hard limit minus the descriptors
    valgrind keeps for itself).  memcached setrlimit()s NOFILE to exactly its -c maxconns, and
    valgrind refuses any hard limit but this one (EPERM: memcached exits with 71), so -c is set
    to it in both runs: the same argv, and the same calloc(maxconns, 8) for the connection table."""
    if not _FD_LIMIT:
        try:
            r = subprocess.run([shutil.which("valgrind") or "valgrind", "-q", "/bin/sh", "-c", "ulimit -Hn"],
                               capture_output=True, text=True, timeout=60)
            _FD_LIMIT.append(int(r.stdout.split()[0]))
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            import resource
            _FD_LIMIT.append(max(64, resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 12))
    return _FD_LIMIT[0]


def _free_port():
    """A free TCP port on 127.0.0.1 with five digits (so argv has the same length every run)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if 10000 <= port <= 65535:
            return port
    raise RuntimeError("no 5-digit free port")


class NotInstalled(RuntimeError):
    """The program's Debian package is missing and could not be installed (tests skip)."""


@dataclass
class Program:
    """One real program.  Subclasses fill in the inputs, argv and the mid-stop commands."""
    name: str
    package: str
    exe: str
    threads: bool
    cxx: bool
    why: str = ""
    # class attributes of the subclasses (not constructor fields):
    server: ClassVar[bool] = False     # listens on 127.0.0.1 and needs a client
    # paths (relative to the run dir) a previous run leaves behind and that change the next one
    outputs: ClassVar[tuple] = ()
    expected_status: ClassVar[int] = 0   # exit status of a good run (checked at both runs' exit)
    # same leak set at the native "exit" stop as in the valgrind run, run after run
    leaks_deterministic: ClassVar[bool] = True
    cost: ClassVar[int] = 10     # rough seconds for valgrind + both stops (scheduling only)
    # finding kinds that are true of this program's healthy heap (e.g. an allocator of its own
    # that mmaps its pages: memory that is neither malloc's nor a stack is "unexplained-memory")
    expected_findings: ClassVar[tuple] = ()

    # ---- installation -------------------------------------------------------------------
    def installed(self):
        return os.path.isfile(self.exe) and os.access(self.exe, os.X_OK)

    def ensure_installed(self) -> None:
        """apt-get install -y the package if the executable is missing (pytest.skip if impossible)."""
        if self.installed():
            return
        err = _apt_install([self.package])
        if not self.installed():
            import pytest
            pytest.skip("%s: cannot install Debian package %s: %s" % (self.name, self.package, err))

    # ---- inputs and the run itself ------------------------------------------------------
    def rundir(self, workdir):
        return os.path.join(str(workdir), self.name)

    def prepare(self, workdir) -> None:
        """Generate inputs under workdir/NAME (idempotent: a stamp records the generator version)."""
        d = self.rundir(workdir)
        os.makedirs(d, exist_ok=True)
        stamp = os.path.join(d, ".inputs")
        want = "%s:%s" % (INPUT_VERSION, self.name)
        if os.path.exists(stamp) and open(stamp).read() == want:
            return
        self._generate(d)
        with open(stamp, "w") as fh:
            fh.write(want)

    def _generate(self, d):
        pass

    def args(self, workdir):
        """argv[1:] of the run (paths relative to the run dir)."""
        raise NotImplementedError

    def env(self, workdir):
        """The complete environment of the program: nothing is inherited, no MALLOC_* and no
        GLIBC_TUNABLES (glibc's defaults: thread arenas on), fixed locale/TZ/epoch."""
        d = self.rundir(workdir)
        return {"PATH": "/usr/bin:/bin", "HOME": d, "PWD": d, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
                "TZ": "UTC", "SOURCE_DATE_EPOCH": "0"}

    def _io(self, workdir, tag):
        d = self.rundir(workdir)
        return os.devnull, os.path.join(d, "%s.stdout" % tag), os.path.join(d, "%s.stderr" % tag)

    # ---- gdb ------------------------------------------------------------------------------
    def mid_commands(self, workdir):
        """Breakpoints/catchpoints (set before `run`) that stop at the deterministic mid point."""
        raise NotImplementedError

    def gdb_run_to(self, workdir, stop: str) -> list:
        """gdb -ex commands (after `file EXE`) that start the program and leave it stopped at STOP."""
        if stop not in STOPS:
            raise ValueError("stop must be one of %s" % (STOPS,))
        d = self.rundir(workdir)
        cmds = ["set pagination off", "set confirm off", "set width 0", "set height 0",
                "set print thread-events off", "set breakpoint pending on",
                "set startup-with-shell on",
                # gdb starts the program with $SHELL -c "exec PROG ARGS <IN >OUT 2>ERR": make that
                # dash (bash would add SHLVL and _ to the environment the program sees)
                'python import os; os.environ["SHELL"] = "/bin/sh"',
                "unset environment"]
        cmds += ["set environment %s=%s" % kv for kv in sorted(self.env(workdir).items())]
        cmds += ["set cwd %s" % d]
        # signals the programs use for themselves (memcached's `shutdown graceful` pthread_kill()s
        # SIGUSR1 to its threads): deliver them without stopping, as outside gdb
        cmds += ["handle SIGUSR1 SIGUSR2 SIGPIPE SIGALRM SIGHUP SIGWINCH SIGCHLD nostop noprint pass"]
        cmds += ["shell rm -rf %s" % " ".join(shlex.quote(os.path.join(d, p)) for p in self.outputs)] \
            if self.outputs else []
        if stop == "mid":
            cmds += self.mid_commands(workdir)
        else:
            cmds += ["catch syscall exit_group"]
        port = self._port() if self.server else None
        args = self.args(workdir) if port is None else self.args(workdir, port)
        if self.server:
            cmds += self.client_gdb_commands(workdir, port, stop)
        fin, fout, ferr = self._io(workdir, "gdb-" + stop)
        cmds += ["run %s < %s > %s 2> %s" % (" ".join(shlex.quote(a) for a in args),
                                              shlex.quote(fin), shlex.quote(fout), shlex.quote(ferr))]
        # leave no breakpoint behind: live commands may call inferior functions or `continue`
        cmds += ["delete"]
        return cmds

    # ---- valgrind -------------------------------------------------------------------------
    def valgrind_argv(self, workdir, xml_path) -> list:
        """The same run under memcheck, as one self-contained argv (driver.py sets cwd, env and
        redirections as gdb's `run` does, removes old outputs, and drives a server's client)."""
        d = self.rundir(workdir)
        port = self._port() if self.server else None
        args = self.args(workdir) if port is None else self.args(workdir, port)
        fin, fout, ferr = self._io(workdir, "valgrind")
        argv = [sys.executable, DRIVER, "--cwd", d, "--stdin", fin, "--stdout", fout, "--stderr", ferr]
        for p in self.outputs:
            argv += ["--rm", p]
        for kv in sorted(self.env(workdir).items()):
            argv += ["--env", "%s=%s" % kv]
        if self.server:
            for a in self.client_argv(workdir, port, os.path.join(d, "valgrind.client.log")):
                argv += ["--client=" + a]
        valgrind = shutil.which("valgrind") or "/usr/bin/valgrind"
        return argv + ["--", valgrind, *VALGRIND_OPTS, "--xml=yes", "--xml-file=%s" % xml_path,
                       self.exe, *args]

    # ---- servers ----------------------------------------------------------------------------
    def _port(self):
        return _free_port()

    def client_argv(self, workdir, port, log):
        raise NotImplementedError

    def client_gdb_commands(self, workdir, port, stop):
        log = os.path.join(self.rundir(workdir), "gdb-%s.client.log" % stop)
        cmd = " ".join(shlex.quote(a) for a in self.client_argv(workdir, port, log))
        # background client, detached from gdb's pipes so gdb's caller is not kept waiting
        return ["shell %s < /dev/null > /dev/null 2>&1 &" % cmd]


# --------------------------------------------------------------------------------------------
# the programs

def _syscall_stop(syscall, condition, nth):
    """Stop at the ENTRY of the NTH call of SYSCALL (x86-64) for which CONDITION holds.

    A syscall catchpoint triggers at entry and at return, and with several threads the two
    events of different calls interleave, so the count must see entries only: at a syscall-entry
    stop the kernel has put -ENOSYS (-38) in rax.  Catchpoints on the syscall (not breakpoints
    on libc's wrapper) also avoid C++ methods of the same name (cppcheck's `Variables::write`)
    and PLT stubs that `break write` would match too."""
    cond = "$rax == -38" + (" && (%s)" % condition if condition else "")
    cmds = ["catch syscall %s" % syscall, "condition $bpnum %s" % cond]
    if nth > 1:
        cmds.append("ignore $bpnum %d" % (nth - 1))
    return cmds


class Cppcheck(Program):
    """C++ static analyser (heavy C++: tokenizer, symbol database, many checker classes with
    vtables).  Single-threaded: cppcheck 2.10 implements -jN with fork(), so no -j here."""

    cost = 10

    def _generate(self, d):
        inputs.gen_cpp_tree(os.path.join(d, "src"), nfiles=6, nclasses=8, seed=1234)

    def args(self, workdir):
        return ["--enable=all", "--inconclusive", "--std=c++17", "--max-configs=1", "src"]

    # cppcheck writes each diagnostic to std::cerr (unit-buffered: several write(2, ..) per
    # diagnostic) as soon as a checker finds it: stop at write number MID_WRITE to fd 2, in the
    # middle of checking the generated sources (token lists and symbol database alive).
    MID_WRITE = 850

    def mid_commands(self, workdir):
        return _syscall_stop("write", "$rdi == 2", self.MID_WRITE)


class Doxygen(Program):
    """Documentation generator (heavy C++; libclang, LLVM and xapian are linked in, though unused
    here) run over generated C++ sources, NUM_PROC_THREADS=1: everything on the main thread."""

    cost = 20
    outputs = ("dox", "warnings.log")
    proc_threads: ClassVar[int] = 1

    def _generate(self, d):
        inputs.gen_cpp_tree(os.path.join(d, "src"), nfiles=6, nclasses=8, seed=1234)
        inputs.gen_doxyfile(os.path.join(d, "Doxyfile"), self.proc_threads)

    def args(self, workdir):
        return ["Doxyfile"]

    # Stop at the open of dox/html/mod3_8cpp_source.html: half-way through "Generating code
    # files" (with NUM_PROC_THREADS=2 a pool worker opens it while the other is busy too).
    def mid_commands(self, workdir):
        return _syscall_stop("openat", '$_regex((char *) $rsi, ".*/mod3_8cpp_source\\\\.html$")', 1)


class DoxygenMT(Doxygen):
    """doxygen with NUM_PROC_THREADS=2: input parsing and code/doc generation run in std::thread
    pools (new threads per phase, allocating in thread arenas).  Each pool thread that ran a
    lexer leaks its buffers when it exits (the definitely-lost records are all such), and how
    many distinct threads ran each kind of task depends on scheduling: its leak set is NOT
    reproducible run to run (leaks_deterministic=False)."""

    proc_threads = 2
    leaks_deterministic = False


class SevenZip(Program):
    """7-Zip 26 (`7zz`, heavy C++ with COM-style interfaces/vtables), LZMA2 with 512 KiB chunks
    and -mmt=2: two block-coder threads, each allocating its encoder (in its own arena), reading
    its input and writing its compressed block (-mmt=4 makes four, and a 300 MiB core)."""

    cost = 14
    outputs = ("out.7z",)

    def _generate(self, d):
        os.makedirs(os.path.join(d, "data"), exist_ok=True)
        for i in range(4):
            inputs.gen_text(os.path.join(d, "data", "f%d.txt" % i), 1000000, seed=42 + i)

    def args(self, workdir):
        return ["a", "-mmt=2", "-m0=LZMA2:d=512k:mf=hc4:c=512k", "-bd", "-mtm=off", "-mtc=off",
                "-mta=off", "out.7z", "data"]

    # each LZMA2 block (~185 KB compressed) is written by the coder thread that made it, in block
    # order: stop at the 4th of the 8 block writes (the coder threads alive, some still coding).
    def mid_commands(self, workdir):
        return _syscall_stop("write", "$rdx > 100000", 4)


class Pbzip2(Program):
    """Parallel bzip2 (C++, pthreads): a reader, 2 compressor threads and a writer thread, every
    100 kB block new[]'d and delete[]'d across threads."""

    cost = 6
    outputs = ("input.txt.bz2",)

    def _generate(self, d):
        inputs.gen_text(os.path.join(d, "input.txt"), 4000000, seed=7)

    def args(self, workdir):
        return ["-p2", "-b1", "-k", "-f", "input.txt"]     # no -v: it prints wall-clock times

    MID_WRITE = 20     # of 40 compressed-block writes (~30 kB each) to input.txt.bz2

    def mid_commands(self, workdir):
        return _syscall_stop("write", "$rdx > 5000", self.MID_WRITE)


class Memcached(Program):
    """memcached (C, libevent): 3 worker threads plus background threads, listening on
    127.0.0.1 only, driven by mc_client.py (a fixed, seeded request sequence over 4 connections,
    then `stats`, then `shutdown graceful`)."""

    cost = 5
    server = True

    def args(self, workdir, port=None):
        return ["-u", "root", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-t", "3", "-m", "32",
                "-c", str(_valgrind_fd_limit()), "-A", "-o", "no_lru_crawler,no_lru_maintainer"]

    def client_argv(self, workdir, port, log):
        return [sys.executable, MC_CLIENT, "--port", str(port), "--log", log]

    # memcached calls getrusage() only to answer `stats`, which the client sends after all its
    # traffic: the stop is in the worker thread serving connection 0, all threads alive.
    # (-t 3: each worker mallocs in its own arena, and gcore dumps every arena's whole 64 MiB
    # reservation, so more workers would push the core past 300 MiB.)
    def mid_commands(self, workdir):
        return _syscall_stop("getrusage", None, 1)


class Xz(Program):
    """xz 5.4 (C, liblzma) with -T2 and 256 KiB blocks: two encoder threads, each with its own
    arena, compressing blocks the main thread reads and writes out."""

    cost = 8
    outputs = ("input.txt.xz",)

    def _generate(self, d):
        inputs.gen_text(os.path.join(d, "input.txt"), 3000000, seed=3)

    def args(self, workdir):
        return ["-T2", "--block-size=262144", "-3", "-k", "-f", "input.txt"]

    def mid_commands(self, workdir):
        return _syscall_stop("write", "$rdx > 1000", 3)


class Cc1plus(Program):
    """GCC 12's C++ compiler proper (cc1plus) on a generated translation unit that includes the
    standard library: heavy C++ with a garbage-collected heap of its own (ggc: pages it mmaps
    itself, which we report as unexplained memory) beside a busy malloc heap."""

    cost = 16
    outputs = ("out.s",)
    expected_findings = ("unexplained-memory",)

    def _generate(self, d):
        with open(os.path.join(d, "x.cpp"), "w") as fh:
            fh.write("#include <vector>\n#include <memory>\n#include <cstdio>\n"
                     "struct B { virtual ~B() {} virtual int f() = 0; };\n")
            for i in range(40):
                fh.write("struct D%d : B { std::vector<int> m; int f() override { return %d + m.size(); } };\n"
                         % (i, i))
            fh.write("int main() { std::vector<std::unique_ptr<B>> v;\n")
            for i in range(40):
                fh.write("  v.emplace_back(new D%d);\n" % i)
            fh.write("  int s = 0; for (auto &p : v) s += p->f(); std::printf(\"%d\\n\", s); }\n")

    def args(self, workdir):
        return ["-quiet", "-O1", "-imultiarch", "x86_64-linux-gnu", "-D_GNU_SOURCE", "x.cpp", "-o", "out.s"]

    def mid_commands(self, workdir):
        return _syscall_stop("write", "$rdx > 1000", 1)     # the first block of assembly written


PROGRAMS = [
    Cppcheck("cppcheck", "cppcheck", "/usr/bin/cppcheck", threads=False, cxx=True,
             why="heavy C++ (vtables everywhere), single-threaded"),
    Doxygen("doxygen", "doxygen", "/usr/bin/doxygen", threads=False, cxx=True,
            why="heavy C++ (libclang/LLVM loaded), single-threaded, deterministic"),
    SevenZip("7zz", "7zip", "/usr/bin/7zz", threads=True, cxx=True,
             why="heavy C++ (COM-like interfaces) and LZMA2 coder threads"),
    Pbzip2("pbzip2", "pbzip2", "/usr/bin/pbzip2", threads=True, cxx=True,
           why="C++ with pthreads passing new[]'d blocks between threads"),
    Memcached("memcached", "memcached", "/usr/bin/memcached", threads=True, cxx=False,
              why="C server on 127.0.0.1 with worker threads, driven by a client"),
    DoxygenMT("doxygen-mt", "doxygen", "/usr/bin/doxygen", threads=True, cxx=True,
              why="heavy C++ with std::thread pools; leak set varies with scheduling"),
    Xz("xz", "xz-utils", "/usr/bin/xz", threads=True, cxx=False,
       why="C library (liblzma) with encoder threads in arenas of their own"),
    Cc1plus("cc1plus", "g++-12", "/usr/lib/gcc/x86_64-linux-gnu/12/cc1plus", threads=False, cxx=True,
            why="heavy C++ with its own mmapped GC heap beside malloc's"),
]

BY_NAME = {p.name: p for p in PROGRAMS}


def get(name) -> Program:
    return BY_NAME[name]


# --------------------------------------------------------------------------------------------
# installation helper

def _apt_install(packages):
    """apt-get install -y PACKAGES without starting services; returns an error string or ''."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "not root or no apt-get"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    policy = "/usr/sbin/policy-rc.d"
    made_policy = False
    if not os.path.exists(policy):      # keep memcached's postinst from starting a daemon
        with open(policy, "w") as fh:
            fh.write("#!/bin/sh\nexit 101\n")
        os.chmod(policy, 0o755)
        made_policy = True
    try:
        cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        return "" if r.returncode == 0 else (r.stderr.strip().splitlines() or ["apt-get failed"])[-1]
    finally:
        if made_policy:
            os.unlink(policy)


# --------------------------------------------------------------------------------------------
# gdb snapshots

@dataclass
class Snapshot:
    program: str
    stop: str
    exe: str
    core: str
    stdout: str          # path of gdb's stdout
    stderr: str          # path of gdb's stderr
    returncode: int
    threads: int = 0     # threads `info threads` listed live at the stop
    exit_status: int = None   # "exit" stop: the status passed to exit_group
    seconds: float = 0.0
    cached: bool = False
    commands: list = field(default_factory=list)

    def read_stdout(self):
        with open(self.stdout, errors="replace") as fh:
            return fh.read()

    def read_stderr(self):
        with open(self.stderr, errors="replace") as fh:
            return fh.read()


MARK_STOPPED = "@@realprogs-stopped@@"
MARK_CORE = "@@realprogs-core-written@@"
MARK_EXTRA = "@@realprogs-extra-done@@"
MARK_STATUS = "@@realprogs-exit-status"


def _count_threads(text):
    """Threads listed by `info threads` between the two markers."""
    seg = text.split(MARK_STOPPED, 1)[-1].split(MARK_CORE, 1)[0]
    return len(re.findall(r"^[ *]\s*\d+\s+Thread 0x", seg, re.M))


def gdb_argv(program, workdir, stop, core, extra_gdb_commands=(), debug_file_directory=None):
    cmds = []
    if debug_file_directory is not None:
        cmds.append("set debug-file-directory %s" % debug_file_directory)
    cmds.append("file %s" % program.exe)
    cmds += program.gdb_run_to(workdir, stop)
    cmds += ["echo %s\\n" % MARK_STOPPED, "info threads"]
    if stop == "exit":      # the status passed to exit_group (its first argument)
        cmds.append('printf "%s %%d\\n", (int) $rdi' % MARK_STATUS)
    cmds += ["gcore %s" % core, "echo %s\\n" % MARK_CORE]
    cmds += list(extra_gdb_commands)
    cmds += ["echo %s\\n" % MARK_EXTRA, "kill"]
    argv = ["gdb", "-nx", "-batch"]
    for c in cmds:
        argv += ["-ex", c]
    return argv, cmds


def _recipe(program, workdir, what):
    """A hash of everything a cached core / valgrind run depends on (port numbers excepted)."""
    args = program.args(workdir, 10000) if program.server else program.args(workdir)
    how = program.mid_commands(workdir) if what == "mid" else list(VALGRIND_OPTS) if what == "valgrind" else []
    try:
        st = os.stat(program.exe)
        exe = [program.exe, st.st_size, int(st.st_mtime)]
    except OSError:
        exe = [program.exe]
    blob = json.dumps([CACHE_VERSION, INPUT_VERSION, what, exe, args, how, sorted(program.env(workdir).items()),
                       list(program.outputs)])
    return hashlib.sha1(blob.encode()).hexdigest()


def snapshot(program, workdir, stop, extra_gdb_commands=(), debug_file_directory=None,
             timeout=600, keep_core=True) -> Snapshot:
    """One `gdb -nx -batch` session: [set debug-file-directory DIR], file EXE, the run-to
    commands, gcore CORE, EXTRA_GDB_COMMANDS (live, after the core is written), kill.

    Without extra commands the result is cached under workdir/NAME/ keyed by (program, stop)
    (and by a hash of the recipe: inputs, argv, stop commands, the executable's size/mtime).
    With them gdb always runs, and the core is workdir/NAME/STOP-xHASH.core (HASH of the
    commands and debug dir); keep_core=False deletes that core afterwards (snapshot.core=None)."""
    if isinstance(program, str):
        program = get(program)
    program.ensure_installed()
    program.prepare(workdir)
    d = program.rundir(workdir)
    extra = list(extra_gdb_commands)
    if extra:
        h = hashlib.sha1(json.dumps([extra, debug_file_directory]).encode()).hexdigest()[:10]
        tag = "%s-x%s" % (stop, h)
    else:
        tag = stop
    core = os.path.join(d, "%s.core" % tag)
    meta_path = os.path.join(d, "%s.snapshot.json" % tag)
    out, err = os.path.join(d, "%s.gdb.out" % tag), os.path.join(d, "%s.gdb.err" % tag)
    with _lock(os.path.join(d, "run")):     # one run at a time per program: they share outputs
        if not extra and os.path.exists(meta_path) and os.path.exists(core):
            with open(meta_path) as fh:
                meta = json.load(fh)
            if meta.get("recipe") == _recipe(program, workdir, stop):
                snap = Snapshot(**meta["snapshot"])
                snap.cached = True
                return snap
        for p in (core, meta_path):
            if os.path.exists(p):
                os.unlink(p)
        argv, cmds = gdb_argv(program, workdir, stop, core, extra, debug_file_directory)
        # gdb's own environment: ours, but /bin/sh starts the inferior (see gdb_run_to)
        genv = dict(os.environ, SHELL="/bin/sh")
        t0 = time.time()
        with open(out, "w") as fo, open(err, "w") as fe:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe, cwd=d,
                                    env=genv, start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
                raise RuntimeError("%s %s: gdb timed out after %ss (see %s)" % (program.name, stop, timeout, out))
        secs = time.time() - t0
        text = open(out, errors="replace").read()
        if not os.path.exists(core) or MARK_CORE not in text:
            raise RuntimeError("%s %s: no core written (gdb rc=%s); gdb stdout %s, stderr %s:\n%s"
                               % (program.name, stop, rc, out, err, open(err, errors="replace").read()[-3000:]))
        status = None
        m = re.search(re.escape(MARK_STATUS) + r" (-?\d+)", text)
        if m:
            status = int(m.group(1))
        if stop == "exit" and status != program.expected_status:
            raise RuntimeError("%s exit: exit_group(%s), expected %s; see %s and the program's output in %s"
                               % (program.name, status, program.expected_status, out, d))
        snap = Snapshot(program=program.name, stop=stop, exe=program.exe, core=core, stdout=out,
                        stderr=err, returncode=rc, threads=_count_threads(text), exit_status=status,
                        seconds=round(secs, 2), commands=cmds)
        if extra and not keep_core:
            os.unlink(core)
            snap.core = None
            return snap
        with open(meta_path, "w") as fh:
            json.dump({"recipe": _recipe(program, workdir, stop), "snapshot": snap.__dict__}, fh, indent=1)
        return snap


# --------------------------------------------------------------------------------------------
# valgrind

LEAK_KEYS = {"Leak_DefinitelyLost": "definite", "Leak_IndirectlyLost": "indirect",
             "Leak_PossiblyLost": "possible", "Leak_StillReachable": "reachable"}


def parse_valgrind_xml(path):
    """Parse a memcheck --xml file into the summary dict documented in valgrind_leaks()."""
    root = ET.parse(path).getroot()
    res = {k: {"blocks": 0, "bytes": 0} for k in LEAK_KEYS.values()}
    records, all_records, other = [], [], []
    for e in root.findall("error"):
        kind = e.findtext("kind")
        if kind in LEAK_KEYS:
            xw = e.find("xwhat")
            blocks = int(xw.findtext("leakedblocks"))
            nbytes = int(xw.findtext("leakedbytes"))
            s = res[LEAK_KEYS[kind]]
            s["blocks"] += blocks
            s["bytes"] += nbytes
            frames = []
            stack = e.find("stack")
            for fr in (stack.findall("frame") if stack is not None else []):
                frames.append({"ip": fr.findtext("ip"), "obj": fr.findtext("obj"), "fn": fr.findtext("fn")})
            rec = {"kind": kind, "blocks": blocks, "bytes": nbytes,
                   "stack": [f["fn"] or "%s@%s" % (f["ip"], os.path.basename(f["obj"] or "?")) for f in frames],
                   "frames": frames}
            all_records.append(rec)
            if kind in ("Leak_DefinitelyLost", "Leak_IndirectlyLost"):
                records.append(rec)
        else:
            other.append(kind)
    nerr = 0
    ec = root.find("errorcounts")
    if ec is not None:
        nerr = sum(int(p.findtext("count")) for p in ec.findall("pair"))
    nerr = max(nerr, len(other))
    res["errors"] = nerr
    res["error_kinds"] = sorted(set(other))
    res["records"] = records
    res["all_records"] = all_records
    status = [s.findtext("state") for s in root.findall("status")]
    res["finished"] = "FINISHED" in status
    pid = root.findtext("pid")
    res["pid"] = int(pid) if pid else None
    return res


def valgrind_leaks(program, workdir, timeout=600) -> dict:
    """Run PROGRAM under memcheck (cached under workdir/NAME/) and return
    ``{"definite": {"blocks", "bytes"}, "indirect": .., "possible": .., "reachable": ..,
    "errors": n, "records": [definitely/indirectly lost records: kind, blocks, bytes, stack
    (function names, or ip@object), frames], "all_records": [every leak record],
    "error_kinds": [...], "xml": path, "returncode": rc, "seconds": s}``."""
    if isinstance(program, str):
        program = get(program)
    program.ensure_installed()
    program.prepare(workdir)
    d = program.rundir(workdir)
    xml = os.path.join(d, "valgrind.xml")
    meta_path = os.path.join(d, "valgrind.json")
    with _lock(os.path.join(d, "run")):
        meta = None
        if os.path.exists(meta_path) and os.path.exists(xml):
            with open(meta_path) as fh:
                meta = json.load(fh)
            if meta.get("recipe") != _recipe(program, workdir, "valgrind"):
                meta = None
        if meta is None:
            for p in (xml, meta_path):
                if os.path.exists(p):
                    os.unlink(p)
            argv = program.valgrind_argv(workdir, xml)
            t0 = time.time()
            r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=timeout)
            secs = time.time() - t0
            if not os.path.exists(xml):
                raise RuntimeError("%s: valgrind wrote no XML (rc=%s): %s" % (program.name, r.returncode, r.stderr[-2000:]))
            if r.returncode != program.expected_status:
                raise RuntimeError("%s: valgrind run exited %s, expected %s (program output in %s/valgrind.*)"
                                   % (program.name, r.returncode, program.expected_status, d))
            meta = {"recipe": _recipe(program, workdir, "valgrind"), "returncode": r.returncode, "seconds": round(secs, 2),
                    "argv": argv}
            parse_valgrind_xml(xml)        # must parse before we call it cached
            with open(meta_path, "w") as fh:
                json.dump(meta, fh, indent=1)
    res = parse_valgrind_xml(xml)
    res.update(xml=xml, returncode=meta["returncode"], seconds=meta["seconds"])
    return res


# --------------------------------------------------------------------------------------------
# everything at once

def workdir_for(tmp_path_factory):
    """The corpus work directory of a pytest session: $REALPROGS_WORKDIR if set (a cache kept
    across sessions), else BASETEMP/realprogs, shared by every test module of the session."""
    env = os.environ.get("REALPROGS_WORKDIR")
    d = env if env else os.path.join(str(tmp_path_factory.getbasetemp()), "realprogs")
    os.makedirs(d, exist_ok=True)
    return d


def build_all(workdir, programs=None, jobs=2, valgrind=True, errors=None):
    """Install, prepare and build every (program, stop) core and valgrind run, JOBS programs at a
    time.  Returns {(name, stop): Snapshot, (name, "valgrind"): dict}.  With an ERRORS dict, a
    program that fails (or cannot be installed) is recorded there as {name: exception} instead
    of raising, and the others are still built."""
    programs = [get(p) if isinstance(p, str) else p for p in (programs or PROGRAMS)]
    missing = [p.package for p in programs if not p.installed()]
    if missing:
        _apt_install(sorted(set(missing)))
    whats = (("valgrind",) if valgrind else ()) + STOPS

    def run(p):         # a program's runs share its run dir: one after the other
        try:
            if not p.installed():
                raise NotInstalled("%s: Debian package %s is not installed and apt-get install failed"
                                   % (p.name, p.package))
            p.prepare(workdir)
            return [valgrind_leaks(p, workdir) if w == "valgrind" else snapshot(p, workdir, w) for w in whats]
        except Exception as e:          # noqa: BLE001 - reported per program
            if errors is None:
                raise
            errors[p.name] = e
            return None

    # the slowest (valgrind-heavy) programs first, so the two workers finish together
    order = sorted(programs, key=lambda p: -p.cost)
    with ThreadPoolExecutor(max_workers=jobs) as ex:
        results = list(ex.map(run, order))
    return {(p.name, w): r for p, rs in zip(order, results) if rs for w, r in zip(whats, rs)}
