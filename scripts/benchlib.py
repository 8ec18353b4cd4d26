"""Shared helpers of the scripts/bench_*.py benchmarks: timing child commands and their peak RSS,
building and snapshotting the big-heap fixture."""
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from conftest import FIXTURES, GDBINIT, Running  # noqa: E402,F401

PY = sys.executable
GDB = ["gdb", "-nx", "-batch", "-ex", "source " + GDBINIT]


def timed(argv, **kw):
    """Run argv; return (seconds, CompletedProcess); exit with its stderr when it fails."""
    t = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    dt = time.monotonic() - t
    if r.returncode:
        sys.exit("failed: %s\n%s" % (" ".join(argv), r.stderr[-2000:]))
    return dt, r


def rss_of(argv):
    """Peak RSS (MiB) of one command alone, measured with a fresh wrapper process."""
    code = ("import resource,subprocess,sys; subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
            "stderr=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([PY, "-c", code] + argv, capture_output=True, text=True).stdout.strip()
    return int(out) / 1024.0


def big_heap(work, mib, leak_every=0, arena=False, payload=False):
    """Build tests/fixtures/bigheap.cpp, run it to READY and gcore it: (exe, Running, core, gcore s).
    With ``arena`` half the heap is in one thread arena several heaps long (~1.6 M chunks/GiB).
    With ``payload`` every 8th Msg holds "channelid=N;" (~250 k per GiB); Running.truth["payload"]
    is then {value: copies}."""
    exe = os.path.join(work, "bigheap")
    subprocess.run(["g++", "-O1", "-pthread", os.path.join(FIXTURES, "bigheap.cpp"), "-o", exe], check=True)
    run = Running([exe, str(mib), str(leak_every)] + (["arena"] if arena else []) + (["payload"] if payload else []))
    t = time.monotonic()
    core = run.gcore(os.path.join(work, "big.core"))
    return exe, run, core, time.monotonic() - t


def run_measured(argv, stdin_text=""):
    """Run argv once, alone in a fresh wrapper process, feeding it ``stdin_text``: (wall s, peak RSS
    MiB, stdout).  The RSS is the wrapper's RUSAGE_CHILDREN maximum, i.e. that child's own peak."""
    code = ("import json,resource,subprocess,sys,time; t=time.monotonic(); "
            "r=subprocess.run(sys.argv[1:], input=sys.stdin.read(), capture_output=True, text=True); "
            "dt=time.monotonic()-t; print(json.dumps({'wall': dt, 'rc': r.returncode, 'out': r.stdout, "
            "'err': r.stderr[-2000:], 'maxrss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
    r = subprocess.run([PY, "-c", code] + argv, input=stdin_text, capture_output=True, text=True)
    doc = json.loads(r.stdout)
    if doc["rc"]:
        sys.exit("failed: %s\n%s" % (" ".join(argv), doc["err"]))
    return doc["wall"], doc["maxrss"] / 1024.0, doc["out"]


def loadavg():
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


def code_state():
    """The commit measured, plus the package files then modified in the work tree (others may be
    editing them while a benchmark runs)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "gdb_memleak"], cwd=ROOT, capture_output=True,
                           text=True).stdout.split("\n")
    dirty = [ln[3:] for ln in dirty if ln.strip()]
    return head + (" + uncommitted changes in " + ", ".join(dirty) if dirty else "")
