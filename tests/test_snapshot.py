"""memleak snapshot / diff on a program that grows between two moments: one region, one class in
a thread arena several heaps long, one payload; exact deltas; a snapshot of another program is
refused."""
import os
import signal
import stat

import pytest

from conftest import Running, build, load_json, run_cli, run_gdb

STR = "channelid=([0-9]+);"



@pytest.fixture(scope="module")
def grown(workdir, tmp_path_factory):
    d = tmp_path_factory.mktemp("growth")
    exe = build(workdir, "growth.cpp", "growth")
    run = Running([exe])
    t1 = run.truth
    try:
        c1 = run.gcore(str(d / "c1"))
        s1 = str(d / "s1.json")
        r = run_gdb("memleak snapshot %s --strings '%s'" % (s1, STR), pid=run.pid)       # live, in gdb
        assert r.returncode == 0, r.stderr
        os.kill(run.pid, signal.SIGUSR1)
        t2 = run.next_ready()
        c2 = run.gcore(str(d / "c2"))
    finally:
        run.kill()
    s2 = str(d / "s2.json")
    r = run_cli("--core", c2, "--exe", exe, "snapshot", s2, "--strings", STR)   # offline
    assert r.returncode == 0, r.stderr
    s1c = str(d / "s1c.json")
    r = run_gdb("memleak snapshot %s --strings '%s'" % (s1c, STR), exe=exe, core=c1)  # gdb on a core
    assert r.returncode == 0, r.stderr
    return exe, d, (s1, s1c, s2), (t1, t2), (c1, c2)


def _check(doc, truth):
    t1, t2 = truth
    # the region, or the mapping the kernel merged it into (the worker's filler can land right
    # below it): the one holding its address grew by at least the growth
    at = int(t1["region"], 16)
    reg = [r for r in doc["regions"] if int(r["start"], 16) <= at < int(r["start"], 16) + r["size"]
           and "w" in (r["perms"] or "")]
    grow = t2["region_size"] - t1["region_size"]
    assert reg and reg[0]["change"] in ("grown", "new") and reg[0]["size_delta"] >= grow, doc["regions"][:4]
    if reg[0]["start"] == t1["region"]:
        assert reg[0]["size_delta"] == grow
    cls = {c["name"]: c for c in doc["classes"]}
    c = cls["net::Connection"]
    assert (c["before"], c["after"], c["delta"]) == (t1["connections"], t2["connections"], t2["added"])
    assert c["bytes_delta"] == t2["added"] * 72    # usable size: 80-byte chunks minus SIZE_SZ, as census shows
    assert doc["strings"][STR]["histogram"]["4099"] == t2["added"]
    sizes = {s["size"]: s["delta"] for s in doc["sizes"]}
    assert sizes[80] >= t2["added"] and sizes[48] >= t2["added"]   # objects, and their 40-byte payloads
    assert doc["findings"] and "net::Connection +%d instances" % t2["added"] in " ".join(doc["findings"])


def test_snapshots_are_0600_and_versioned(grown):
    _exe, _d, snaps, _t, _c = grown
    for s in snaps:
        assert stat.S_IMODE(os.stat(s).st_mode) == 0o600
        doc = load_json(s)
        assert doc["schema"] == "gdb_memleak.snapshot/1" and doc["target"]["build_id"]
        assert max(len(a["heaps"]) for a in doc["heap"]["arenas"]) >= 2


@pytest.mark.parametrize("first", [0, 1], ids=["live-then-offline", "core-then-offline"])
def test_diff_exact_deltas(grown, first, tmp_path):
    exe, d, snaps, truth, _c = grown
    out = str(tmp_path / "d.json")
    r = run_cli("diff", snaps[first], snaps[2], "--json", out)      # offline, no core needed
    assert r.returncode == 0, r.stderr
    _check(load_json(out), truth)
    assert "net::Connection" in r.stdout
    out2 = str(tmp_path / "g.json")
    r = run_gdb("memleak diff %s %s --json %s" % (snaps[first], snaps[2], out2))
    assert r.returncode == 0, r.stderr
    _check(load_json(out2), truth)


def test_diff_refuses_another_program(grown, workdir, tmp_path):
    exe, d, snaps, _t, _c = grown
    other = build(workdir, "maps_fixture.c", "maps_fixture64")
    run = Running([other])
    try:
        core = run.gcore(str(tmp_path / "o"))
    finally:
        run.kill()
    s = str(tmp_path / "other.json")
    assert run_cli("--core", core, "--exe", other, "snapshot", s).returncode == 0
    r = run_cli("diff", snaps[0], s)
    assert r.returncode == 1 and "different programs" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("diff", snaps[0], exe)
    assert r.returncode == 1 and "not JSON" in r.stderr


def test_diff_of_two_watch_samples(workdir, tmp_path):
    """diff accepts the watcher's samples: the region the fixture grows is first, by RSS."""
    exe = build(workdir, "grow.c", "grow")
    run = Running([exe])
    try:
        out = tmp_path / "w"
        r = run_cli("watch", "--pid", str(run.pid), "--interval", "0.3", "--count", "4", "--out", str(out))
        assert r.returncode == 0, r.stderr
    finally:
        run.kill()
    samples = sorted(str(p) for p in out.iterdir() if p.name.startswith("sample-"))
    d = str(tmp_path / "d.json")
    r = run_cli("diff", samples[0], samples[-1], "--json", d)
    assert r.returncode == 0, r.stderr
    doc = load_json(d)
    top = doc["regions"][0]
    assert top["start"] == run.truth["grow_start"] and top["rss_delta"] > 0, doc["regions"][:3]
    assert doc["findings"][0].startswith("anon %s grew" % run.truth["grow_start"])
