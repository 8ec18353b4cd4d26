"""Bad targets never hang, never lie (issue 12, gdb part), each through a real `gdb -nx -batch`:
registers gdb cannot read (a 32-bit core under a 64-bit executable, damaged NT_PRSTATUS notes),
a truncated gcore gdb refuses, a process that died between commands, a remote target that
closed or stopped answering (gdbserver, valgrind's vgdb), an impossible PT_LOAD, the stop-time
line, and Ctrl-C on a 1 GiB process.  Errors are exactly one line and a non-zero exit; no
Traceback, no "internal error", no partial file, no thread left behind."""
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time

import pytest

from conftest import GDBINIT, ROOT, Running, build, run_gdb

BAD = ("Traceback", "internal error", "Python Exception", "Error occurred in Python")
EXITED = "has exited (or was killed): nothing to analyse; 'run' it again or open a core"
RAN_FOR = re.compile(r"^memleak \S+: the command ran for \d+\.\d\d s while the process was stopped$")


def clean(r):
    for b in BAD:
        assert b not in r.stderr and b not in r.stdout, r.stderr
    assert "process stopped for" not in r.stderr      # the old, inaccurate wording


def one_error(r, fragment):
    """The run failed with exactly one line holding ``fragment`` on stderr (the GdbError)."""
    clean(r)
    assert r.returncode != 0, (r.returncode, r.stdout[-2000:], r.stderr)
    lines = [l for l in r.stderr.splitlines() if fragment in l]
    assert len(lines) == 1, r.stderr
    return lines[0]


def ran_for_lines(stderr):
    return [l for l in stderr.splitlines() if RAN_FOR.match(l)]


# -- ELF core surgery ---------------------------------------------------------------------------
def phdrs(path):
    """[(index, p_type, p_offset, p_vaddr, p_filesz, p_memsz, flags, header offset)] of an ELF64 file."""
    with open(path, "rb") as fh:
        head = fh.read(64)
        assert head[:4] == b"\x7fELF" and head[4] == 2
        (phoff,) = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        fh.seek(phoff)
        table = fh.read(phentsize * phnum)
    out = []
    for i in range(phnum):
        p_type, flags, off, vaddr, _paddr, filesz, memsz = struct.unpack_from("<IIQQQQQ", table, i * phentsize)
        out.append((i, p_type, off, vaddr, filesz, memsz, flags, phoff + i * phentsize))
    return out


def prstatus_notes(path):
    """[(note offset, namesz, descsz, pr_pid)] of the NT_PRSTATUS notes, in file order."""
    out = []
    with open(path, "rb") as fh:
        for _i, p_type, off, _v, filesz, _m, _f, _h in phdrs(path):
            if p_type != 4:
                continue
            fh.seek(off)
            buf = fh.read(filesz)
            pos = 0
            while pos + 12 <= len(buf):
                namesz, descsz, ntype = struct.unpack_from("<III", buf, pos)
                desc = pos + 12 + ((namesz + 3) & ~3)
                if ntype == 1 and buf[pos + 12:pos + 16] == b"CORE":
                    out.append((off + pos, namesz, descsz, struct.unpack_from("<i", buf, desc + 32)[0]))
                pos = desc + ((descsz + 3) & ~3)
    return out


def damage_prstatus(src, dst, which, how):
    """Copy SRC to DST and damage the NT_PRSTATUS notes at indexes WHICH: 'shrink' makes a note too
    small for the registers (the bytes freed become a padding note, so later notes still parse),
    'zero' clears its descriptor.  Returns the LWPs damaged."""
    shutil.copyfile(src, dst)
    notes = prstatus_notes(dst)
    lwps = []
    with open(dst, "r+b") as fh:
        for k in which:
            off, namesz, descsz, pid = notes[k]
            desc = off + 12 + ((namesz + 3) & ~3)
            if how == "shrink":
                fh.seek(off)
                fh.write(struct.pack("<III", namesz, 200, 1))
                fh.seek(desc + 200)
                fh.write(struct.pack("<III", 0, descsz - 200 - 12, 0x7777))
            else:
                fh.seek(desc)
                fh.write(b"\0" * descsz)
            lwps.append(pid)
    return lwps


