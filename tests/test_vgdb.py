"""memleak vgdb: parsers over captured valgrind output, then the real valgrind + vgdb in gdb
(leak-check, blocks, who-points-at, watch over breakpoint hits) and offline (--vgdb-pid, --types)."""
import contextlib
import os
import re
import shutil
import subprocess
import time

import pytest

from conftest import ROOT, Running, build, load_json, run_cli, run_gdb
from gdb_memleak.core.vgdb import parse_block_list, parse_leak_check, parse_who_points_at, timeline

DATA = os.path.join(ROOT, "tests", "data", "vgdb")


def _text(name):
    with open(os.path.join(DATA, name)) as fh:
        return fh.read()


def _raw_summary(text):
    """valgrind's own summary numbers, read independently of the parser."""
    out = {}
    for kind in ("definitely lost", "indirectly lost", "possibly lost", "still reachable", "suppressed"):
        m = re.search(r"%s: ([\d,]+) (?:\([+-][\d,]+\) )?bytes in ([\d,]+)" % kind, text)
        out[kind.replace(" ", "_")] = (int(m.group(1).replace(",", "")), int(m.group(2).replace(",", "")))
    return out


def test_parse_leak_check_full():
    text = _text("lc_all.txt")
    res = parse_leak_check(text)
    assert [r["record"] for r in res["records"]] == list(range(1, 9)) and not res["limited"]
    raw = _raw_summary(text)
    for k, (b, n) in raw.items():
        assert (res["summary"][k]["bytes"], res["summary"][k]["blocks"]) == (b, n)
    assert sum(r["blocks"] for r in res["records"] if r["kind"] == "definite") == raw["definitely_lost"][1]
    chain = [r for r in res["records"] if r["direct_bytes"] is not None][0]
    assert (chain["bytes"], chain["direct_bytes"], chain["indirect_bytes"]) == (96, 32, 64)
    assert chain["stack"][1] == {"pc": "0x109215", "function": "leak_chain", "location": "vgleak.c:21"}
    assert res["records"][5]["bytes"] == 3000          # thousands separator


def test_parse_leak_check_deltas_32bit_suppressed_limited_none():
    res = parse_leak_check(_text("lc_delta32.txt"))
    r3, r4 = res["records"]
    assert (r3["bytes"], r3["bytes_delta"], r3["blocks"], r3["blocks_delta"]) == (1600, 400, 100, 25)
    assert (r4["bytes"], r4["bytes_delta"], r4["direct_bytes"], r4["indirect_bytes"]) == (12288, 4096, 4096, 8192)
    assert r3["stack"][1]["function"] == "Session::open(int)" and r3["stack"][1]["pc"] == "0x80485f2"
    assert r4["stack"][1]["function"].startswith("std::vector<int, std::allocator<int> >::push_back")
    s = res["summary"]
    assert s["still_reachable"] == {"bytes": 1234567, "bytes_delta": -100, "blocks": 3, "blocks_delta": -1}
    assert s["suppressed"]["bytes"] == 72704
    assert res["limited"] is True                 # records 1-2 were not printed
    lim = parse_leak_check(_text("lc_lim.txt"))
    assert lim["limited"] and lim["total_records"] == 8 and len(lim["records"]) == 2
    none = parse_leak_check(_text("lc_none.txt"))
    assert none["records"] == [] and none["no_leaks"] and none["summary"]["definitely_lost"]["blocks"] == 0
    inc = parse_leak_check(_text("lc_inc.txt"))
    assert inc["summary"]["definitely_lost"] == {"bytes": 128, "bytes_delta": 0, "blocks": 7, "blocks_delta": 0}


def test_parse_block_list_and_who_points_at():
    res = parse_block_list(_text("bl36.txt"))
    assert [r["record"] for r in res["records"]] == [3, 4, 5, 6]
    chain = res["records"][2]["block_list"]
    assert [(b["address"], b["depth"], b["indirect_of_record"]) for b in chain] == [
        ("0x4a549f0", 0, None), ("0x4a54a50", 1, 1), ("0x4a54ab0", 2, 2)]
    assert len(res["records"][3]["block_list"]) == 30 and res["records"][3]["block_list"][0]["size"] == 100
    w = parse_who_points_at(_text("wpa2.txt"))
    assert w["target"] == "0x4a54b10" and w["length"] == 100
    (ref,) = w["referrers"]
    assert ref["where"] == "block" and ref["block_size"] == 80000 and ref["stack"][1]["function"] == "main"
    (ref,) = parse_who_points_at(_text("wpa3.txt"))["referrers"]
    assert ref["where"] == "data" and ref["symbol"] == "reachable" and ref["address"] == "0x10c060"


def test_timeline_growth():
    def chk(recs):
        return {"records": [{"kind": k, "bytes": b, "blocks": 1, "bytes_delta": d, "stack": [
            {"function": f, "location": "x.c:1", "pc": "0x1"}]} for k, f, b, d in recs]}
    rows = timeline([chk([("definite", "a", 10, None), ("reachable", "b", 5, None)]),
                     chk([("definite", "a", 20, 10)]),          # b did not grow: left out
                     chk([("definite", "a", 30, 10), ("reachable", "b", 6, 1)])])
    a, b = rows
    assert a["grew_every_time"] and a["growth"] == 20 and a["bytes"] == [10, 20, 30]
    assert not b["grew_every_time"] and b["bytes"] == [5, 5, 6]


