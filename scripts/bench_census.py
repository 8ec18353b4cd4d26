#!/usr/bin/env python3
"""Benchmark memleak vtable-census: a >= 1 GiB heap, scanned offline, in gdb on the core and live,
against the manual `x/Na` + _ZTV count on a 64 MiB range; peak RSS.  Prints a Markdown table
for docs/PERFORMANCE.md.   Usage: scripts/bench_census.py [--mib 1024] [--manual-mib 64]"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import GDB, PY, ROOT, big_heap, code_state, loadavg, rss_of, timed  # noqa: E402


def manual_method(work, where, start, n, redirect):
    """Field report 004's steps: `set height 0`, `set logging on` (gdb.txt; the lines also go to the
    terminal, here /dev/null, unless redirected), `x/Na START`, then its shell pipeline over the
    log.  Returns (seconds, {"_ZTV...+off": count})."""
    log = os.path.join(work, "gdb.txt")
    tfile = os.path.join(work, "xa.txt")
    cmd = ["gdb", "-nx", "-batch", "-ex", "set height 0", "-ex", "set logging file " + log,
           "-ex", "set logging overwrite on"] + (["-ex", "set logging redirect on"] if redirect else []) + [
           "-ex", "python import time; _t0 = time.monotonic()",
           "-ex", "set logging enabled on", "-ex", "x/%da 0x%x" % (n, start), "-ex", "set logging enabled off",
           "-ex", "python open(%r, 'w').write(str(time.monotonic() - _t0))" % tfile] + where
    t = time.monotonic()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t2 = time.monotonic()
    out = subprocess.run("cat %s | grep '<' | awk -F '<' '{print $2}' | awk -F '>' '{print $1}' "
                         "| sort | uniq -c | sort -rn" % log, shell=True, capture_output=True, text=True).stdout
    dt = time.monotonic() - t
    in_session = float(open(tfile).read()) + (time.monotonic() - t2)   # x/Na inside gdb + the pipeline
    # the report's awk keeps only the first <symbol> of a line (x/a prints two words per line):
    # count every one, untimed, to compare with ours
    every = subprocess.run("grep -o '<_ZTV[^>]*>' %s | sort | uniq -c" % log, shell=True, capture_output=True,
                           text=True).stdout
    os.unlink(log)
    counts = {m.group(2): int(m.group(1)) for m in re.finditer(r"(\d+) <(_ZTV\w+\+\d+)>", every)}
    field = sum(int(m.group(1)) for m in re.finditer(r"(\d+) (_ZTV\w+\+\d+)\s*$", out, re.M))
    return dt, counts, field, in_session


def raw_baseline(work, where, label, repeat):
    """scripts/bench_rawread.py in the process measured: the heap ranges read in the census's chunks
    by its scan threads with no analysis, interleaved with the census, ``repeat`` times each."""
    out = os.path.join(work, "raw.json")
    script = os.path.join(ROOT, "scripts", "bench_rawread.py")
    if where is None:
        timed([PY, script, label, out, str(repeat)], cwd=ROOT)
    else:
        timed(GDB + ["-ex", "python exec(open(%r).read())" % script] + where, cwd=ROOT,
              env=dict(os.environ, BENCH_OUT=out, BENCH_REPEAT=str(repeat)))
    return json.load(open(out))


def ours_in_gdb(work, where, start, end):
    """vtable-census on [start, end) as the first command of a gdb session, timed inside gdb around
    the whole command (target set-up, symbols, scan, output).  Returns (s, setup s, raw counts)."""
    out = os.path.join(work, "r.json")
    tfile = os.path.join(work, "t.txt")
    timed(GDB + ["-ex", "python import time; _t0 = time.monotonic()",
                 "-ex", "memleak vtable-census 0x%x 0x%x --raw --json %s" % (start, end, out),
                 "-ex", "python open(%r, 'w').write(str(time.monotonic() - _t0))" % tfile] + where, cwd=ROOT)
    doc = json.load(open(out))
    counts = {"%s+%d" % (p["vtable"], p["offset"]): p["count"] for p in doc["points"]}
    return float(open(tfile).read()), doc["setup_seconds"], counts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--arena", action="store_true",
                    help="half the heap in one thread arena several heaps long, ~1.6 M chunks per GiB")
    ap.add_argument("--manual-mib", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=7, help="raw-read baseline and census rounds (interleaved)")
    a = ap.parse_args()
    load_before, code = loadavg(), code_state()
    work = tempfile.mkdtemp(prefix="bench-census-")
    exe, run, core, gcore_s = big_heap(work, a.mib, arena=a.arena)
    try:
        gdb = GDB
        out = os.path.join(work, "c.json")
        results = []

        def census(label, argv):
            dt, r = timed(argv, cwd=ROOT)
            doc = json.load(open(out))
            scan = doc["seconds"] - doc["setup_seconds"]
            rate = doc["scanned_bytes"] / max(scan, 1e-9) / 1e6
            results.append((label, doc["scanned_bytes"], doc["setup_seconds"], scan, rate, dt,
                            rss_of(argv)))
            return doc

        doc = census("offline (python -m gdb_memleak)",
                     [PY, "-m", "gdb_memleak", "--core", core, "--no-progress", "vtable-census", "--heap", "--json", out])
        census("gdb on the core", gdb + ["-ex", "memleak vtable-census --heap --json " + out, exe, core])
        census("gdb live (attach)", gdb + ["-p", str(run.pid), "-ex", "memleak vtable-census --heap --json " + out])
        load_table = loadavg()
        # the raw-read baseline of issue 16: same ranges, chunks, threads; no analysis
        raws = [("offline (python)", raw_baseline(work, None, core, a.repeat)),
                ("gdb on the core", raw_baseline(work, [exe, core], None, a.repeat))]
        load_raw = loadavg()
        base_gdb = rss_of(gdb + [exe, core])
        base_py = rss_of([PY, "-c", "import numpy, elftools, tabulate"])
        # the manual method on a range of the heap, as field report 004 runs it
        maps = os.path.join(work, "m.json")
        subprocess.run([PY, "-m", "gdb_memleak", "--core", core, "maps", "--kind", "heap", "--json", maps],
                       check=True, cwd=ROOT, capture_output=True)
        heap = json.load(open(maps))["mappings"][0]
        start = int(heap["start"], 16) + (1 << 20)
        n = (a.manual_mib << 20) // 8
        end = start + n * 8
        manual = []
        for label, where, redirect in (("field procedure, live (attach)", ["-p", str(run.pid)], False),
                                       ("field procedure, core", [exe, core], False),
                                       ("log only (`set logging redirect on`), core", [exe, core], True)):
            manual.append((label,) + manual_method(work, where, start, n, redirect))
        ours = []
        for label, where in (("gdb live (attach)", ["-p", str(run.pid)]), ("gdb on the core", [exe, core])):
            ours.append((label,) + ours_in_gdb(work, where, start, end))
        print("\n## vtable-census (%s, %d MiB heap%s, %d objects; gcore took %.1f s)\n" % (
            time.strftime("%Y-%m-%d"), a.mib, ", --arena" if a.arena else "", sum(c["count"] for c in doc["classes"]),
            gcore_s))
        print("Code: %s. Load average (1, 5, 15 min) before: %s; after the main table: %s; after the whole "
              "run: %s (%d cores).\n" % (code, load_before, load_table, loadavg(), os.cpu_count()))
        print("| where | scanned | setup s | scan s | MB/s | wall s | peak RSS MiB (baseline) |")
        print("|---|---|---|---|---|---|---|")
        for label, nb, setup, scan, rate, wall, rss in results:
            basel = base_py if label.startswith("offline") else base_gdb
            print("| %s | %.0f MiB | %.2f | %.2f | %.0f | %.1f | %.0f (%.0f) |" % (
                label, nb / 2**20, setup, scan, rate, wall, rss, basel))
        print("\n### Against the raw read of the same ranges (same run; load after: %s)\n" % load_raw)
        print("`preadv` of the same %d MiB in the census's chunks by its scan threads, no analysis "
              "(scripts/bench_rawread.py), interleaved with the census function, %d rounds each; median "
              "(best). Kernel: %s.\n" % (raws[0][1]["bytes"] >> 20, a.repeat, raws[0][1]["kernel"]))
        print("| where | chunk | threads | raw read s | raw MB/s | census s | census MB/s | census / raw (medians) | best census / best raw |")
        print("|---|---|---|---|---|---|---|---|---|")
        for label, d in raws:
            import statistics
            mr, mc = statistics.median(d["raw"]), statistics.median(d["census"])
            print("| %s | %d KiB | %d | %.3f (%.3f) | %.0f | %.3f (%.3f) | %.0f | **%.0f%%** | %.0f%% |" % (
                label, d["chunk"] >> 10, d["threads"], mr, min(d["raw"]), d["bytes"] / mr / 1e6, mc,
                min(d["census"]), d["bytes"] / mc / 1e6, 100 * mr / mc, 100 * min(d["raw"]) / min(d["census"])))
        print("\n### %d MiB range: the manual method against vtable-census\n" % a.manual_mib)
        print("| manual method (`x/%da` + grep/awk/sort/uniq) | whole s (gdb start included) | in the gdb session s "
              "(`x/Na` timed inside gdb + the pipeline) | s/MiB (in session) | every `<_ZTV…>` of the log "
              "equals our raw counts | vptrs the report's awk pipeline counts / ours |" % n)
        print("|---|---|---|---|---|---|")
        for label, t, counts, field_n, in_s in manual:
            print("| %s | %.1f | %.1f | %.2f | %s | %d / %d |" % (label, t, in_s, in_s / a.manual_mib,
                                                                counts == ours[0][3], field_n, sum(ours[0][3].values())))
        print("\n| vtable-census | whole command s (first in the gdb session, timed inside gdb) | of which setup s "
              "| ratio field/ours (both in session) | ratio log-only/ours (both in session) |")
        print("|---|---|---|---|---|")
        field = {"gdb live (attach)": manual[0][4], "gdb on the core": manual[1][4]}
        for label, cmd_s, setup_s, counts in ours:
            print("| %s | %.3f | %.3f | %.0fx | %.0fx |" % (label, cmd_s, setup_s, field[label] / cmd_s,
                                                          manual[2][4] / cmd_s))
    finally:
        run.kill()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