def headers_need(path):
    return max([off + filesz for _i, t, off, _v, filesz, _m, _f, _h in phdrs(path) if t in (1, 4)] +
               [h + 56 for *_x, h in phdrs(path)])


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def threads_core(workdir):
    """The threads fixture (4 live threads, no exited ones): (exe, gcore, truth)."""
    exe = build(workdir, "threads.c", "threads64")
    run = Running([exe, "0"])
    try:
        core = run.gcore(os.path.join(str(workdir), "badtargets"))
        yield exe, core, run.truth
    finally:
        run.kill()


def test_32bit_core_with_64bit_executable(maps64, maps32, tmp_path):
    """gdb reads a 32-bit core with a 64-bit executable's architecture ('value is not available'
    for every register): one line naming the mismatch, and no JSON written."""
    exe64 = maps64[0]
    exe32, _run32, core32 = maps32
    out = tmp_path / "m.json"
    for cmd in ("memleak maps --json %s" % out, "memleak leaks"):
        r = run_gdb(cmd, exe=exe64, core=core32, timeout=120)
        line = one_error(r, "architecture mismatch")
        assert "32-bit i386 core" in line and "64-bit x86-64" in line and core32 in line and exe64 in line
    assert not out.exists()
    r = run_gdb("memleak threads", exe=exe32, core=core32, timeout=120)   # its own executable: fine
    clean(r)
    assert r.returncode == 0 and "registers of" not in r.stderr


def test_damaged_prstatus_notes(threads_core, tmp_path):
    exe, core, truth = threads_core
    notes = prstatus_notes(core)
    assert len(notes) == 5 and notes[0][3] == truth["pid"]
    # one thread's note too small for its registers: that thread is left out, and said so
    bad = str(tmp_path / "one.core")
    (lwp,) = damage_prstatus(core, bad, [2], "shrink")
    out = tmp_path / "l.json"
    r = run_gdb("memleak threads", "memleak leaks --json %s" % out, exe=exe, core=bad, timeout=120)
    clean(r)
    assert r.returncode == 0, r.stderr
    warns = [l for l in r.stderr.splitlines() if l.startswith("warning: registers of")]
    assert len(warns) == 2 and all("registers of 1 thread unavailable: LWP %d " % lwp in w for w in warns), r.stderr
    rows = [l.split() for l in r.stdout.splitlines() if re.match(r"^\d+\s+\d+\s", l)]
    listed = {int(x[1]) for x in rows}
    assert lwp not in listed and set(truth["live_lwps"]) - {lwp} <= listed, r.stdout
    doc = json.loads(out.read_text())
    assert doc["in_use"]["chunks"] > 0
    # the thread lives: its stack is no orphan and stays a leak root (no false leak)
    assert doc["leaked"]["chunks"] == 0, doc["leaked"]
    assert "registers are unavailable" in r.stdout
    os.unlink(bad)
    # every note damaged: no thread has registers; the analysis still runs and says so
    bad = str(tmp_path / "all.core")
    damage_prstatus(core, bad, range(len(notes)), "shrink")
    r = run_gdb("memleak maps --kind heap", exe=exe, core=bad, timeout=120)
    clean(r)
    assert r.returncode == 0 and "registers of all " in r.stderr and "heap" in r.stdout, r.stderr
    os.unlink(bad)
    # a zeroed note: gdb's selected thread "has terminated" (no Python thread object for it)
    bad = str(tmp_path / "zero.core")
    (lwp,) = damage_prstatus(core, bad, [1], "zero")
    r = run_gdb("memleak threads", exe=exe, core=bad, timeout=120)
    clean(r)
    assert r.returncode == 0 and "registers of 1 thread unavailable" in r.stderr, r.stderr


