"""memleak leaks / heap against the leaks fixture's ground truth (64-bit, i386, stripped), in gdb on
the core, live and offline; and against valgrind's own leak check of the same program."""
import os
import re
import shutil
import subprocess
import time

import pytest

from conftest import Running, build, load_json, run_cli, run_gdb

VARIANTS = {"64": [], "m32": ["-m32"], "stripped": ["-s"], "static": ["-static"]}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def leaks_target(request, workdir):
    exe = build(workdir, "leaks.cpp", "leaks-" + request.param, VARIANTS[request.param])
    run = Running([exe])
    core = run.gcore(os.path.join(str(workdir), "leaks-%s.core" % request.param))
    yield request.param, exe, run, core
    run.kill()


def _check(doc, addresses_file, truth):
    got = set(open(addresses_file).read().split())
    direct, indirect, kept = set(truth["direct"]), set(truth["indirect"]), set(truth["kept"])
    assert got == direct | indirect, ("missing", (direct | indirect) - got, "extra", got - direct - indirect)
    assert not got & kept
    lk = doc["leaked"]
    assert (lk["chunks"], lk["direct_chunks"], lk["indirect_chunks"]) == (
        len(direct) + len(indirect), len(direct), len(indirect))
    classes = {c["name"]: c["chunks"] for c in doc["by_class"]}
    for name, n in truth["classes"].items():
        assert classes.get(name) == n, (name, classes)
    assert sum(c["chunks"] for c in doc["by_class"]) == lk["chunks"]
    assert sum(s["chunks"] for s in doc["by_size"]) == lk["chunks"]
    assert doc["excluded_roots"] == []
    for e in doc["examples"]:
        assert e["address"] in got


def test_leaks_offline_match_truth(leaks_target, tmp_path):
    variant, exe, run, core = leaks_target
    out, addrs = str(tmp_path / "l.json"), str(tmp_path / "addrs")
    r = run_cli("--core", core, "--exe", exe, "leaks", "--show", "3", "--json", out, "--addresses", addrs)
    assert r.returncode == 0, r.stderr
    doc = load_json(out)
    _check(doc, addrs, run.truth)
    assert len(doc["examples"]) == 3 and doc["examples"][0]["kind"] == "direct"
    assert os.stat(addrs).st_mode & 0o777 == 0o600
    if variant == "stripped":
        assert {c["name_source"] for c in doc["by_class"] if "name_source" in c} == {"rtti"}


def test_heap_free_chunks(leaks_target, tmp_path):
    """Freed chunks sit in tcache, fastbins and the unsorted bin; none is reported in use."""
    variant, exe, run, core = leaks_target
    out = str(tmp_path / "h.json")
    r = run_cli("--core", core, "--exe", exe, "heap", "--json", out)
    assert r.returncode == 0, r.stderr
    doc = load_json(out)
    main = [a for a in doc["arenas"] if a["kind"] == "main"][0]
    freed = run.truth["freed"]
    assert main["tcache_chunks"] == freed["tcache"]
    assert main["fastbin_chunks"] == freed["fast"]
    assert main["bin_chunks"] >= freed["bins"]
    assert any(a["kind"] == "thread" for a in doc["arenas"])
    assert doc["mmapped"]["chunks"] == 2


def test_leaks_in_gdb_core_and_live(leaks_target, tmp_path):
    variant, exe, run, core = leaks_target
    if variant == "stripped":
        pytest.skip("gdb front ends run on the unstripped builds")
    for how in ("core", "live"):
        out, addrs = str(tmp_path / (how + ".json")), str(tmp_path / (how + ".addrs"))
        cmd = "memleak leaks --json %s --addresses %s" % (out, addrs)
        r = run_gdb(cmd, exe=exe, core=core) if how == "core" else run_gdb(cmd, pid=run.pid)
        assert r.returncode == 0, r.stderr
        _check(load_json(out), addrs, run.truth)
        if how == "live":
            assert "the command ran for" in r.stderr and "while the process was stopped" in r.stderr


def test_stale_stacks_are_not_roots_by_default(maps64, tmp_path):
    """The maps fixture has an exited-unjoined thread: its stack (and any cached one) is
    excluded and said so; --stale-stacks-as-roots scans them."""
    exe, run, core = maps64
    out = str(tmp_path / "l.json")
    r = run_cli("--core", core, "--exe", exe, "leaks", "--json", out)
    assert r.returncode == 0, r.stderr
    doc = load_json(out)
    assert len(doc["excluded_roots"]) >= 1
    assert all(e["reason"] for e in doc["excluded_roots"])
    assert "not a root" in r.stdout
    r = run_cli("--core", core, "--exe", exe, "leaks", "--stale-stacks-as-roots", "--json", out)
    assert r.returncode == 0, r.stderr
    assert load_json(out)["excluded_roots"] == []


def _valgrind_counts(text):
    out = {}
    for kind in ("definitely", "indirectly"):
        m = re.search(r"%s lost: ([\d,]+) bytes in ([\d,]+) blocks" % kind, text)
        assert m, text[-2000:]
        out[kind] = int(m.group(2).replace(",", ""))
    return out


def test_leaks_agree_with_valgrind(workdir):
    """The same program under valgrind: `leak_check full reachable any` at the READY point reports
    as many definitely and indirectly lost blocks as the fixture's truth (which we match)."""
    if not shutil.which("valgrind") or not shutil.which("vgdb"):
        pytest.skip("valgrind not installed")
    exe = build(workdir, "leaks.cpp", "leaks-64", VARIANTS["64"])
    run = Running(["valgrind", "--vgdb=yes", exe])
    try:
        want = {"definitely": len(run.truth["direct"]), "indirectly": len(run.truth["indirect"])}
        counts = None
        # READY is printed just before pause(): under valgrind (slow, and slower on a loaded
        # machine) the first check can come while printf's frames still hold a stale value
        for _ in range(10):
            r = subprocess.run(["vgdb", "--pid=%d" % run.truth["pid"], "leak_check", "full", "reachable", "any"],
                               capture_output=True, text=True, timeout=60)
            text = r.stdout + r.stderr
            if "LEAK SUMMARY" in text:
                counts = _valgrind_counts(text)
                if counts == want:
                    break
            time.sleep(1)
        assert counts == want
    finally:
        run.kill()
