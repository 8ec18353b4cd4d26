"""Shared test machinery: compile C/C++ fixtures, run them to their READY point, snapshot them
(gcore and kernel cores), and drive a fresh `gdb -nx -batch` or the offline CLI per case."""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
GDBINIT = os.path.join(ROOT, "gdbinit.example")
PY = sys.executable


def _m32_headers():
    """Keep `gcc -m32` working next to Debian's cross compilers.

    gcc-multilib ships one file, the /usr/include/asm -> x86_64-linux-gnu/asm symlink that -m32
    builds need (their search path has no multiarch folder), and Debian 12 makes it conflict with
    gcc-arm-linux-gnueabihf / gcc-aarch64-linux-gnu. The Makefile installs gcc-12-multilib and
    g++-12-multilib (which coexist with them) instead; this supplies the symlink through CPATH
    for every compiler the tests start (CPATH is an -I folder: -m64 finds the same files).
    Cross compilers must not see it (x86 <asm/unistd.h> would give them x86 syscall numbers):
    build with ``env=cross_env()``."""
    sys_asm, amd64_asm = "/usr/include/asm", "/usr/include/x86_64-linux-gnu/asm"
    if os.path.exists(sys_asm) or not os.path.isdir(amd64_asm):
        return
    inc = os.path.join(ROOT, "build", "m32-include")
    link = os.path.join(inc, "asm")
    if os.path.realpath(link) != os.path.realpath(amd64_asm):
        os.makedirs(inc, exist_ok=True)
        tmp = "%s.%d" % (link, os.getpid())
        os.symlink(amd64_asm, tmp)
        os.replace(tmp, link)        # atomic: sessions running side by side agree
    cpath = os.environ.get("CPATH")
    if inc not in (cpath or "").split(os.pathsep):
        os.environ["CPATH"] = inc + (os.pathsep + cpath if cpath else "")


_m32_headers()
M32_INCLUDE = os.path.join(ROOT, "build", "m32-include")


def cross_env():
    """os.environ without the -m32 asm folder in CPATH: for cross compilers."""
    env = dict(os.environ)
    parts = [p for p in env.get("CPATH", "").split(os.pathsep) if p and p != M32_INCLUDE]
    if parts:
        env["CPATH"] = os.pathsep.join(parts)
    else:
        env.pop("CPATH", None)
    return env


def build(tmpdir, src, out_name, flags=()):
    """Compile tests/fixtures/SRC into TMPDIR/OUT_NAME (C or C++ by extension)."""
    out = os.path.join(str(tmpdir), out_name)
    if os.path.exists(out):
        return out
    cc = "g++" if src.endswith(".cpp") else "gcc"
    subprocess.run([cc, "-g", "-O0", "-pthread", *flags, os.path.join(FIXTURES, src), "-o", out],
                   check=True, capture_output=True)
    return out


class Running:
    """A fixture process paused at its READY point; ``truth`` is the JSON line it printed."""

    def __init__(self, argv, cwd=None, core_limit=False):
        def pre():
            os.setsid()
            if core_limit:
                resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=cwd, preexec_fn=pre)
        self.truth = None
        deadline = time.time() + 30
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("fixture %s exited early (rc=%s)" % (argv, self.proc.poll()))
            line = line.strip()
            if line.startswith("{"):
                self.truth = json.loads(line)
            if line.startswith("READY"):
                break
        self.pid = self.proc.pid

    def next_ready(self):
        """Read on to the fixture's next READY line; the JSON line before it (or None)."""
        truth = None
        while True:
            line = self.proc.stdout.readline()
            assert line, "fixture exited"
            if line.startswith("{"):
                truth = json.loads(line)
            if line.startswith("READY"):
                return truth

    def gcore(self, prefix):
        subprocess.run(["gcore", "-o", prefix, str(self.pid)], check=True, capture_output=True)
        path = "%s.%d" % (prefix, self.pid)
        assert os.path.exists(path)
        return path

    def kernel_core(self, cwd):
        """Kill with SIGQUIT and return the core the kernel wrote (None if cores go elsewhere)."""
        with open("/proc/sys/kernel/core_pattern") as fh:
            pattern = fh.read().strip()
        if pattern.startswith("|"):
            self.kill()
            return None
        os.kill(self.pid, signal.SIGQUIT)
        self.proc.wait(timeout=60)
        for name in ("core", "core.%d" % self.pid, pattern.replace("%p", str(self.pid))):
            p = os.path.join(cwd, name)
            if os.path.exists(p):
                return p
        return None

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_gdb(*commands, exe=None, core=None, pid=None, timeout=300, source=True):
    argv = ["gdb", "-nx", "-batch"]
    if source:
        argv += ["-ex", "source " + GDBINIT]
    if pid is not None:
        argv += ["-p", str(pid)]
    for c in commands:
        argv += ["-ex", c]
    if exe:
        argv.append(exe)
    if core:
        argv.append(core)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def run_cli(*args, timeout=300):
    return subprocess.run([PY, "-m", "gdb_memleak", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def load_json(path):
    with open(path) as fh:
        return json.load(fh)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("memleak")


def _maps_fixture(workdir, bits):
    flags = ("-m32",) if bits == 32 else ()
    exe = build(workdir, "maps_fixture.c", "maps_fixture%d" % bits, flags)
    run = Running([exe])
    core = run.gcore(os.path.join(str(workdir), "maps%d.core" % bits))
    return exe, run, core


@pytest.fixture(scope="session")
def maps64(workdir):
    exe, run, core = _maps_fixture(workdir, 64)
    yield exe, run, core
    run.kill()


@pytest.fixture(scope="session")
def maps32(workdir):
    if shutil.which("gcc") is None:
        pytest.skip("no gcc")
    try:
        exe, run, core = _maps_fixture(workdir, 32)
    except subprocess.CalledProcessError as e:
        pytest.fail("-m32 build failed (make install installs g++-12-multilib): %s" % e.stderr)
    yield exe, run, core
    run.kill()


@pytest.fixture(scope="session")
def report_core(workdir, tmp_path_factory):
    """The report fixture's gcore (threads in arenas, classes, direct and indirect leaks, a leaked
    mmapped chunk, orphan stacks): (exe, core, truth, folder)."""
    d = tmp_path_factory.mktemp("report")
    exe = build(workdir, "report_fixture.cpp", "report_fixture")
    run = Running([exe])
    try:
        core = run.gcore(str(d / "core"))
    finally:
        run.kill()
    return exe, core, run.truth, d