def test_truncated_gcore_gdb_refuses(threads_core, tmp_path):
    """gcore writes its notes last: cut, gdb refuses the core; every form of giving it is named."""
    exe, core, _truth = threads_core
    cut = str(tmp_path / "cut.core")
    with open(core, "rb") as src, open(cut, "wb") as dst:
        shutil.copyfileobj(src, dst)
    size = os.path.getsize(core) // 2
    os.truncate(cut, size)
    need = headers_need(cut)
    assert need > size
    want = ("gdb could not load the core %s (truncated? %d bytes, headers need %d): use 'python -m gdb_memleak "
            "--core %s --allow-truncated' for what is readable" % (cut, size, need, cut))
    for r in (run_gdb("memleak maps", exe=exe, core=cut, timeout=60),                   # gdb PROG CORE
              subprocess.run(["gdb", "-nx", "-batch", "-ex", "source " + GDBINIT, "-c", cut, "-ex", "memleak maps"],
                             capture_output=True, text=True, timeout=60, cwd=ROOT),           # gdb -c CORE
              run_gdb("core-file " + cut, "memleak threads", exe=exe, timeout=60),          # core-file CORE
              run_gdb("memleak maps --kind heap", "core-file " + cut, "memleak threads",     # in place of a
                      exe=exe, core=core, timeout=60)):                                     # good one
        assert one_error(r, "gdb could not load the core") == want
    # an empty file and a missing one: named too
    empty = tmp_path / "empty.core"
    empty.write_bytes(b"")
    r = run_gdb("memleak maps", exe=exe, core=str(empty), timeout=60)
    assert "is empty" in one_error(r, "gdb could not load the core %s" % empty)
    r = run_gdb("memleak maps", exe=exe, core=str(tmp_path / "none.core"), timeout=60)
    assert "No such file" in one_error(r, "gdb could not load the core")


def test_process_died_between_commands(workdir, tmp_path):
    exe = build(workdir, "threads.c", "threads64")
    run = Running([exe, "0"])
    try:
        out = tmp_path / "m.json"
        r = run_gdb("memleak maps --kind heap", "shell kill -9 %d" % run.pid, "shell sleep 0.5",
                    "memleak maps --json %s" % out, pid=run.pid, timeout=60)
        assert one_error(r, EXITED) == "the process %d %s" % (run.pid, EXITED)
        assert not out.exists()
        # the first command succeeded: its stop-time line once; the failed one: none
        assert [l.split(":")[0] for l in ran_for_lines(r.stderr)] == ["memleak maps"], r.stderr
    finally:
        run.kill()
    # started by 'run', killed behind gdb's back
    r = run_gdb("break main", "run", "python import os, signal; os.kill(gdb.selected_inferior().pid, signal.SIGKILL)",
                "shell sleep 0.3", "memleak leaks", exe=exe, timeout=60)
    assert one_error(r, EXITED).startswith("the process ")
    # exited normally: gdb knows, the command says which process
    r = run_gdb("run", "memleak maps", exe="/bin/true", timeout=60)
    assert re.fullmatch(r"the process \d+ " + re.escape(EXITED), one_error(r, EXITED))


