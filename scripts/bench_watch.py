#!/usr/bin/env python3
"""CPU cost of `watch`: start tests/fixtures/grow.c (1,000 small mappings + one region growing
from one thread), run the watcher for --samples samples at --interval, and report the watcher's
own CPU time (user + system, its whole process: interpreter start and imports included) over its
wall time; plus the loop alone, as the watcher measures itself (summary "cost").

    .venv/bin/python scripts/bench_watch.py [--samples 30] [--interval 1] [--regions 1000]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from benchlib import FIXTURES, PY, ROOT, Running, code_state, loadavg

CODE = "import sys; from gdb_memleak.core.watch import main; sys.exit(main(sys.argv[1:]))"


def run_watcher(pid, samples, interval, work, tag, write_samples):
    summ = os.path.join(work, "summary-%s.json" % tag)
    argv = [PY, "-c", CODE, "--pid", str(pid), "--interval", str(interval), "--count", str(samples), "--json", summ]
    if write_samples:
        argv += ["--out", os.path.join(work, "samples-" + tag)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    with open(os.path.join(work, "out-%s.txt" % tag), "w") as fh:     # a file: the one-line-per-sample mode
        r = subprocess.run(argv, stdout=fh, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    wall = time.monotonic() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode:
        sys.exit("watcher failed (%d): %s" % (r.returncode, r.stderr))
    user, sys_ = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    with open(summ) as fh:
        s = json.load(fh)
    size = None
    if write_samples:
        d = os.path.join(work, "samples-" + tag)
        names = sorted(os.listdir(d))
        size = os.path.getsize(os.path.join(d, names[-1]))
    return {"tag": tag, "wall": wall, "user": user, "sys": sys_, "cpu": user + sys_,
            "percent": 100.0 * (user + sys_) / wall, "loop": s["cost"], "samples": s["samples"],
            "mappings": s["mappings"], "top": s["growth"][0] if s["growth"] else None,
            "thread": s["threads"][0] if s["threads"] else None, "sample_bytes": size}


def smaps_cost(pid, reps=20):
    """(VmRSS MiB, CPU ms of one read of /proc/PID/smaps by this process: the kernel's page walk)."""
    with open("/proc/%d/status" % pid) as fh:
        rss = [int(ln.split()[1]) for ln in fh if ln.startswith("VmRSS:")][0] / 1024.0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    c = ru.ru_utime + ru.ru_stime
    for _ in range(reps):
        with open("/proc/%d/smaps" % pid, "rb") as fh:
            fh.read()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return rss, 1000.0 * (ru.ru_utime + ru.ru_stime - c) / reps


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--regions", type=int, default=1000)
    ap.add_argument("--kib-per-tick", type=int, default=256, help="growth per 100 ms (default 256 KiB: 2.5 MiB/s)")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench_watch.")
    exe = os.path.join(work, "grow")
    subprocess.run(["gcc", "-O1", "-pthread", os.path.join(FIXTURES, "grow.c"), "-o", exe], check=True)
    print("code: %s; load before: %s; %d CPUs" % (code_state(), loadavg(), os.cpu_count()))
    run = Running([exe, "0", str(a.kib_per_tick), str(a.regions)])
    try:
        with open("/proc/%d/maps" % run.pid) as fh:
            nmaps = sum(1 for _ in fh)
        print("fixture pid %d: %d mappings, grows %s at %d KiB per 100 ms from thread %d" % (
            run.pid, nmaps, run.truth["grow_start"], a.kib_per_tick, run.truth["worker_tid"]))
        costs = [smaps_cost(run.pid)]
        rows = [run_watcher(run.pid, a.samples, a.interval, work, "out", True),
                run_watcher(run.pid, a.samples, a.interval, work, "noout", False)]
        costs.append(smaps_cost(run.pid))
    finally:
        run.kill()
    print("load after: %s" % loadavg())
    print()
    print("| run | samples | mappings | wall s | CPU s (user + sys) | CPU / wall | loop only (watcher's own count) | per sample | sample file |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        loop = r["loop"]
        print("| %s | %d | %d | %.1f | %.3f (%.3f + %.3f) | **%.2f%%** | %.3f s / %.1f s = %.2f%% | %.1f ms | %s |" % (
            "--out DIR --json FILE" if r["tag"] == "out" else "--json FILE only", r["samples"], r["mappings"],
            r["wall"], r["cpu"], r["user"], r["sys"], r["percent"], loop["cpu_s"], loop["wall_s"],
            loop["cpu_percent"], 1000.0 * loop["cpu_s"] / max(r["samples"], 1),
            "%.0f KiB" % (r["sample_bytes"] / 1024.0) if r["sample_bytes"] else "-"))
    for r in rows:
        top, th = r["top"], r["thread"]
        print("%s: top region %s %+.1f MiB/min (truth %s); top thread %d %r %.0f minflt/s (truth %d)" % (
            r["tag"], top and top["start"], top and top["mib_per_min"], run.truth["grow_start"],
            th["tid"], th["comm"], th["minflt_per_s"], run.truth["worker_tid"]))
    for rss, ms in costs:
        print("one read of smaps at VmRSS %.0f MiB: %.1f ms CPU" % (rss, ms))
    (r0, m0), (r1, m1) = costs
    if r1 > r0 + 16:
        print("=> %.1f ms fixed (%d mappings) + %.1f ms per GiB of resident 4 KiB pages" % (
            m0 - (m1 - m0) / (r1 - r0) * r0, nmaps, (m1 - m0) / (r1 - r0) * 1024))
    print("work folder: %s" % work)


if __name__ == "__main__":
    main()
