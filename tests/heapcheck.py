"""Compare `memleak heap --json` (run without libc debug info) with glibc's own bookkeeping read
through libc6-dbg by tests/oracle (a separate gdb process, code that shares nothing with ours).

``disagreements(ours, truth)`` lists every difference in words; the tests assert it is empty.
What must match (see tests/oracle.expected_tool_view for how glibc's side is derived):
- main_arena's address, and the set of arenas on the ring;
- each arena's heaps [(start, end)] (thread arenas: heap_info + size; main: sbrk_base..top end);
- each arena's in-use, tcache, fastbin and bin (chunks, bytes), and its top size;
- each live thread's tcache: the chunks its lists hold;
- mmapped chunks against mp_.n_mmaps / mp_.mmapped_mem;
- no finding on a healthy heap, no chunk of unknown state, nothing unexplained by the model.
"""
from __future__ import annotations

import os
import subprocess
import tempfile

from conftest import GDBINIT, PY, ROOT, load_json
from oracle import expected_tool_view


def disagreements(ours: dict, truth: dict, healthy: bool = True, expected_findings=()) -> list:
    bad = []
    view = expected_tool_view(truth)
    ps = truth.get("pointer_size", 8)
    t_arenas = {a["address"]: a for a in view["arenas"]}
    o_arenas = {int(a["address"], 16): a for a in ours["arenas"] if a["address"]}
    main = [a for a in view["arenas"] if a["main"]][0]
    if ours.get("main_arena") is None or int(ours["main_arena"], 16) != main["address"]:
        bad.append("main_arena: ours %s, glibc 0x%x" % (ours.get("main_arena"), main["address"]))
    if set(t_arenas) != set(o_arenas):
        bad.append("arenas: missing %s, extra %s" % (
            sorted(hex(a) for a in set(t_arenas) - set(o_arenas)),
            sorted(hex(a) for a in set(o_arenas) - set(t_arenas))))
    if any(a["address"] is None for a in ours["arenas"]):
        bad.append("heaps found by shape only: %s" % [a["heaps"] for a in ours["arenas"] if a["address"] is None])
    for addr, t in t_arenas.items():
        o = o_arenas.get(addr)
        if o is None:
            continue
        name = "arena 0x%x" % addr
        o_heaps = [(int(h["start"], 16), int(h["end"], 16)) for h in o["heaps"]]
        if sorted(o_heaps) != sorted(tuple(h) for h in t["heaps"]):
            bad.append("%s heaps: ours %s, glibc %s" % (name, [(hex(a), hex(b)) for a, b in o_heaps],
                                                        [(hex(a), hex(b)) for a, b in t["heaps"]]))
        for key, ok, tk in (("in use", "in_use", "in_use"), ("tcache", "tcache", "tcache"),
                            ("fastbin", "fastbin", "fastbin"), ("bins", "bin", "free")):
            got = (o[ok + "_chunks"], o[ok + "_bytes"])
            if got != tuple(t[tk]):
                bad.append("%s %s (chunks, bytes): ours %s, glibc %s" % (name, key, got, tuple(t[tk])))
        if o["top_size"] != t["top_size"]:
            bad.append("%s top size: ours %d, glibc %d" % (name, o["top_size"], t["top_size"]))
        if o.get("unknown_chunks"):
            bad.append("%s: %d chunks of unknown state" % (name, o["unknown_chunks"]))
        for h in o["heaps"]:
            if h.get("walked_to"):
                bad.append("%s: walk of heap %s stopped at %s" % (name, h["start"], h["walked_to"]))
    t_tc = {t["lwp"]: t for t in truth["tcache"]}
    o_tc = {t["lwp"]: t for t in ours["tcaches"]}
    for lwp, t in t_tc.items():
        o = o_tc.get(lwp)
        t_addr = t.get("address") or None
        if o is None:
            if t_addr:
                bad.append("LWP %d: tcache 0x%x not found" % (lwp, t_addr))
            continue
        o_addr = int(o["address"], 16) if o["address"] else None
        if o_addr != t_addr:
            bad.append("LWP %d tcache: ours %s, glibc %s" % (lwp, o["address"], hex(t_addr) if t_addr else None))
        if (o["chunks"], o["bytes"]) != (t["chunks"], t["bytes"]):
            bad.append("LWP %d tcache (chunks, bytes): ours %s, glibc %s" % (
                lwp, (o["chunks"], o["bytes"]), (t["chunks"], t["bytes"])))
    n, nbytes = view["mmapped"]
    mm = ours["mmapped"]
    if mm["chunks"] != n or mm["mapped_bytes"] != nbytes:
        bad.append("mmapped chunks (count, bytes): ours %s, mp_ %s" % ((mm["chunks"], mm["mapped_bytes"]), (n, nbytes)))
    if healthy:
        extra = [f["message"] for f in ours["findings"] if f["kind"] not in expected_findings]
        if extra:
            bad.append("findings on a healthy heap: %s" % extra)
        if ours["discovery"] != "arena ring":
            bad.append("discovery: %s" % ours["discovery"])
    return bad