# -- remote targets -----------------------------------------------------------------------------
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _gdbserver(workdir):
    """The threads fixture under `gdbserver --attach`: (exe, fixture, gdbserver process, port)."""
    if not shutil.which("gdbserver"):
        pytest.skip("gdbserver not installed (apt-get install gdbserver)")
    exe = build(workdir, "threads.c", "threads64")
    run = Running([exe, "0"])
    port = _free_port()
    gs = subprocess.Popen(["gdbserver", "--attach", "127.0.0.1:%d" % port, str(run.pid)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 20
        while time.time() < deadline:
            line = gs.stderr.readline()
            if not line or "Listening on port" in line:
                break
        yield exe, run, gs, port
    finally:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            if gs.poll() is None:
                gs.send_signal(sig)
        gs.wait()
        run.kill()


def _remote_session(exe, port, action, out, timeout_s=1):
    t0 = time.monotonic()
    r = run_gdb("set remotetimeout %d" % timeout_s, "target remote 127.0.0.1:%d" % port, "memleak maps --kind heap",
                action, "shell sleep 0.5", "memleak maps --json %s" % out, exe=exe, timeout=60)
    return r, time.monotonic() - t0


def test_remote_gdbserver_killed_stopped_or_process_gone(workdir, tmp_path):
    out = tmp_path / "m.json"
    with _gdbserver(workdir) as (exe, run, gs, port):
        r, secs = _remote_session(exe, port, "shell kill -9 %d" % gs.pid, out)
        line = one_error(r, "closed the connection")
        assert line.startswith("the remote target (127.0.0.1:%d) closed the connection" % port), line
        assert "'target remote 127.0.0.1:%d' again" % port in line and secs < 20
    with _gdbserver(workdir) as (exe, run, gs, port):
        # gdbserver stopped (SIGSTOP): it never answers; bounded by gdb's remote timeout (1 s x 3 tries)
        r, secs = _remote_session(exe, port, "shell kill -STOP %d" % gs.pid, out)
        line = one_error(r, "stopped answering")
        assert "no reply within gdb's remote timeout (1 s" in line and secs < 25, (secs, line)
        assert "Ignoring packet error" not in r.stdout + r.stderr
    with _gdbserver(workdir) as (exe, run, gs, port):
        r, secs = _remote_session(exe, port, "shell kill -9 %d" % run.pid, out)
        line = one_error(r, "has exited (or was killed)")
        assert line.startswith("the process %d behind the remote target (127.0.0.1:%d)" % (run.pid, port)), line
    assert not out.exists()
    # never any stop-time line on a remote target
    assert not ran_for_lines(r.stderr)


def test_remote_vgdb_valgrind_killed(workdir, tmp_path):
    if not shutil.which("valgrind") or not shutil.which("vgdb"):
        pytest.skip("valgrind not installed")
    exe = build(workdir, "vgleak.c", "vgleak")
    vg = subprocess.Popen(["valgrind", "--vgdb=yes", "--vgdb-error=0", exe, "3"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)
        out = tmp_path / "lc.json"
        t0 = time.monotonic()
        r = run_gdb("target remote | vgdb --pid=%d" % vg.pid, "source " + GDBINIT, "shell kill -9 %d" % vg.pid,
                    "shell sleep 0.5", "memleak maps", "memleak vgdb leak-check --json %s" % out,
                    exe=exe, source=False, timeout=60)
        assert time.monotonic() - t0 < 30
        want = "the process %d behind the remote target (| vgdb --pid=%d) has exited (or was killed)" % (vg.pid, vg.pid)
        clean(r)
        assert r.returncode != 0
        lines = [l for l in r.stderr.splitlines() if "behind the remote target" in l]
        assert len(lines) == 2 and all(l.startswith(want) for l in lines), r.stderr   # one per command
        assert "not connected to valgrind" not in r.stderr and not out.exists()
    finally:
        vg.kill()
        vg.wait()


# -- an impossible PT_LOAD --------------------------------------------------------------------
def test_impossible_segment_is_left_out(threads_core, tmp_path):
    """A PT_LOAD of 2^63 bytes (an 8,388,608 TiB mapping) is left out with a warning naming it,
    whether only p_memsz is impossible or p_filesz too (more than the core file could hold)."""
    exe, core, _truth = threads_core
    for what in ("memsz", "filesz"):
        bad = str(tmp_path / ("%s.core" % what))
        shutil.copyfile(core, bad)
        seg = [p for p in phdrs(bad) if p[1] == 1 and p[6] & 2 and p[4]][2]
        with open(bad, "r+b") as fh:
            fh.seek(seg[7] + 40)
            fh.write(struct.pack("<Q", 1 << 63))
            if what == "filesz":
                fh.seek(seg[7] + 32)
                fh.write(struct.pack("<Q", 1 << 63))
        out = tmp_path / ("%s.json" % what)
        r = run_gdb("memleak maps --json %s" % out, exe=exe, core=bad, timeout=120)
        clean(r)
        assert r.returncode == 0, r.stderr
        warned = [l for l in r.stderr.splitlines() if l.startswith("warning:") and "0x%x" % seg[3] in l]
        assert warned and ("skipped" in warned[0] or "left out" in warned[0]), r.stderr
        assert "EiB" not in r.stdout and "TiB" not in r.stdout
        doc = json.loads(out.read_text())
        assert doc["mappings"] and all(m["size"] < (1 << 47) for m in doc["mappings"])
        os.unlink(bad)


# -- the stop-time line -------------------------------------------------------------------------
def test_stop_time_line_once_on_success_only(workdir, tmp_path, threads_core):
    exe = build(workdir, "threads.c", "threads64")
    run = Running([exe, "0"])
    try:
        r = run_gdb("memleak maps --kind heap", "memleak threads", "memleak dump -o %s 0x10 0x20" % (tmp_path / "d"),
                    pid=run.pid, timeout=60)
        assert "not mapped" in one_error(r, "not mapped")
        assert [l.split(":")[0] for l in ran_for_lines(r.stderr)] == ["memleak maps", "memleak threads"], r.stderr
        assert r.stderr.rstrip().splitlines()[-1].count("not mapped") == 1     # nothing after the error line
    finally:
        run.kill()
    exe, core, _truth = threads_core
    r = run_gdb("memleak maps --kind heap", exe=exe, core=core, timeout=60)       # a core is not stopped by anyone
    clean(r)
    assert r.returncode == 0 and not ran_for_lines(r.stderr) and "ran for" not in r.stderr


# -- Ctrl-C ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bigheap(workdir):
    exe = build(workdir, "bigheap.cpp", "bigheap")
    run = Running([exe, "1024"])
    yield run
    run.kill()


def _interrupt(pid, commands, after, env=None):
    """gdb attached to PID runs COMMANDS; SIGINT reaches gdb AFTER seconds into the first one.
    Then gdb lists Python's threads.  Returns (returncode, stdout, stderr)."""
    argv = ["gdb", "-nx", "-batch", "-ex", "source " + GDBINIT, "-p", str(pid),
            "-ex", "python gdb.write('MEMLEAK-START\\n', gdb.STDERR); gdb.flush()"]
    for c in commands:
        argv += ["-ex", c]
    argv += ["-ex", "python import threading; print('THREADS=' + ','.join(t.name for t in threading.enumerate()))"]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                         env=dict(os.environ, **(env or {})))
    head = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            line = p.stderr.readline()
            if not line:
                break
            head.append(line)
            if "MEMLEAK-START" in line:
                break
        time.sleep(after)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return p.returncode, out, "".join(head) + err


def _check_interrupted(out, err, name, count=1):
    for b in BAD:
        assert b not in out + err, err
    assert err.count("memleak %s: interrupted" % name) == count, err
    assert [l for l in err.splitlines() if "interrupted" in l] == ["memleak %s: interrupted" % name] * count
    assert "THREADS=MainThread\n" in out, out      # no scan thread left behind


def test_ctrl_c_stops_cleanly(bigheap, tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    # leaks (~5 s on 1 GiB here): no --json, no --addresses file
    rc, out, err = _interrupt(bigheap.pid, ["memleak leaks --json %s --addresses %s" % (d / "l.json", d / "l.addrs")],
                              1.5)
    _check_interrupted(out, err, "leaks")
    assert not ran_for_lines(err) and os.listdir(d) == []
    # the census, many times in a row (0.4 s each on one thread with the compiled kernel, ~1 s
    # without): the one interrupted writes nothing, the ones before complete files, none runs after
    cmds = ["memleak vtable-census --all --json %s" % (d / ("c%d.json" % i)) for i in range(30)]
    rc, out, err = _interrupt(bigheap.pid, cmds, 2.2, env={"GDB_MEMLEAK_THREADS": "1"})
    _check_interrupted(out, err, "vtable-census")
    done = sorted(os.listdir(d))
    assert 1 <= len(done) == len(ran_for_lines(err)) < len(cmds), (done, err)
    for name in done:
        assert json.loads((d / name).read_text())["classes"]
        os.unlink(d / name)
    # dump (~3.5 s, 1.2 GiB): the files written so far are removed
    dump = d / "dump"
    rc, out, err = _interrupt(bigheap.pid, ["memleak dump --force -o %s" % dump], 1.0)
    _check_interrupted(out, err, "dump")
    assert not dump.exists() or os.listdir(dump) == []
