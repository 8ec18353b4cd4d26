"""Generated stress layouts (tests/stress.py, ASLR on) against glibc's own bookkeeping
(tests/oracle, libc6-dbg) and against each fixture's own truth (every leaked block, direct and
indirect); corrupted heaps end in findings at the corrupted place, never in an internal error
or a false leak."""
import os
import subprocess

import pytest

import oracle
import stress
from conftest import GDBINIT, ROOT, load_json
from heapcheck import NO_DEBUG, disagreements, ours_gdb_core, ours_offline

LAYOUTS = ([("multiheap", None, v, r) for v, r in (("64", 0), ("64", 1), ("32", 0), ("static", 0), ("static-pie", 0))]
           + [("manythreads", None, "64", 0), ("manythreads", None, "32", 0), ("trim_align", None, "64", 0),
              ("trim_align", None, "32", 0), ("selfmap", None, "64", 0)]
           + [("tunables", t, "64", 0) for t in stress.TUNABLES])


@pytest.fixture(scope="session")
def swork(tmp_path_factory):
    return tmp_path_factory.mktemp("stress")


def _ids(p):
    scen, tun, variant, run = p
    return "-".join(x for x in (scen, (tun or "").replace("glibc.malloc.", ""), variant, "run%d" % run if run else "") if x)


def _leak_check(exe, core, truth, tmp_path):
    addrs = str(tmp_path / "leaked.addrs")
    doc = ours_offline(exe, core, "leaks", ("--addresses", addrs))
    got = set(open(addrs).read().split())
    want = set(truth["leaked"]["addresses"])
    assert got == want, ("missing", sorted(want - got)[:8], "extra", sorted(got - want)[:8])
    assert doc["leaked"]["direct_chunks"] == truth["leaked"]["direct"]
    assert doc["leaked"]["indirect_chunks"] == truth["leaked"]["indirect"]
    return doc


@pytest.mark.parametrize("layout", LAYOUTS, ids=_ids)
def test_layout(layout, swork, tmp_path):
    scen, tun, variant, run = layout
    env = {"GLIBC_TUNABLES": tun} if tun else None
    exe, core, truth = stress.stress_core(swork, [scen], variant, env=env, run=run)
    leaks = _leak_check(exe, core, truth, tmp_path)
    assert leaks["findings"] == []
    bits = 32 if variant == "32" else 64
    if variant.startswith("static"):
        ours = ours_offline(exe, core)
        assert ours["discovery"] == "arena ring" and ours["findings"] == []
        assert ours["mp"] is not None and ours["tcaches"]
        return      # libc6-dbg has no debug info for the libc inside a static executable
    if not oracle.have_libc_dbg(bits):
        pytest.skip("no libc debug info for %d-bit" % bits)
    t = oracle.truth_from_core(exe, core)
    assert oracle.check_identities(t) == []
    assert disagreements(ours_offline(exe, core), t) == []
    maps = {m["start"]: m for m in ours_offline(exe, core, "maps")["mappings"]}
    if scen == "multiheap":
        heaps = max(len(a["heaps"]) for a in t["arenas"])
        assert heaps > (4 if bits == 64 else 16)
        # every heap is labelled with its arena, even where the kernel merged heaps into one mapping
        for a in t["arenas"]:
            for h in a["heaps"] if not a["main"] else []:
                m = maps.get(hex(h["start"]))
                assert m is not None and m["kind"] == "arena-heap" and m["note"] == "arena 0x%x" % a["address"], m
    if scen == "selfmap":
        m = maps.get(truth["selfmap"]["heap_start"])
        assert m is not None and m["kind"] == "main-heap", (truth["selfmap"], m)
    if scen in ("multiheap", "manythreads") and run == 0:
        assert disagreements(ours_gdb_core(exe, core), t) == []


@pytest.mark.parametrize("variant", ["64", "32"])
def test_multiheap_live_in_gdb(variant, swork, tmp_path):
    """Live, in gdb attached with libc's debug info hidden: the same answers as glibc."""
    run, truth = stress.run_stress(swork, ["multiheap"], variant)
    try:
        core = str(tmp_path / "live.core")
        out = str(tmp_path / "heap.json")
        r = subprocess.run(["gdb", "-nx", "-batch", "-iex", NO_DEBUG, "-p", str(run.pid), "-ex", "gcore " + core,
                            "-ex", "source " + GDBINIT, "-ex", "memleak heap --json " + out],
                           capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        exe = stress.build_stress(swork, variant)
    finally:
        run.kill()
    if not oracle.have_libc_dbg(32 if variant == "32" else 64):
        pytest.skip("no libc debug info")
    assert disagreements(load_json(out), oracle.truth_from_core(exe, core)) == []


EXPECT_KIND = {"tcache_cycle": "tcache-list-bad", "tcache_wild": "tcache-list-bad", "zero_size": "walk-resumed",
               "heapinfo_self": "heap-info-loop", "fastbin_cycle": "fastbin-bad", "fake_tcache": None}


@pytest.mark.parametrize("kind", stress.CORRUPT_KINDS)
def test_corruption_is_a_finding(kind, swork, tmp_path):
    exe, core, truth = stress.stress_core(swork, ["corrupt", kind])
    exp = truth["corruption"]["expect"]
    heap = ours_offline(exe, core)
    kinds = {f["kind"]: f for f in heap["findings"]}
    want = EXPECT_KIND[kind]
    if want is None:
        assert heap["findings"] == [], heap["findings"]
        real = {t["address"] for t in heap["tcaches"]}
        assert real == set(exp["real_tcaches"])
    else:
        assert list(kinds) == [want], heap["findings"]
        f = kinds[want]
        assert f["count"] == 1
        at = int(truth["corruption"]["corrupted_at"], 16)
        assert abs(int(f["addresses"][0], 16) - at) <= 16, (f, truth["corruption"]["corrupted_at"])
    # chunks a broken list names (probably free) are never reported leaked
    _leak_check(exe, core, truth, tmp_path)
