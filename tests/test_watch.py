"""`watch`: /proc sampling of a live process that is never stopped (tests/fixtures/grow.c grows one
256 MiB region from one named thread while two others idle, beside 1,000 small mappings)."""
from __future__ import annotations

import io
import json
import os
import re
import signal
import stat
import subprocess
import time

import pytest

from conftest import PY, ROOT, Running, build
from gdb_memleak.core import watch
from gdb_memleak.core.memory.modules import file_build_id
from gdb_memleak.core.textparse import parse_smaps as slow_parse_smaps

CODE = "import sys; from gdb_memleak.core.watch import main; sys.exit(main(sys.argv[1:]))"
WORKER_COMM = "grow (x) y"


def watch_argv(*args):
    return [PY, "-c", CODE, *[str(a) for a in args]]


def run_watch(*args, timeout=60, **kw):
    return subprocess.run(watch_argv(*args), capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kw)


@pytest.fixture(scope="module")
def grow_exe(workdir):
    return build(workdir, "grow.c", "grow")


@pytest.fixture
def grower(grow_exe):
    run = Running([grow_exe])          # runs until killed, 4 MiB per 100 ms from the worker
    yield run
    run.kill()


def one_line(text):
    """The one line of ``text`` apart from a warning about the watcher's own CPU use (which fires
    at the tests' short intervals on a busy machine)."""
    lines = [ln for ln in text.strip().splitlines() if not ln.startswith("warning: watch uses")]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def test_spots_growing_region_and_thread(grower, tmp_path):
    truth = grower.truth
    out, summ = tmp_path / "samples", tmp_path / "summary.json"
    r = run_watch("--pid", grower.pid, "--interval", 0.25, "--count", 8, "--out", out, "--json", summ)
    assert r.returncode == 0, r.stderr
    assert one_line(r.stderr).startswith("stopped after 8 samples (--count 8)")

    s = json.loads(summ.read_text())
    assert s["schema"] == "gdb_memleak.watch/1" and s["samples"] == 8 and s["ended"] == "count"
    assert s["mappings"] >= 1000
    top = s["growth"][0]
    assert top["start"] == truth["grow_start"] and top["kind"] == "anon" and not top["new"]
    assert top["rss_delta"] > 16 << 20 and top["mib_per_min"] > 100
    # the grower's rate is ~2400 MiB/min; nothing else grows at a tenth of it
    assert all(g["mib_per_min"] < top["mib_per_min"] / 10 for g in s["growth"][1:])
    th = s["threads"][0]
    assert th["tid"] == truth["worker_tid"] and th["comm"] == WORKER_COMM and th["minflt_per_s"] > 1000
    assert {t["comm"] for t in s["threads"]} >= {"grow", "idle1", "idle2", WORKER_COMM}
    t = s["totals"]
    assert t["rss_delta"] > 16 << 20 and t["anon_delta"] > 16 << 20 and t["rss_mib_per_min"] > 100
    assert "committed_as_delta" in t and t["committed_as"] > 0
    assert 0 < s["seconds"] < 10 and s["target"]["pid"] == grower.pid

    # within a few samples: from the 2nd line on, the live lines name the region and the thread
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("#")]
    assert len(lines) == 8
    for ln in lines[1:]:
        assert "top region %s anon" % truth["grow_start"] in ln, ln
        assert "top thread %d %s" % (truth["worker_tid"], json.dumps(WORKER_COMM)) in ln, ln
    assert "regions that grew" in r.stdout and "threads by minor-fault rate" in r.stdout

    # the samples: 0600 files in a 0700 folder, one JSON document each, schema keys exactly
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o700
    names = sorted(os.listdir(out))
    assert names == ["sample-%04d.json" % i for i in range(1, 9)]
    exe = os.path.realpath(grower.proc.args[0])
    prev = None
    for n in names:
        p = out / n
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
        d = json.loads(p.read_text())
        assert d["schema"] == "gdb_memleak.sample/1"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", d["time"])
        assert prev is None or d["monotonic"] > prev
        prev = d["monotonic"]
        assert d["target"] == {"kind": "live", "pid": grower.pid, "exe": exe, "build_id": file_build_id(exe)}
        assert d["target"]["build_id"]
        assert len(d["maps"]) >= 1000
        for m in d["maps"]:
            assert {"start", "end", "size", "perms", "kind", "path", "rss", "private_dirty", "swap"} <= set(m)
            assert int(m["end"], 16) - int(m["start"], 16) == m["size"]
        g = [m for m in d["maps"] if m["start"] == truth["grow_start"]]
        assert len(g) == 1 and g[0]["end"] == truth["grow_end"] and g[0]["kind"] == "anon"
        assert g[0]["perms"] == "rw-p" and g[0]["path"] is None
        assert any(m["kind"] == "file" and m["path"] == exe for m in d["maps"])
        assert sum(m["perms"] == "r--p" and m["kind"] == "anon" for m in d["maps"]) >= 500
        st = d["status"]
        assert st["VmRSS"] > 0 and st["RssAnon"] > 0 and "RssFile" in st and "VmSwap" in st and st["Threads"] == 4
        assert {t["comm"] for t in d["threads"]} == {"grow", "idle1", "idle2", WORKER_COMM}
        for t in d["threads"]:
            assert set(t) == {"tid", "comm", "minflt", "majflt", "utime", "stime"}
        assert d["meminfo"]["Committed_AS"] > 0 and d["meminfo"]["MemAvailable"] > 0
    first = json.loads((out / names[0]).read_text())
    last = json.loads((out / names[-1]).read_text())
    rss = lambda d: [m["rss"] for m in d["maps"] if m["start"] == truth["grow_start"]][0]
    assert rss(last) - rss(first) == top["rss_delta"]


