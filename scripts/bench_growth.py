#!/usr/bin/env python3
"""Benchmark the "what grew" commands on a 1 GiB heap holding field-like payloads
(tests/fixtures/bigheap.cpp ... payload: "channelid=N;" in every 8th Msg, ~250 k per GiB):

- `memleak strings --heap --histogram 'channelid=([0-9]+)'` offline, in gdb on the core and live:
  throughput = scanned_bytes / the command's own seconds (its --json), and the whole wall time;
  the histogram must equal the fixture's truth;
- the field's manual method in the same run (field report 002): dump the region (`memleak dump
  --kind heap,arena,anon`, and gdb's own `dump binary memory` of the same ranges), then
  `grep -a -o 'channelid=[0-9]*' FILES | sort | uniq -c`; its counts must equal ours;
- `memleak snapshot FILE` offline, in gdb on the core and live (gdb -p), with and without
  `--strings 'channelid=([0-9]+)'`: wall and the snapshot's own "seconds".

Each of our commands runs --repeat times (median, min-max shown); a target missed gets a cProfile
of the offline command.  Prints a Markdown section for docs/PERFORMANCE.md.

    .venv/bin/python scripts/bench_growth.py [--mib 1024] [--repeat 3] [--no-profile] [--keep]
"""
import argparse
import io
import json
import os
import pstats
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import GDB, PY, ROOT, big_heap, code_state, loadavg, run_measured, timed  # noqa: E402

HIST = "channelid=([0-9]+)"
GREP = "grep -a -o -h 'channelid=[0-9]*' %s | sort | uniq -c"
RATE_TARGET = 1e9          # bytes/s: strings --heap >= 1 GB/s on a 1 GiB heap
SNAP_TARGET = 2.0          # s: snapshot of that heap


def med(xs):
    return statistics.median(xs)


def spread(xs, fmt="%.2f"):
    """'median (min-max)' of several runs, or the one value."""
    if len(xs) == 1:
        return fmt % xs[0]
    return (fmt + " (" + fmt + "–" + fmt + ")") % (med(xs), min(xs), max(xs))


def ours(label, argv, out, repeat):
    """Run one of our commands ``repeat`` times, each alone in a fresh wrapper: a dict of lists
    (wall, rss, seconds) and the last JSON document it wrote to ``out``."""
    r = {"label": label, "wall": [], "rss": [], "seconds": [], "argv": argv}
    for _ in range(repeat):
        if os.path.exists(out):
            os.unlink(out)
        wall, rss, _stdout = run_measured(argv)
        with open(out) as fh:
            doc = json.load(fh)
        r["wall"].append(wall)
        r["rss"].append(rss)
        r["seconds"].append(doc["seconds"])
        r["doc"] = doc
    return r


def parse_uniq(text):
    """{value: count} of `uniq -c` lines 'N channelid=V'."""
    return {m.group(2): int(m.group(1)) for m in re.finditer(r"^\s*(\d+) channelid=(\d*)$", text, re.M)}


def pipeline(files, env_c):
    env = dict(os.environ, LC_ALL="C") if env_c else None
    t = time.monotonic()
    r = subprocess.run(GREP % " ".join(shlex.quote(f) for f in files), shell=True, capture_output=True,
                       text=True, env=env)
    return time.monotonic() - t, parse_uniq(r.stdout)


