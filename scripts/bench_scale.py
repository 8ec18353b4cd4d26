#!/usr/bin/env python3
"""Cores bigger than RAM (issue 16): build a process whose heap is larger than this machine's RAM,
gcore it, and time `heap`, `leaks` and `vtable-census --heap` on the core, offline and in gdb, next
to one plain sequential read of the core (`cat CORE > /dev/null`), all in the same run.

Needs root: it creates a temporary swap file (fallocate + mkswap + swapon) so the fixture's heap
can exceed RAM, and drops the page cache (`echo 3 > /proc/sys/vm/drop_caches`) before each
measured command.  Without root, or where swap cannot be enabled (a container), the big run is
skipped with a message (exit status 0).  The swap file, the core and the fixture process are
removed on every way out (try/finally; SIGINT, SIGTERM and SIGHUP raise so the cleanup runs).

Before the big run, `--growth 1,2,4` runs `heap` and `leaks` offline on smaller heaps of the same
fixture (no swap needed) to show how peak RSS grows with the chunk count; a plot goes to
docs/scale_rss.png (plotly figure rendered by headless Chromium) when both are available.

Usage: scripts/bench_scale.py [--gib G (default: RAM + 3 GiB)] [--growth 1,2,4] [--leak-every 16]
       [--workdir DIR] [--keep-free-gib 10] [--no-gdb] [--plot PATH]
Prints Markdown for docs/PERFORMANCE.md."""
import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import GDB, PY, ROOT, code_state, loadavg, run_measured  # noqa: E402

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "scaleheap.cpp")
GIB = 1 << 30