def _need_valgrind():
    if not shutil.which("valgrind") or not shutil.which("vgdb"):
        pytest.skip("valgrind not installed")


@contextlib.contextmanager
def _under_valgrind(workdir):
    """The vgleak fixture under valgrind's gdbserver, stopped at its start: (exe, pid)."""
    _need_valgrind()
    exe = build(workdir, "vgleak.c", "vgleak")
    vg = subprocess.Popen(["valgrind", "--vgdb=yes", "--vgdb-error=0", exe, "3"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)
        yield exe, vg.pid
    finally:
        vg.kill()
        vg.wait()


def test_vgdb_in_gdb(workdir, tmp_path):
    with _under_valgrind(workdir) as (exe, pid):
        w, lc, bl, wp = (str(tmp_path / n) for n in ("w.json", "lc.json", "bl.json", "wp.json"))
        r = run_gdb("target remote | vgdb --pid=%d" % pid, "source " + os.path.join(ROOT, "gdbinit.example"),
                    "memleak vgdb watch --breakpoint checkpoint --times 3 --json " + w,
                    "memleak vgdb leak-check --kinds all --raw --json " + lc,
                    "memleak vgdb blocks 1..8 --json " + bl,
                    "memleak vgdb who-points-at reachable --json " + wp,
                    exe=exe, source=False, timeout=180)
        assert r.returncode == 0, r.stderr
        watch = load_json(w)
        assert len(watch["checks"]) == 4
        grew = [x for x in watch["records"] if x["grew_every_time"]]
        assert any(x["kind"] == "reachable" and x["stack"][1]["function"] == "grow" and x["growth"] == 2000
                   for x in grew), grew
        doc = load_json(lc)
        raw = _raw_summary(r.stdout)
        for k, (b, n) in raw.items():
            assert (doc["summary"][k]["bytes"], doc["summary"][k]["blocks"]) == (b, n)
        # the fixture's truth at the third checkpoint: 3 + 1 + 2 direct blocks (the newest one is
        # still in a register), 2 indirect
        assert doc["summary"]["definitely_lost"]["blocks"] == 6
        assert doc["summary"]["indirectly_lost"]["blocks"] == 2
        assert [x["bytes"] for x in doc["records"]] == sorted((x["bytes"] for x in doc["records"]), reverse=True)
        blocks = load_json(bl)["records"]
        assert sum(len(x["blocks_list"]) for x in blocks if x["kind"] == "definite") >= 6
        refs = load_json(wp)["referrers"]
        assert refs and refs[0]["where"] == "data" and refs[0]["symbol"] == "reachable"


def test_vgdb_watch_every_stop(workdir, tmp_path):
    """--every-stop: a leak check at each stop of the user's own `continue`s, until --stop."""
    with _under_valgrind(workdir) as (exe, pid):
        w = str(tmp_path / "w.json")
        r = run_gdb("target remote | vgdb --pid=%d" % pid, "source " + os.path.join(ROOT, "gdbinit.example"),
                    "break checkpoint", "memleak vgdb watch --every-stop",
                    "continue", "continue", "continue",
                    "memleak vgdb watch --stop --json " + w, exe=exe, source=False, timeout=180)
        assert r.returncode == 0, r.stderr
        assert "watching: a leak check at every stop" in r.stdout
        watch = load_json(w)
        assert len(watch["checks"]) == 4          # the start and three breakpoint stops
        grew = [x for x in watch["records"] if x["grew_every_time"]]
        assert any(x["kind"] == "reachable" and x["growth"] == 2000 for x in grew), grew


def test_vgdb_offline_types(workdir, tmp_path):
    """--vgdb-pid: valgrind's records for the leaks fixture, and --types names LeakA blocks."""
    _need_valgrind()
    exe = build(workdir, "leaks.cpp", "leaks-64", [])
    run = Running(["valgrind", "--vgdb=yes", exe])
    try:
        pid = run.truth["pid"]
        lc = str(tmp_path / "lc.json")
        r = run_cli("--vgdb-pid", str(pid), "vgdb", "leak-check", "--json", lc)
        assert r.returncode == 0, r.stderr
        doc = load_json(lc)
        assert doc["summary"]["definitely_lost"]["blocks"] == len(run.truth["direct"])
        assert doc["summary"]["indirectly_lost"]["blocks"] == len(run.truth["indirect"])
        rec = [x for x in doc["records"] if x["kind"] == "definite" and x["blocks"] == run.truth["classes"]["LeakA"]
               and any(f["function"].startswith("leak_direct") for f in x["stack"])
               and any(f["function"].startswith("operator new") for f in x["stack"])][0]
        bl = str(tmp_path / "bl.json")
        r = run_cli("--vgdb-pid", str(pid), "vgdb", "blocks", str(rec["record"]), "--types", "--json", bl)
        assert r.returncode == 0, r.stderr
        (b,) = load_json(bl)["records"]
        assert [x["class"] for x in b["blocks_list"]] == ["LeakA"] * run.truth["classes"]["LeakA"]
    finally:
        run.kill()


def test_vgdb_not_valgrind_is_one_line(maps64):
    exe, run, core = maps64
    r = run_gdb("memleak vgdb leak-check", exe=exe, core=core)
    assert r.returncode != 0
    assert "valgrind --vgdb=yes" in r.stderr and "target remote | vgdb --pid=N" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_cli("vgdb", "leak-check")
    assert r.returncode == 2 and "--vgdb-pid" in r.stderr