NO_DEBUG = "set debug-file-directory /nonexistent-memleak"


def ours_offline(exe, core, cmd="heap", extra=()):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "o.json")
        r = subprocess.run([PY, "-m", "gdb_memleak", "--core", core, "--exe", exe, "--no-progress", cmd,
                            *extra, "--json", out], capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert r.returncode == 0, r.stderr + r.stdout
        assert "internal error" not in r.stderr + r.stdout
        return load_json(out)


def ours_gdb_core(exe, core, cmd="heap", extra=()):
    """Our command inside gdb on the core, with libc's debug info hidden from gdb."""
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "o.json")
        r = subprocess.run(["gdb", "-nx", "-batch", "-iex", NO_DEBUG, "-ex", "source " + GDBINIT,
                            "-ex", "memleak %s %s --json %s" % (cmd, " ".join(extra), out), exe, core],
                           capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert r.returncode == 0, r.stderr + r.stdout
        assert "internal error" not in r.stderr + r.stdout
        assert "libc.so" not in _debug_loaded(r.stdout + r.stderr)
        return load_json(out)


def _debug_loaded(text):
    return "".join(l for l in text.splitlines() if "Reading symbols from /usr/lib/debug" in l)


class Stop:
    """One deterministic stop of a program, taken in ONE gdb session with libc's debug info
    hidden and ASLR on: a gcore, then our commands live; glibc's truth comes from the core,
    read by the oracle in another gdb (with the debug info)."""

    def __init__(self, workdir, name, exe, run_cmds, commands=("heap",), timeout=600, env=()):
        from oracle import truth_from_core
        self.exe = exe
        self.core = os.path.join(str(workdir), name + ".core")
        self.live = {}
        argv = ["gdb", "-nx", "-batch", "-iex", NO_DEBUG, "-iex", "set disable-randomization off"]
        for k, v in env:
            argv += ["-iex", "set environment %s=%s" % (k, v)]
        argv += [x for c in run_cmds for x in ("-ex", c)]
        argv += ["-ex", "gcore " + self.core, "-ex", "source " + GDBINIT]
        for c in commands:
            out = os.path.join(str(workdir), "%s.live.%s.json" % (name, c.split()[0]))
            argv += ["-ex", "memleak %s --json %s" % (c, out)]
            self.live[c.split()[0]] = out
        argv += ["-ex", "kill", exe]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        self.gdb_output = r.stdout + r.stderr
        assert os.path.exists(self.core), self.gdb_output[-3000:]
        assert "internal error" not in self.gdb_output, self.gdb_output[-3000:]
        for c, out in self.live.items():
            assert os.path.exists(out), "live memleak %s failed:\n%s" % (c, self.gdb_output[-3000:])
            self.live[c] = load_json(out)
        self.truth = truth_from_core(exe, self.core, timeout=timeout)