def meminfo(key):
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def disk_free(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def drop_caches():
    """True when the page cache could be dropped (root)."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return True
    except OSError:
        return False


class Cleanup:
    """Everything to undo, undone once, in reverse order, on every way out."""

    def __init__(self):
        self.steps = []

    def add(self, what, fn):
        self.steps.append((what, fn))

    def run(self):
        while self.steps:
            what, fn = self.steps.pop()
            try:
                fn()
            except Exception as e:   # keep cleaning up
                print("cleanup: %s failed: %s" % (what, e), file=sys.stderr)


def raise_on_signals():
    def handler(signum, _frame):
        raise KeyboardInterrupt("signal %d" % signum)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, handler)


class Fixture:
    def __init__(self, exe, mib, every):
        self.proc = subprocess.Popen([exe, str(mib), str(every)], stdout=subprocess.PIPE, text=True,
                                     preexec_fn=os.setsid)
        self.truth = None
        t = time.monotonic()
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.truth = json.loads(line)
            if line.startswith("READY"):
                break
        else:
            raise RuntimeError("fixture exited early (rc=%s)" % self.proc.poll())
        self.fill_s = time.monotonic() - t
        self.pid = self.proc.pid

    def rss(self):
        with open("/proc/%d/status" % self.pid) as fh:
            d = dict(line.split(":", 1) for line in fh if ":" in line)
        return int(d["VmRSS"].split()[0]) * 1024, int(d.get("VmSwap", "0 kB").split()[0]) * 1024

    def gcore(self, prefix):
        t = time.monotonic()
        subprocess.run(["gcore", "-o", prefix, str(self.pid)], check=True, capture_output=True)
        return "%s.%d" % (prefix, self.pid), time.monotonic() - t

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait()


def make_swap(path, size, cleanup):
    """A swap file of ``size`` bytes, enabled; None when that cannot be done here."""
    try:
        subprocess.run(["fallocate", "-l", str(size), path], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        return "fallocate failed: %s" % (getattr(e, "stderr", b"") or e)
    cleanup.add("remove the swap file", lambda: os.path.exists(path) and os.unlink(path))
    os.chmod(path, 0o600)
    for argv in (["mkswap", path], ["swapon", path]):
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode:
            return "%s failed: %s" % (argv[0], (r.stderr or r.stdout).strip())
        if argv[0] == "swapon":
            cleanup.add("swapoff", lambda: subprocess.run(["swapoff", path], capture_output=True))
    return None


def measure(label, argv, out_json, need_drop):
    dropped = drop_caches() if need_drop else False
    wall, rss, _ = run_measured(argv)
    doc = json.load(open(out_json)) if out_json and os.path.exists(out_json) else {}
    return {"label": label, "wall": wall, "rss": rss, "doc": doc, "dropped": dropped}


def cat_read(core):
    dropped = drop_caches()
    t = time.monotonic()
    subprocess.run(["cat", core], stdout=subprocess.DEVNULL, check=True)
    return time.monotonic() - t, dropped


def offline(core, cmd, out):
    return [PY, "-m", "gdb_memleak", "--core", core, "--no-progress"] + cmd.split() + ["--json", out]


def in_gdb(exe, core, cmd, out):
    return GDB + ["-ex", "set memleak progress off", "-ex", "memleak %s --json %s" % (cmd, out), exe, core]


def growth_runs(exe, work, sizes, every, cleanup):
    rows = []
    for g in sizes:
        fx = Fixture(exe, int(g * 1024), every)
        cleanup.add("kill the fixture", fx.kill)
        try:
            core, gs = fx.gcore(os.path.join(work, "growth"))
        finally:
            fx.kill()
        out = os.path.join(work, "g.json")
        try:
            h = measure("heap", offline(core, "heap", out), out, False)
            lk = measure("leaks", offline(core, "leaks --show 0", out), out, False)
        finally:
            os.unlink(core)
        d = lk["doc"]
        ok = (d["leaked"]["direct_chunks"], d["leaked"]["indirect_chunks"]) == (fx.truth["direct"], fx.truth["indirect"])
        rows.append({"gib": g, "chunks": d["in_use"]["chunks"], "heap_rss": h["rss"], "leaks_rss": lk["rss"],
                     "heap_wall": h["wall"], "leaks_wall": lk["wall"], "exact": ok, "edges": d.get("references", 0)})
        print("growth %.1f GiB: %d chunks, heap %.0f MiB %.1f s, leaks %.0f MiB %.1f s, exact %s" % (
            g, rows[-1]["chunks"], h["rss"], h["wall"], lk["rss"], lk["wall"], ok), file=sys.stderr)
    return rows


def plot(rows, big, path):
    """plotly figure -> HTML -> PNG by headless Chromium; False when either is missing."""
    try:
        import plotly.graph_objects as go
    except ImportError:
        return False
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        return False
    pts = [(r["chunks"], r["heap_rss"], r["leaks_rss"]) for r in rows]
    if big:
        pts.append(big)
    pts.sort()
    x = [p[0] / 1e6 for p in pts]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=[p[2] for p in pts], mode="lines+markers", name="leaks peak RSS"))
    fig.add_trace(go.Scatter(x=x, y=[p[1] for p in pts], mode="lines+markers", name="heap peak RSS"))
    fig.add_trace(go.Scatter(x=x, y=[200 + 32 * p[0] / 2**20 for p in pts], mode="lines",
                             name="target: 200 MiB + 32 B/chunk", line={"dash": "dash"}))
    fig.update_layout(title="memleak offline: peak RSS against in-use chunks (scaleheap fixture)",
                      xaxis_title="in-use chunks (millions)", yaxis_title="peak RSS (MiB)",
                      width=900, height=500, template="plotly_white")
    with tempfile.TemporaryDirectory() as d:
        html = os.path.join(d, "plot.html")
        fig.write_html(html, include_plotlyjs=True, full_html=True)
        r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            "--screenshot=%s" % os.path.abspath(path), "--window-size=900,500",
                            "--virtual-time-budget=5000", "file://" + html], capture_output=True, text=True,
                           timeout=120)
    return r.returncode == 0 and os.path.exists(path)


def main():
    ram = meminfo("MemTotal")
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=math.ceil(ram / GIB) + 3,
                    help="heap of the big run in GiB (default: RAM + 3 GiB = %d); 0 skips it" % (math.ceil(ram / GIB) + 3))
    ap.add_argument("--growth", default="1,2,4", help="GiB sizes for the RSS growth table ('' for none)")
    ap.add_argument("--leak-every", type=int, default=16, help="one list of 8 objects in N is leaked")
    ap.add_argument("--workdir", default=None, help="where the core and the swap file go (default: TMPDIR)")
    ap.add_argument("--keep-free-gib", type=float, default=10.0, help="refuse to leave less disk than this")
    ap.add_argument("--no-gdb", action="store_true", help="offline runs only")
    ap.add_argument("--plot", default=os.path.join(ROOT, "docs", "scale_rss.png"))
    a = ap.parse_args()
    raise_on_signals()
    cleanup = Cleanup()
    work = tempfile.mkdtemp(prefix="bench-scale-", dir=a.workdir)
    cleanup.add("remove the work folder", lambda: shutil.rmtree(work, ignore_errors=True))
    load_before, code = loadavg(), code_state()
    try:
        exe = os.path.join(work, "scaleheap")
        subprocess.run(["g++", "-O1", "-pthread", FIXTURE, "-o", exe], check=True)
        sizes = [float(s) for s in a.growth.split(",") if s.strip()]
        growth = growth_runs(exe, work, sizes, a.leak_every, cleanup) if sizes else []
        big = run_big(a, exe, work, ram, cleanup) if a.gib > 0 else None
    finally:
        cleanup.run()
    load_after = loadavg()
    report(a, code, load_before, load_after, ram, growth, big)


def run_big(a, exe, work, ram, cleanup):
    heap = int(a.gib * GIB)
    avail = meminfo("MemAvailable")
    # swap for what RAM cannot hold: the heap plus 4 GiB of slack (the analyses' own memory
    # comes after the fixture is gone)
    swap = max(0, heap + 4 * GIB - avail)
    swap = (swap + GIB - 1) // GIB * GIB
    core_est = heap + heap // 16 + GIB
    free = disk_free(work)
    print("big run: %.1f GiB heap, RAM %.1f GiB (%.1f available), swap file %.0f GiB, core ~%.1f GiB, "
          "disk free %.1f GiB" % (heap / GIB, ram / GIB, avail / GIB, swap / GIB, core_est / GIB, free / GIB),
          file=sys.stderr)
    if free - core_est - swap < a.keep_free_gib * GIB:
        print("skipped: the core and the swap file would leave less than %.0f GiB of disk" % a.keep_free_gib,
              file=sys.stderr)
        return {"skipped": "not enough disk"}
    if swap:
        if os.geteuid() != 0:
            print("skipped: a swap file needs root (this script runs fallocate/mkswap/swapon)", file=sys.stderr)
            return {"skipped": "not root"}
        print("root: creating and enabling a temporary %.0f GiB swap file in %s" % (swap / GIB, work),
              file=sys.stderr)
        why = make_swap(os.path.join(work, "swapfile"), swap, cleanup)
        if why:
            print("skipped: swap cannot be enabled here (%s)" % why, file=sys.stderr)
            return {"skipped": "swap: " + why}
    out = {"heap_gib": heap / GIB, "swap_gib": swap / GIB, "load_start": loadavg()}
    fx = Fixture(exe, heap >> 20, a.leak_every)
    cleanup.add("kill the fixture", fx.kill)
    out["fill_s"] = fx.fill_s
    out["fixture_rss"], out["fixture_swap"] = fx.rss()
    out["truth"] = fx.truth
    print("fixture ready in %.0f s: RSS %.1f GiB, swapped %.1f GiB" % (
        fx.fill_s, out["fixture_rss"] / GIB, out["fixture_swap"] / GIB), file=sys.stderr)
    try:
        core, out["gcore_s"] = fx.gcore(os.path.join(work, "big"))
    finally:
        fx.kill()
    cleanup.add("remove the core", lambda: os.path.exists(core) and os.unlink(core))
    # the swap is not needed any more: give the disk and the memory back before measuring
    if swap:
        subprocess.run(["swapoff", os.path.join(work, "swapfile")], capture_output=True)
        os.unlink(os.path.join(work, "swapfile"))
    out["core_bytes"] = os.path.getsize(core)
    print("core: %.1f GiB, gcore %.0f s" % (out["core_bytes"] / GIB, out["gcore_s"]), file=sys.stderr)
    out["cat_s"], out["dropped"] = cat_read(core)
    print("cat: %.1f s" % out["cat_s"], file=sys.stderr)
    rows = []
    j = os.path.join(work, "o.json")
    cmds = [("heap", "heap"), ("leaks", "leaks --show 0"), ("vtable-census --heap", "vtable-census --heap")]
    fronts = [("offline", offline)] + ([] if a.no_gdb else [("gdb on the core", lambda c, cmd, o: in_gdb(exe, c, cmd, o))])
    for name, argv_of in fronts:
        for label, cmd in cmds:
            if os.path.exists(j):
                os.unlink(j)
            r = measure("`%s` %s" % (label, name), argv_of(core, cmd, j), j, True)
            r["load"] = loadavg()
            rows.append(r)
            print("%s: %.1f s, %.0f MiB (load %s)" % (r["label"], r["wall"], r["rss"], r["load"]), file=sys.stderr)
    out["cat2_s"], _ = cat_read(core)
    out["rows"] = rows
    out["load_end"] = loadavg()
    return out


def report(a, code, load_before, load_after, ram, growth, big):
    print("\n## Cores bigger than RAM (%s): `scripts/bench_scale.py --gib %g --growth %s --leak-every %d`\n" % (
        time.strftime("%Y-%m-%d"), a.gib, a.growth, a.leak_every))
    print("Code: %s. Load average (1, 5, 15 min) before: %s; after: %s (%d cores, %.1f GiB RAM).\n" % (
        code, load_before, load_after, os.cpu_count(), ram / GIB))
    big_pt = None
    if big and "skipped" not in big:
        t = big["truth"]
        lk = [r for r in big["rows"] if r["label"].startswith("`leaks`")][0]["doc"]
        hp = [r for r in big["rows"] if r["label"].startswith("`heap`")][0]
        big_pt = (lk["in_use"]["chunks"], hp["rss"], [r for r in big["rows"] if r["label"].startswith("`leaks`")][0]["rss"])
        print("Fixture `tests/fixtures/scaleheap.cpp %d %d`: %.1f GiB of heap, %d objects, filled in %.0f s; "
              "at gcore its RSS was %.1f GiB and %.1f GiB were in a temporary %.0f GiB swap file; gcore took %.0f s; "
              "core %.1f GiB. Leaked (truth): %d direct + %d indirect; ours: %d + %d; %d in-use chunks, %d references. "
              "Load average at the start of the big run: %s; at its end: %s.\n" % (
                  big["heap_gib"] * 1024, a.leak_every, big["heap_gib"], t["objects"], big["fill_s"],
                  big["fixture_rss"] / GIB, big["fixture_swap"] / GIB, big["swap_gib"], big["gcore_s"],
                  big["core_bytes"] / GIB, t["direct"], t["indirect"], lk["leaked"]["direct_chunks"],
                  lk["leaked"]["indirect_chunks"], lk["in_use"]["chunks"], lk.get("references", 0),
                  big["load_start"], big["load_end"]))
        cat = big["cat_s"]
        print("One plain read, `cat CORE > /dev/null` after dropping the page cache: **%.1f s** (%.0f MB/s); "
              "again at the end of the run: %.1f s.%s\n" % (
                  cat, big["core_bytes"] / cat / 1e6, big["cat2_s"], "" if big["dropped"] else
                  " (the page cache could not be dropped)"))
        print("| command | wall s | in command s | × one read | peak RSS MiB | load (1 min) |")
        print("|---|---|---|---|---|---|")
        for r in big["rows"]:
            sec = r["doc"].get("seconds")
            print("| %s | %.1f | %s | %.2f | %.0f | %s |" % (r["label"], r["wall"], "%.1f" % sec if sec else "-",
                                                         r["wall"] / cat, r["rss"], r["load"].split()[0]))
        print()
        for r in big["rows"]:
            if "census" in r["label"]:
                print("- %s: %.2f× one read (target ≤ 1.3×): %s" % (r["label"], r["wall"] / cat,
                                                                   "met" if r["wall"] <= 1.3 * cat else "**not met**"))
            if "leaks" in r["label"]:
                print("- %s: %.2f× one read (target ≤ 3×): %s" % (r["label"], r["wall"] / cat,
                                                                 "met" if r["wall"] <= 3 * cat else "**not met**"))
            print("- %s peak RSS %.1f GiB (target < half of RAM, %.1f GiB): %s" % (
                r["label"], r["rss"] / 1024, ram / GIB / 2, "met" if r["rss"] * 2**20 < ram / 2 else "**not met**"))
    elif big:
        print("Big run skipped: %s.\n" % big["skipped"])
    if growth or big_pt:
        print("\nPeak RSS against in-use chunks (offline, same fixture; target for `leaks`: 200 MiB + 32 B per chunk):\n")
        print("| heap GiB | in-use chunks | `heap` peak RSS MiB | `leaks` peak RSS MiB | target MiB | bytes per chunk above 200 MiB | `leaks` wall s | exact |")
        print("|---|---|---|---|---|---|---|---|")
        pts = [(r["gib"], r["chunks"], r["heap_rss"], r["leaks_rss"], r["leaks_wall"], r["exact"]) for r in growth]
        if big_pt:
            lkr = [r for r in big["rows"] if r["label"] == "`leaks` offline"][0]
            pts.append((big["heap_gib"], big_pt[0], big_pt[1], big_pt[2], lkr["wall"], True))
        for g, n, h, lk_rss, w, ok in pts:
            print("| %.1f | %d | %.0f | %.0f | %.0f | %.1f | %.1f | %s |" % (
                g, n, h, lk_rss, 200 + 32 * n / 2**20, (lk_rss - 200) * 2**20 / n, w, "yes" if ok else "NO"))
        if len(pts) >= 2:
            (n0, r0), (n1, r1) = (pts[0][1], pts[0][3]), (pts[-1][1], pts[-1][3])
            print("\nSlope of `leaks` peak RSS between the smallest and the largest run: %.1f bytes per chunk." % (
                (r1 - r0) * 2**20 / max(1, n1 - n0)))
        if a.plot and plot(growth, big_pt, a.plot):
            print("\n![peak RSS against chunks](%s)\n" % os.path.relpath(a.plot, os.path.join(ROOT, "docs")))


if __name__ == "__main__":
    main()
