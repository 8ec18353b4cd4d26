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
from benchlib import GDB, PY, ROOT, big_heap, rss_of, timed  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--manual-mib", type=int, default=64)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-census-")
    exe, run, core, gcore_s = big_heap(work, a.mib)
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
        base_gdb = rss_of(gdb + [exe, core])
        base_py = rss_of([PY, "-c", "import numpy, elftools, tabulate"])
        # the manual method on a range of the heap
        maps = os.path.join(work, "m.json")
        subprocess.run([PY, "-m", "gdb_memleak", "--core", core, "maps", "--kind", "heap", "--json", maps],
                       check=True, cwd=ROOT, capture_output=True)
        heap = json.load(open(maps))["mappings"][0]
        start = int(heap["start"], 16) + (1 << 20)
        n = (a.manual_mib << 20) // 8
        log = os.path.join(work, "gdb.txt")
        manual_cmd = ["gdb", "-nx", "-batch", "-ex", "set logging file " + log, "-ex", "set logging redirect on",
                      "-ex", "set logging overwrite on", "-ex", "set logging enabled on",
                      "-ex", "x/%da 0x%x" % (n, start), "-ex", "set logging enabled off", exe, core]
        t = time.monotonic()
        subprocess.run(manual_cmd, capture_output=True)
        grep = subprocess.run("grep -o '<_ZTV[^>]*>' %s | sort | uniq -c | sort -rn" % log, shell=True,
                              capture_output=True, text=True).stdout
        manual_s = time.monotonic() - t
        out2 = os.path.join(work, "r.json")
        t = time.monotonic()
        subprocess.run(gdb + ["-ex", "memleak vtable-census 0x%x 0x%x --raw --json %s" % (start, start + n * 8, out2),
                              exe, core], check=True, capture_output=True)
        ours_s = json.load(open(out2))["seconds"]
        ours_total = time.monotonic() - t
        manual_counts = {m.group(2): int(m.group(1)) for m in re.finditer(r"(\d+) <(_ZTV\w+\+\d+)>", grep)}
        ours_counts = {"%s+%d" % (p["vtable"], p["offset"]): p["count"] for p in json.load(open(out2))["points"]}
        print("\n## vtable-census (%s, %d MiB heap, %d objects; gcore took %.1f s)\n" % (
            time.strftime("%Y-%m-%d"), a.mib, sum(c["count"] for c in doc["classes"]), gcore_s))
        print("| where | scanned | setup s | scan s | MB/s | wall s | peak RSS MiB (baseline) |")
        print("|---|---|---|---|---|---|---|")
        for label, nb, setup, scan, rate, wall, rss in results:
            basel = base_py if label.startswith("offline") else base_gdb
            print("| %s | %.0f MiB | %.2f | %.2f | %.0f | %.1f | %.0f (%.0f) |" % (
                label, nb / 2**20, setup, scan, rate, wall, rss, basel))
        print("\nManual method on %d MiB (`x/%da` logged + grep/sort/uniq): %.1f s; "
              "vtable-census on the same range: %.3f s in the command (%.1f s with gdb start-up); "
              "ratio %.0fx (command) / %.0fx (wall). Counts identical: %s\n" % (
                  a.manual_mib, n, manual_s, ours_s, ours_total, manual_s / max(ours_s, 1e-9),
                  manual_s / ours_total, manual_counts == ours_counts))
    finally:
        run.kill()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