def profile(work, argv, label, top=14):
    """cProfile of an offline command (``argv`` after `python -m gdb_memleak`): (wall under the
    profiler, Markdown lines of the top entries by own time)."""
    pfile = os.path.join(work, "prof.out")
    t = time.monotonic()
    subprocess.run([PY, "-m", "cProfile", "-o", pfile, "-m", "gdb_memleak"] + argv, cwd=ROOT,
                   capture_output=True, check=True)
    dt = time.monotonic() - t
    st = pstats.Stats(pfile, stream=io.StringIO())
    rows = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:top]
    lines = ["%s (cProfile, %.2f s wall under the profiler), top %d by own time:" % (label, dt, top), "",
             "| own s | cumulative s | calls | function |", "|---|---|---|---|"]
    for (fname, line, func), (cc, nc, tt, ct, _callers) in rows:
        where = "%s:%d(%s)" % (os.path.relpath(fname, ROOT) if fname.startswith(ROOT) else os.path.basename(fname),
                               line, func) if line else func
        lines.append("| %.3f | %.3f | %d | `%s` |" % (tt, ct, nc, where))
    os.unlink(pfile)
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each of our commands (median shown)")
    ap.add_argument("--no-profile", action="store_true", help="no cProfile even when a target is missed")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (core, dumps)")
    a = ap.parse_args()
    load_before, code = loadavg(), code_state()
    work = tempfile.mkdtemp(prefix="bench-growth-")
    exe, run, core, gcore_s = big_heap(work, a.mib, payload=True)
    truth = {k: int(v) for k, v in run.truth["payload"].items()}
    out = os.path.join(work, "out.json")
    loads = []
    try:
        # --- strings --heap --histogram -------------------------------------------------------
        cmd = "strings --heap --histogram '%s' --json %s" % (HIST, out)
        strings_runs = [
            ours("offline (`python -m gdb_memleak`)",
                 [PY, "-m", "gdb_memleak", "--core", core, "--no-progress"] + shlex.split(cmd), out, a.repeat),
            ours("gdb on the core", GDB + ["-ex", "memleak " + cmd, exe, core], out, a.repeat),
            ours("gdb live (attach)", GDB + ["-p", str(run.pid), "-ex", "memleak " + cmd], out, a.repeat),
        ]
        loads.append(("after strings", loadavg()))
        for r in strings_runs:
            r["rate"] = [r["doc"]["scanned_bytes"] / s for s in r["seconds"]]
            r["ok"] = {k: int(v) for k, v in r["doc"]["histogram"].items()} == truth

        # --- the manual method: dump, then grep | sort | uniq -c ----------------------------------
        ddir = os.path.join(work, "dump")
        dump_s, _ = timed(GDB + ["-ex", "memleak dump --kind heap,arena,anon -o %s --force" % ddir, exe, core],
                          cwd=ROOT)
        manifest = json.load(open(os.path.join(ddir, "manifest.json")))
        files = [os.path.join(ddir, e["file"]) for e in manifest["regions"]]
        dumped = sum(e["size"] for e in manifest["regions"])
        dump_off_s, _ = timed([PY, "-m", "gdb_memleak", "--core", core, "--no-progress", "dump", "--kind",
                               "heap,arena,anon", "-o", ddir + "-offline", "--force"], cwd=ROOT)
        subprocess.run(["rm", "-rf", ddir + "-offline"])
        gdir = os.path.join(work, "gdbdump")
        os.mkdir(gdir)
        gcmds = []
        for e in manifest["regions"]:
            gcmds += ["-ex", "dump binary memory %s %s %s" % (os.path.join(gdir, e["file"]), e["start"], e["end"])]
        gdump_s, _ = timed(["gdb", "-nx", "-batch"] + gcmds + [exe, core])
        gfiles = [os.path.join(gdir, e["file"]) for e in manifest["regions"]]
        pipes = []
        for label, fl, env_c in (("on `memleak dump`'s files, locale %s" % os.environ.get("LANG", "unset"), files, False),
                                 ("on gdb `dump binary memory` files, locale %s" % os.environ.get("LANG", "unset"),
                                  gfiles, False),
                                 ("on `memleak dump`'s files, `LC_ALL=C`", files, True)):
            dt, counts = pipeline(fl, env_c)
            pipes.append((label, dt, counts))
        subprocess.run(["rm", "-rf", ddir, gdir])
        loads.append(("after the manual method", loadavg()))

        # --- snapshot ---------------------------------------------------------------------------
        snap = os.path.join(work, "snap.json")
        snap_runs = []
        for extra, tag in (("", "snapshot FILE"), (" --strings '%s'" % HIST, "snapshot FILE --strings")):
            c = "snapshot %s%s" % (snap, extra)
            snap_runs += [
                ours("offline", [PY, "-m", "gdb_memleak", "--core", core, "--no-progress"] + shlex.split(c), snap,
                     a.repeat),
                ours("gdb on the core", GDB + ["-ex", "memleak " + c, exe, core], snap, a.repeat),
                ours("gdb live (attach)", GDB + ["-p", str(run.pid), "-ex", "memleak " + c], snap, a.repeat),
            ]
            for r in snap_runs[-3:]:
                r["tag"] = tag
                s = r["doc"].get("strings")
                r["ok"] = None if s is None else {k: int(v) for k, v in s[HIST]["histogram"].items()} == truth
        loads.append(("after snapshot", loadavg()))

        # --- report -----------------------------------------------------------------------------
        doc = strings_runs[0]["doc"]
        ours_n = sum(int(v) for v in doc["histogram"].values())
        print("\n## strings and snapshot (what grew) — `scripts/bench_growth.py --mib %d --repeat %d` (%s)\n" % (
            a.mib, a.repeat, time.strftime("%Y-%m-%d")))
        print("Fixture `tests/fixtures/bigheap.cpp %d 0 payload`: %s objects, %d MiB of heap; every 8th Msg "
              "holds `channelid=N;`: %s copies (%s); gcore took %.1f s. `--heap` scans main heap + arenas + "
              "mmapped chunks (%.0f MiB with the keep-array). Code: %s. Load average (1, 5, 15 min) before: "
              "%s; %s; %d cores. Our commands ran %d times each, alone, one after another: median (min–max).\n"
              % (a.mib, "{:,}".format(run.truth["objects"]), a.mib, "{:,}".format(sum(truth.values())),
                 ", ".join("%s × %s" % ("{:,}".format(n), v) for v, n in sorted(truth.items(), key=lambda kv: -kv[1])),
                 gcore_s, doc["scanned_bytes"] / 2**20, code, load_before,
                 "; ".join("%s: %s" % kv for kv in loads), os.cpu_count(), a.repeat))

        print("### `memleak strings --heap --histogram '%s'`\n" % HIST)
        print("| where | scanned | in-command s | MB/s (scanned / in-command s) | wall s | MB/s by wall | "
              "peak RSS MiB | histogram = truth |")
        print("|---|---|---|---|---|---|---|---|")
        for r in strings_runs:
            nb = r["doc"]["scanned_bytes"]
            print("| %s | %.0f MiB | %s | **%s** | %s | %.0f | %.0f | %s |" % (
                r["label"], nb / 2**20, spread(r["seconds"]), spread([x / 1e6 for x in r["rate"]], "%.0f"),
                spread(r["wall"]), nb / med(r["wall"]) / 1e6, med(r["rss"]), "yes" if r["ok"] else "**NO**"))

        print("\n### The manual method (field report 002) on the same heap, same run\n")
        print("| step | s | counts equal the truth and ours |")
        print("|---|---|---|")
        print("| `memleak dump --kind heap,arena,anon -o DIR --force`, gdb on the core (whole gdb run; %.0f MiB, "
              "%d files) | %.2f | - |" % (dumped / 2**20, len(files), dump_s))
        print("| the same dump offline (`python -m gdb_memleak ... dump`) | %.2f | - |" % dump_off_s)
        print("| gdb `dump binary memory FILE START END` of the same %d ranges, on the core (whole gdb run) | %.2f | - |"
              % (len(files), gdump_s))
        for label, dt, counts in pipes:
            print("| `%s` %s | %.2f | %s |" % ((GREP % "FILES").replace("|", "\\|"), label, dt,
                                              "yes" if counts == truth and ours_n == sum(counts.values()) else
                                              "**NO** %r" % counts))
        p0 = pipes[0][1]
        print("\nRatios (manual ÷ ours; ours = median whole wall time of the command, and in brackets its "
              "in-command seconds; pipeline in locale %s, the field's default here):\n"
              % os.environ.get("LANG", "unset"))
        print("| ours | (a) pipeline alone (%.2f s) | (b) `memleak dump` in gdb + pipeline (%.2f s) | "
              "gdb `dump binary memory` + pipeline (%.2f s) |" % (p0, dump_s + p0, gdump_s + pipes[1][1]))
        print("|---|---|---|---|")
        for r in strings_runs[:2]:
            w, s = med(r["wall"]), med(r["seconds"])
            print("| %s, %.2f s wall (%.2f s) | %.1f× (%.1f×) | %.1f× (%.1f×) | %.1f× (%.1f×) |" % (
                r["label"], w, s, p0 / w, p0 / s, (dump_s + p0) / w, (dump_s + p0) / s,
                (gdump_s + pipes[1][1]) / w, (gdump_s + pipes[1][1]) / s))

        print("\n### `memleak snapshot FILE` of the same heap\n")
        print("| command | where | wall s | in-command s (the snapshot's \"seconds\") | peak RSS MiB | "
              "`--strings` histogram = truth |")
        print("|---|---|---|---|---|---|")
        for r in snap_runs:
            print("| `%s` | %s | %s | **%s** | %.0f | %s |" % (
                r["tag"], r["label"], spread(r["wall"]), spread(r["seconds"]), med(r["rss"]),
                "-" if r["ok"] is None else "yes" if r["ok"] else "**NO**"))
        h = snap_runs[0]["doc"].get("heap") or {}
        print("\nThe snapshot holds %d mappings, %s in-use chunks (%.0f MiB), %d classes, %d thread(s)." % (
            len(snap_runs[0]["doc"]["maps"]), "{:,}".format(h.get("in_use_chunks", 0)),
            h.get("in_use_bytes", 0) / 2**20, len(snap_runs[0]["doc"].get("census") or []),
            len(snap_runs[0]["doc"]["threads"])))

        # --- targets ----------------------------------------------------------------------------
        print("\n### Against the targets\n")
        missed = []
        for r in strings_runs[:2]:
            rate = med(r["rate"])
            met = rate >= RATE_TARGET
            print("- strings --heap --histogram ≥ 1 GB/s, %s: %s — %.2f GB/s median (%.2f–%.2f), %.0f MiB in "
                  "%.2f s in the command; whole wall %.2f s (%.2f GB/s by wall)." % (
                      r["label"], "met" if met else "**not met**", rate / 1e9, min(r["rate"]) / 1e9,
                      max(r["rate"]) / 1e9, r["doc"]["scanned_bytes"] / 2**20, med(r["seconds"]), med(r["wall"]),
                      r["doc"]["scanned_bytes"] / med(r["wall"]) / 1e9))
            if not met:
                missed.append("strings")
        r = strings_runs[2]
        print("- (live, no target) %.2f GB/s in the command, %.2f s wall." % (med(r["rate"]) / 1e9, med(r["wall"])))
        for r in snap_runs:
            ws, ss = med(r["wall"]), med(r["seconds"])
            print("- `%s` ≤ 2 s, %s: in the command %s (%.2f s), whole wall %s (%.2f s)." % (
                r["tag"], r["label"], "met" if ss <= SNAP_TARGET else "**not met**", ss,
                "met" if ws <= SNAP_TARGET else "**not met**", ws))
            if ss > SNAP_TARGET or ws > SNAP_TARGET:
                missed.append("snapshot")
        if not a.no_profile and missed:
            print()
            if "strings" in missed:
                print("\n".join(profile(work, ["--core", core, "--no-progress"] + shlex.split(cmd),
                                        "Offline `strings --heap --histogram`")) + "\n")
            if "snapshot" in missed:
                print("\n".join(profile(work, ["--core", core, "--no-progress", "snapshot", snap, "--strings", HIST],
                                        "Offline `snapshot FILE --strings`")) + "\n")
        print("Load average at the end: %s." % loadavg())
    finally:
        run.kill()
        if a.keep:
            print("work folder: %s" % work, file=sys.stderr)
        else:
            subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