def test_ends_when_process_exits(grow_exe, tmp_path):
    run = Running([grow_exe, "2"])      # exits after 2 s (a zombie until we reap it)
    try:
        summ = tmp_path / "s.json"
        t = time.monotonic()
        r = run_watch("--pid", run.pid, "--interval", 0.3, "--json", summ, timeout=30)
        took = time.monotonic() - t
    finally:
        run.kill()
    assert r.returncode == 0, r.stderr
    line = one_line(r.stderr)
    m = re.match(r"process %d exited after (\d+) samples" % run.pid, line)
    assert m, line
    s = json.loads(summ.read_text())
    assert s["ended"] == "process exited" and s["samples"] == int(m.group(1)) >= 3
    assert took < 8
    assert s["growth"][0]["start"] == run.truth["grow_start"]


def test_ends_when_process_exits_without_pidfd(grow_exe, monkeypatch):
    """Python 3.8 or a kernel before 5.3: no pidfd; the zombie is seen in /proc/PID/status."""
    monkeypatch.delattr(os, "pidfd_open", raising=False)
    run = Running([grow_exe, "1", "4096", "10"])
    try:
        out, err = io.StringIO(), io.StringIO()
        rc = watch.main(["--pid", str(run.pid), "--interval", "0.2"], out=out, err=err)
    finally:
        run.kill()
    assert rc == 0, err.getvalue()
    assert re.match(r"process %d exited after \d+ samples" % run.pid, one_line(err.getvalue()))


