#!/usr/bin/env python3
"""Benchmark memleak heap and memleak leaks on a >= 1 GiB heap with millions of chunks, offline,
in gdb on the core and live (wall time, time inside the command, peak RSS); and, in the same run,
valgrind's own leak check (vgdb `leak_check full reachable any`) against ours on a smaller heap;
optionally chap (github:vmware/chap, `--chap PATH`: `count used`, then `count leaked` + `count used`
on the same core, wall time and peak RSS of each chap run).  Prints Markdown for docs/PERFORMANCE.md.
Usage: scripts/bench_leaks.py [--mib 1024] [--leak-every 16] [--arena] [--valgrind-mib 128] [--chap PATH]"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import GDB, PY, ROOT, Running, big_heap, code_state, loadavg, rss_of, run_measured, timed  # noqa: E402


def measure(label, argv, out):
    wall, _ = timed(argv, cwd=ROOT)
    doc = json.load(open(out))
    return {"label": label, "wall": wall, "seconds": doc.get("seconds"), "rss": rss_of(argv), "doc": doc}


def valgrind_compare(work, exe, mib, leak_every):
    """(valgrind leak_check seconds, ours seconds, valgrind counts, our counts) on MIB of heap."""
    t = time.monotonic()
    run = Running(["valgrind", "--vgdb=yes", exe, str(mib), str(leak_every)])
    vg_run = time.monotonic() - t
    try:
        pid = int(open("/proc/%d/status" % run.pid).read().split("Pid:")[1].split()[0])
        t = time.monotonic()
        r = subprocess.run(["vgdb", "--pid=%d" % pid, "leak_check", "full", "reachable", "any"],
                           capture_output=True, text=True, timeout=3600)
        vg_s = time.monotonic() - t
        text = r.stdout + r.stderr
        vg = {k: int(re.search(r"%s lost: [\d,]+ bytes in ([\d,]+) blocks" % k, text).group(1).replace(",", ""))
              for k in ("definitely", "indirectly")}
    finally:
        run.kill()
    t = time.monotonic()
    native = Running([exe, str(mib), str(leak_every)])
    try:
        core = native.gcore(os.path.join(work, "small.core"))
    finally:
        native.kill()
    native_run = time.monotonic() - t
    out = os.path.join(work, "small.json")
    t = time.monotonic()
    timed([PY, "-m", "gdb_memleak", "--core", core, "--no-progress", "leaks", "--json", out], cwd=ROOT)
    ours_s = time.monotonic() - t
    lk = json.load(open(out))["leaked"]
    os.unlink(core)
    return (vg_run, vg_s, native_run, ours_s, vg,
            {"definitely": lk["direct_chunks"], "indirectly": lk["indirect_chunks"]})


def chap_runs(chap, core):
    """chap on CORE, commands from stdin, each session run alone: [(commands, wall s, peak RSS MiB,
    {command: allocation count})]."""
    res = []
    for cmds in (["count used"], ["count leaked", "count used"]):
        wall, rss, out = run_measured([chap, core], "\n".join(cmds) + "\n")
        counts = [int(m.group(1)) for m in re.finditer(r"^(\d+) allocations use", out, re.M)]
        if len(counts) != len(cmds):
            sys.exit("unexpected chap output for %s:\n%s" % (cmds, out[-2000:]))
        res.append((cmds, wall, rss, dict(zip(cmds, counts))))
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--arena", action="store_true",
                    help="half the heap in one thread arena several heaps long, ~1.6 M chunks per GiB")
    ap.add_argument("--leak-every", type=int, default=16)
    ap.add_argument("--valgrind-mib", type=int, default=128, help="0 skips the valgrind comparison")
    ap.add_argument("--chap", metavar="PATH", help="chap executable: time it on the same core")
    a = ap.parse_args()
    load_before, code = loadavg(), code_state()
    work = tempfile.mkdtemp(prefix="bench-leaks-")
    exe, run, core, gcore_s = big_heap(work, a.mib, a.leak_every, arena=a.arena)
    rows = []
    try:
        out = os.path.join(work, "o.json")
        for cmd in ("heap", "leaks"):
            rows.append(measure("`%s` offline" % cmd, [PY, "-m", "gdb_memleak", "--core", core, "--no-progress",
                                                         cmd, "--json", out], out))
            rows.append(measure("`%s` in gdb on the core" % cmd,
                                GDB + ["-ex", "set memleak progress off", "-ex", "memleak %s --json %s" % (cmd, out),
                                       exe, core], out))
            rows.append(measure("`%s` in gdb live" % cmd,
                                GDB + ["-p", str(run.pid), "-ex", "set memleak progress off",
                                       "-ex", "memleak %s --json %s" % (cmd, out)], out))
        base_gdb = rss_of(GDB + [exe, core])
        base_py = rss_of([PY, "-c", "import numpy, elftools, tabulate"])
        truth = run.truth
        chap = chap_runs(a.chap, core) if a.chap else None
    finally:
        run.kill()
    vg = valgrind_compare(work, exe, a.valgrind_mib, a.leak_every) if a.valgrind_mib else None
    subprocess.run(["rm", "-rf", work])
    load_after = loadavg()

    leaks_doc = [r for r in rows if r["label"].startswith("`leaks`")][0]["doc"]
    heap_doc = [r for r in rows if r["label"].startswith("`heap`")][0]["doc"]
    print("\n## heap and leaks (%s): `scripts/bench_leaks.py --mib %d --leak-every %d%s --valgrind-mib %d%s`\n" % (
        time.strftime("%Y-%m-%d"), a.mib, a.leak_every, " --arena" if a.arena else "", a.valgrind_mib,
        " --chap PATH" if a.chap else ""))
    print("Code: %s. Load average (1, 5, 15 min) before: %s; after: %s (%d cores).\n" % (
        code, load_before, load_after, os.cpu_count()))
    print("Fixture: %d objects, %d MiB; %d in-use chunks (%.0f MiB); leaked: %d direct + %d indirect "
          "(truth: %d + %d); %d references followed; gcore took %.1f s.\n" % (
              truth["objects"], truth["bytes"] >> 20, leaks_doc["in_use"]["chunks"],
              leaks_doc["in_use"]["bytes"] / 2**20, leaks_doc["leaked"]["direct_chunks"],
              leaks_doc["leaked"]["indirect_chunks"], truth["direct"], truth["indirect"],
              leaks_doc.get("references", 0), gcore_s))
    print("| command | wall s | in command s | peak RSS MiB (baseline) |")
    print("|---|---|---|---|")
    for r in rows:
        basel = base_py if "offline" in r["label"] else base_gdb
        print("| %s | %.1f | %s | %.0f (%.0f) |" % (r["label"], r["wall"],
                                                   "%.1f" % r["seconds"] if r["seconds"] is not None else "-",
                                                   r["rss"], basel))
    assert heap_doc["arenas"]
    if chap:
        ours_n = leaks_doc["leaked"]["direct_chunks"] + leaks_doc["leaked"]["indirect_chunks"]
        print("\nchap (`%s CORE`, commands on stdin), same core, same run, each session alone:\n" % a.chap)
        print("| chap commands | wall s | peak RSS MiB | leaked | used |")
        print("|---|---|---|---|---|")
        for cmds, wall, rss, counts in chap:
            print("| %s | %.1f | %.0f | %s | %s |" % (" + ".join("`%s`" % c for c in cmds), wall, rss,
                                                     "{:,}".format(counts["count leaked"]) if "count leaked" in counts else "-",
                                                     "{:,}".format(counts["count used"])))
        chap_n = chap[-1][3]["count leaked"]
        print("\nLeaked allocations — truth (direct + indirect): {:,}; ours: {:,} ({:,} + {:,}); chap: {:,}. "
              "In use — ours: {:,} chunks; chap `count used`: {:,}.\n".format(
                  truth["direct"] + truth["indirect"], ours_n, leaks_doc["leaked"]["direct_chunks"],
                  leaks_doc["leaked"]["indirect_chunks"], chap_n, leaks_doc["in_use"]["chunks"],
                  chap[-1][3]["count used"]))
    if vg:
        vg_run, vg_s, native_run, ours_s, vgc, ours = vg
        print("\nSame program with %d MiB of heap, from start to answer:\n" % a.valgrind_mib)
        print("| | run to the snapshot point | leak check | total |")
        print("|---|---|---|---|")
        print("| valgrind (`--vgdb=yes`, then `vgdb leak_check full reachable any`) | %.1f s | %.1f s | %.1f s |" % (
            vg_run, vg_s, vg_run + vg_s))
        print("| native run + gcore, then `memleak leaks` offline | %.1f s | %.1f s | %.1f s |" % (
            native_run, ours_s, native_run + ours_s))
        print("\nRatio %.1fx. Blocks lost — valgrind: %s; ours: %s.\n" % (
            (vg_run + vg_s) / max(native_run + ours_s, 1e-9), vgc, ours))


if __name__ == "__main__":
    main()