def test_sigint_writes_summary(grower, tmp_path):
    out, summ = tmp_path / "samples", tmp_path / "s.json"
    p = subprocess.Popen(watch_argv("--pid", grower.pid, "--interval", 0.2, "--out", out, "--json", summ),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (out / "sample-0003.json").exists():
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, stderr
    m = re.match(r"interrupted after (\d+) samples", one_line(stderr))
    assert m, stderr
    n = int(m.group(1))
    s = json.loads(summ.read_text())
    assert s["ended"] == "interrupted" and s["samples"] == n >= 3
    assert len([x for x in os.listdir(out) if x.startswith("sample-")]) == n   # no half-written sample
    assert s["growth"][0]["start"] == grower.truth["grow_start"]
    assert "regions that grew" in stdout


def _absent_pid():
    with open("/proc/sys/kernel/pid_max") as fh:
        return int(fh.read()) + 1


@pytest.mark.parametrize("args,rc,words", [
    (["--pid", "ABSENT"], 1, "no process with pid"),
    (["--pid", "SELF", "--interval", "abc"], 2, "--interval"),
    (["--pid", "SELF", "--interval", "0"], 2, "--interval"),
    (["--pid", "SELF", "--interval", "-1"], 2, "--interval"),
    (["--pid", "SELF", "--interval", "nan"], 2, "--interval"),
    (["--pid", "SELF", "--count", "0"], 2, "--count"),
    (["--pid", "x"], 2, "--pid"),
    (["--interval", "1"], 2, "--pid"),
])
def test_errors_are_one_line(args, rc, words, tmp_path):
    args = [str(_absent_pid()) if a == "ABSENT" else str(os.getpid()) if a == "SELF" else a for a in args]
    r = run_watch(*args, "--json", tmp_path / "s.json", timeout=20)
    assert r.returncode == rc, r.stderr
    line = one_line(r.stderr)
    assert line.startswith("error:") and words in line, line
    assert not (tmp_path / "s.json").exists()


def test_thread_id_is_refused(grower):
    r = run_watch("--pid", grower.truth["worker_tid"], "--count", 1)
    assert r.returncode == 2
    assert one_line(r.stderr) == "error: %d is a thread of process %d: give --pid %d" % (
        grower.truth["worker_tid"], grower.pid, grower.pid)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the watcher as another user")
def test_permission_denied_is_one_line(grower):
    def as_nobody():
        os.setgid(65534)
        os.setgroups([])
        os.setuid(65534)
    r = subprocess.run(watch_argv("--pid", grower.pid, "--count", 1), capture_output=True, text=True,
                       cwd="/", timeout=20, preexec_fn=as_nobody, env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 1, r.stderr
    line = one_line(r.stderr)
    assert "permission denied" in line and "/proc/%d/" % grower.pid in line, line


def test_out_folder_rules(grower, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    r = run_watch("--pid", grower.pid, "--count", 1, "--out", link / "sub")
    assert r.returncode == 1 and "symbolic link" in one_line(r.stderr)
    assert not (real / "sub").exists()
    r = run_watch("--pid", grower.pid, "--count", 2, "--interval", 0.1, "--out", real)
    assert r.returncode == 0, r.stderr
    r = run_watch("--pid", grower.pid, "--count", 1, "--out", real)
    assert r.returncode == 2 and "already holds samples" in one_line(r.stderr)
    r = run_watch("--pid", grower.pid, "--count", 1, "--out", real, "--force")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(real)) == ["sample-0001.json"]


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_tty_redraws_in_place(grower):
    out, err = _Tty(), io.StringIO()
    rc = watch.main(["--pid", str(grower.pid), "--interval", "0.1", "--count", "3"], out=out, err=err)
    assert rc == 0, err.getvalue()
    text = out.getvalue()
    assert len(re.findall(r"\x1b\[\d+F\x1b\[J", text)) == 2 == text.count("\x1b[J")   # frames 2 and 3
    assert text.count("regions that grew") == 3
    assert one_line(err.getvalue()).startswith("stopped after 3 samples")


def test_parsers_agree_with_textparse(grower):
    with open("/proc/%d/smaps" % grower.pid, "rb") as fh:
        data = fh.read()
    fast = watch.parse_smaps(data)
    slow = slow_parse_smaps(data.decode())
    assert len(fast) == len(slow) >= 1000
    for f, s in zip(fast, slow):
        assert (f[0], f[1], f[2], f[3], f[4], f[5]) == (s.start, s.end, s.perms, s.path, s.rss, s.private_dirty)


def test_task_stat_comm_with_spaces_and_parens():
    line = (b"4242 (a) (b c)) S 1 4242 4242 0 -1 4194368 777 0 3 0 120 45 0 0 20 0 4 0 363169 300253184 "
            b"7511 18446744073709551615 1 2 3 0 0 0 0 6 0 1 0 0 -1 1 0 0 0 0 0\n")
    assert watch.parse_task_stat(line) == ("a) (b c)", "S", 777, 3, 120, 45, 363169)
    assert watch.parse_task_stat(b"garbage") is None


def test_classify_is_modest():
    A = 64 << 20
    assert watch.classify(0x1000, 0x2000, "rw-p", "[heap]", A) == ("main-heap", None)
    assert watch.classify(0x1000, 0x2000, "rw-p", "[stack]", A) == ("stack", None)
    assert watch.classify(0x1000, 0x2000, "rw-p", "[stack:77]", A) == ("thread-stack", "tid 77")
    assert watch.classify(0x1000, 0x2000, "r-xp", "/usr/lib/libc.so.6", A) == ("file", None)
    assert watch.classify(0x1000, 0x2000, "rw-s", "/dev/shm/x", A) == ("shm", None)
    assert watch.classify(0x1000, 0x2000, "rw-s", None, A) == ("shm", None)
    assert watch.classify(A * 3, A * 3 + (1 << 20), "rw-p", None, A) == ("anon", "arena?")
    assert watch.classify(A * 3 + 4096, A * 4, "rw-p", None, A) == ("anon", None)
    assert watch.classify(A * 3, A * 3 + 4096, "---p", None, A)[0] == "anon"
    assert watch.classify(0x1000, 0x2000, "rw-p", "[anon:cache]", A) == ("anon", None)
    assert watch.classify(0x1000, 0x2000, "r--p", "[vvar]", A) == ("vvar", None)


def test_matching_new_gone_and_extended_down():
    """Regions matched by start and kind; by end when the kernel extended one downwards; a new one
    counts from 0 at the sample before it appeared."""
    class W:
        arena_align = 64 << 20
        pid, exe, build_id = 1, "/x", None

    class A:
        interval, out, top = 1.0, None, 10

    s = watch.Session(W(), A())
    M = 1 << 20
    st = {"VmRSS": 10 * M, "RssAnon": 5 * M}
    mi = {"Committed_AS": 100 * M, "MemAvailable": 1000 * M}
    s.update(0.0, [(0x10000000, 0x20000000, "rw-p", None, 1 * M, 1 * M, 0),
                   (0x30000000, 0x30100000, "rw-p", "[heap]", 2 * M, 2 * M, 0),
                   (0x40000000, 0x40100000, "rw-p", None, 1 * M, 0, 0)], st, {}, mi)
    s.update(60.0, [(0x0f000000, 0x20000000, "rw-p", None, 5 * M, 5 * M, 0),      # extended down: +4
                    (0x30000000, 0x30200000, "rw-p", "[heap]", 3 * M, 3 * M, 0),  # +1
                    (0x50000000, 0x50100000, "rw-p", None, 2 * M, 2 * M, 0)],     # new: +2; 0x4… gone
             dict(st, VmRSS=20 * M), {}, dict(mi, Committed_AS=160 * M))
    g = s.growing()
    assert [(r.start, r.rss - r.rss0, r.new) for r in g] == [
        (0x0f000000, 4 * M, False), (0x50000000, 2 * M, True), (0x30000000, 1 * M, False)]
    assert g[0].rate() * 60 == 4 * M and g[1].rate() * 60 == 2 * M
    summ = s.summary("count", 60.0, 0.1)
    assert summ["gone"] == [{"start": "0x40000000", "end": "0x40100000", "kind": "anon", "path": None,
                             "rss_last_seen": 1 * M}]
    assert summ["totals"]["rss_delta"] == 10 * M and summ["totals"]["rss_mib_per_min"] == 10.0
    assert summ["totals"]["committed_as_mib_per_min"] == 60.0
