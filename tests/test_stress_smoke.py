"""Smoke test of the stress fixtures (tests/stress.py, tests/fixtures/stress_heap.c): every scenario
builds, reaches READY and prints a sane ground truth, and the layout it claims is really there,
checked from outside: gdb attached to the live process (`info proc mappings` and heap_info read
through gdb, no debug info needed), /proc/PID/{maps,mem,task}.  Cores stay small."""
import os
import re
import subprocess

import pytest

from stress import (CORRUPT_KINDS, HEAP_INFO_SIZE, HEAP_MAX, TUNABLES, build_stress, core_name,
                    drop_core, gdb_arenas, read_maps, read_mem, read_word, run_stress, stress_core)

PS = {"64": 8, "32": 4, "static": 8, "static-pie": 8}
MAX_CORE = 400 << 20
LIVE_MARKS = ("live_chain_member", "live_lastword_target", "heap_start_object", "tail_object")


def h(a):
    return int(a, 16)


@pytest.fixture
def procs():
    """Fixture processes started by a test; all killed at its end."""
    runs = []
    yield runs
    for r in runs:
        r.kill()


def start(procs, workdir, args, variant="64", env=None, run=0):
    r, truth = run_stress(workdir, args, variant, env, run)
    procs.append(r)
    return r, truth


def mapping_of(maps, addr):
    for m in maps:
        if m[0] <= addr < m[1]:
            return m
    return None


def check_truth(truth, scenario, ps, pid, leak_sample=400):
    """Invariants every scenario's truth must satisfy, and its leaked blocks checked in memory."""
    assert truth["scenario"] == scenario and truth["pointer_size"] == ps and truth["pid"] == pid
    live, lk = truth["live"], truth["leaked"]
    assert live["count"] >= live["roots"] > 0 and live["bytes_requested"] >= live["count"]
    addrs, direct, indirect = lk["addresses"], lk["direct_addresses"], lk["indirect_addresses"]
    assert len(set(addrs)) == len(addrs) == lk["count"] == lk["direct"] + lk["indirect"]
    assert len(direct) == lk["direct"] and len(indirect) == lk["indirect"]
    assert set(direct) | set(indirect) == set(addrs) and not set(direct) & set(indirect)
    assert sum(lk["by_shape"].values()) == lk["count"]
    assert set(lk["next_chunk_free_or_top"]) <= set(addrs)
    assert all(h(a) % 16 == 0 for a in addrs)
    marks = truth["marks"]
    assert set(marks.get("leaked_lastword_target", [])) <= set(indirect)
    for name in LIVE_MARKS:
        assert not set(marks.get(name, [])) & set(addrs), name
    free = set(truth["freed"]["still_free_sample"])
    assert len(free) <= truth["freed"]["count"] and not free & set(addrs)
    assert not free & {a for n in LIVE_MARKS for a in marks.get(n, [])}
    assert truth["threads_alive"] == len(os.listdir("/proc/%d/task" % pid))
    assert 1 <= truth["arenas_expected_min"] <= truth["arenas_expected_max"]
    maps = read_maps(pid)
    for a in addrs[:leak_sample]:                       # each leaked block is an in-use chunk
        p = h(a)
        m = mapping_of(maps, p)
        assert m and m[2] == "rw-p", (a, m)
        size = read_word(pid, p - ps, ps)
        csize = size & ~7
        assert csize >= 4 * ps and csize % 16 == 0, (a, hex(size))
        if not size & 2:                                # not mmapped: the next chunk says in use
            assert read_word(pid, p - 2 * ps + csize + ps, ps) & 1, a
    return maps


# -- builds ------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", sorted(PS))
def test_builds(workdir, variant):
    exe = build_stress(workdir, variant)
    assert os.access(exe, os.X_OK)
    with open(exe, "rb") as fh:
        ident = fh.read(64)
    assert ident[:4] == b"\x7fELF" and ident[4] == (1 if variant == "32" else 2)    # ELFCLASS
    is_dyn = ident[16] == 3                                                     # ET_DYN
    assert is_dyn == (variant != "static")
    interp = subprocess.run(["readelf", "-lW", exe], capture_output=True, text=True).stdout
    assert ("INTERP" in interp) == (variant in ("64", "32"))


# -- multiheap ---------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", sorted(PS))
def test_multiheap(workdir, procs, variant):
    ps = PS[variant]
    hm, his = HEAP_MAX[ps], HEAP_INFO_SIZE[ps]
    r, t = start(procs, workdir, ["multiheap"], variant)
    check_truth(t, "multiheap", ps, r.pid)
    need = 5 if ps == 8 else 17                         # more than 4 (64 MiB) / 16 (1 MiB) heaps
    a = t["arena"]
    assert a["ok"] and a["heaps_created"] >= need and a["heap_count"] == a["heaps_created"]
    bases = [h(x["base"]) for x in a["heaps"]]
    assert len(set(bases)) == len(bases) and all(b % hm == 0 for b in bases)
    assert {x["ar_ptr"] for x in a["heaps"]} == {a["address"]}
    assert set(bases) == {h(x) for x in a["creation_order"]}
    assert all(x["size"] == hm for x in a["heaps"][1:])         # every older heap is full

    # gdb alone (mappings + heap_info at HEAP_MAX-aligned addresses) sees the same arena
    arenas, maps = gdb_arenas(workdir, r.pid, ps)
    mine = arenas.get(a["address"])
    assert mine is not None, (a["address"], sorted(arenas))
    assert {x["base"] for x in mine} == set(bases) and len(mine) >= need
    rw = [m for m in maps if m[2] == "rw-p" and not m[3] and any(m[0] <= b < m[1] for b in bases)]
    assert sum(m[1] - m[0] for m in rw) >= (need - 1) * hm      # the kernel merges adjacent heaps
    assert any(m[2] == "---p" and m[0] < bases[0] + hm <= m[1] for m in maps)   # newest: reserve

    first, newest = h(a["creation_order"][0]), bases[0]
    starts, tails = t["marks"]["heap_start_object"], t["marks"]["tail_object"]
    assert starts and tails
    for s in map(h, starts):                            # first chunk of a later heap
        base = s & ~(hm - 1)
        assert base in bases and base != first and s == base + his + 2 * ps
    for s in map(h, tails):                             # glibc's freed old top, reused
        base = s & ~(hm - 1)
        assert base in bases and base != newest and s > base + hm - 8192
    # leaks: a few hundred, some through the last word of an 88-byte (i386: 92) request, i.e. in
    # the next chunk's prev_size field
    assert t["leaked"]["count"] >= 200 and t["leaked"]["by_shape"]["lastword"] > 0
    holders = [h(x) for x in t["leaked"]["addresses"] if read_word(r.pid, h(x) - ps, ps) & ~7 == 96]
    stored = {read_word(r.pid, x + 96 - 2 * ps, ps) for x in holders}
    assert {h(x) for x in t["marks"]["leaked_lastword_target"]} <= stored
    assert t["threads_alive"] == 2 and t["arenas_expected_min"] == 2


def test_multiheap_core_size(workdir):
    """The biggest core (64-bit multiheap, four full 64 MiB heaps) stays under 400 MiB: the
    PROT_NONE reserve, which gdb 13's gcore would write in full, is left out (MADV_DONTDUMP)."""
    name = core_name(["multiheap"])
    exe, core, t = stress_core(workdir, ["multiheap"], name=name)
    try:
        size = os.path.getsize(core)
        assert 4 * HEAP_MAX[8] < size < MAX_CORE, size
        assert t["dontdump"]["regions"] == 1
    finally:
        drop_core(workdir, name)


# -- threads and arenas ------------------------------------------------------------------------

def test_manythreads(workdir, procs):
    r, t = start(procs, workdir, ["manythreads"])
    check_truth(t, "manythreads", 8, r.pid)
    ncpu = os.cpu_count()
    tasks = {int(x) for x in os.listdir("/proc/%d/task" % r.pid)}
    assert t["threads_alive"] == len(tasks) > 8 * ncpu
    assert set(t["threads"]["tids"]) <= tasks
    # more threads than arenas: arenas are shared, and gdb sees every thread arena's heap
    assert t["arenas_expected_min"] <= t["arenas_observed"] <= t["arenas_expected_max"]
    assert t["arenas_observed"] < t["threads_alive"]
    arenas, _ = gdb_arenas(workdir, r.pid, 8)
    used = {a for a in t["threads"]["arenas"] if a != "main"}
    assert used <= set(arenas) and len(arenas) == t["arenas_observed"] - 1
    assert all(0 < n < 7 for n in t["tcache_tail"].values())


def test_manythreads_core_size(workdir):
    name = core_name(["manythreads"])
    exe, core, t = stress_core(workdir, ["manythreads"], name=name)
    try:
        assert os.path.getsize(core) < MAX_CORE
        assert t["dontdump"]["regions"] == t["arenas_observed"] - 1
    finally:
        drop_core(workdir, name)


@pytest.mark.parametrize("tunables", (None,) + TUNABLES)
def test_tunables(workdir, procs, tunables):
    env = {"GLIBC_TUNABLES": tunables} if tunables else None
    r, t = start(procs, workdir, ["tunables"], env=env)
    check_truth(t, "tunables", 8, r.pid)
    assert t["tunables"]["GLIBC_TUNABLES"] == tunables
    name, _, value = (tunables or "=").partition("=")
    assert t["tunables"]["parsed"] == ({name: value} if tunables else {})
    p = t["probes"]
    assert p["tcache_count_observed"] == p["tcache_count_expected"]
    tc = int(value) if name == "glibc.malloc.tcache_count" else 7
    assert p["tcache_count_observed"] == min(tc, 10)
    assert t["tcache_tail"] == {"0xd0": min(3, tc), "0x170": min(2, tc)}
    if name == "glibc.malloc.arena_max":
        assert t["arenas_observed"] == int(value) == t["arenas_expected_min"]
    else:
        assert t["arenas_observed"] == t["threads_alive"] == 7     # 6 workers + main, < 8 * cores
    thr = int(value) if name == "glibc.malloc.mmap_threshold" else None
    assert p["mmapped_5000"] == (thr is not None and thr <= 5000)
    assert p["mmapped_256k"] == (thr is None or thr <= 256 << 10)


# -- trim and alignment ------------------------------------------------------------------------

def test_trim_align(workdir, procs):
    r, t = start(procs, workdir, ["trim_align"])
    check_truth(t, "trim_align", 8, r.pid)
    tr = t["trim"]
    assert tr["malloc_trim_returned"] == 1 and h(tr["brk_after"]) < h(tr["brk_before"])
    leaked = set(t["leaked"]["addresses"])
    seen = set()
    for name, addrs in t["marks"].items():
        if not name.startswith("aligned_"):
            continue
        _, where, al, api = name.split("_", 3)
        seen.add((where, int(al), api.replace("_mmapped", "")))
        for a in addrs:
            assert h(a) % int(al) == 0, name
            size = read_word(r.pid, h(a) - 8, 8)
            assert bool(size & 2) == name.endswith("_mmapped")
            if not size & 2:                            # thread arena chunks say so
                assert bool(size & 4) == (where == "thread"), name
    assert len(seen) == 18                              # 3 APIs x 3 alignments x 2 arenas
    assert t["leaked"]["by_shape"]["aligned"] == 7 and t["leaked"]["by_shape"]["realloc"] == 1
    finals = t["marks"]["realloc_final_mmapped"]        # 16 B -> 4 MiB ends mmapped, one leaked
    assert len(finals) == 2 and len(set(finals) & leaked) == 1
    for a in finals:
        assert read_word(r.pid, h(a) - 8, 8) & 2


# -- the executable mapped twice ---------------------------------------------------------------

@pytest.mark.parametrize("variant", ["64", "static-pie"])
def test_selfmap(workdir, procs, variant):
    r, t = start(procs, workdir, ["selfmap"], variant)
    maps = check_truth(t, "selfmap", 8, r.pid)
    sm = t["selfmap"]
    at0 = [m for m in maps if m[4] == sm["exe"] and m[3] == 0]
    assert len(at0) == 2, at0
    assert {m[0] for m in at0} == {h(t["exe_base"]), h(sm["alias"])}
    alias = [m for m in at0 if m[0] == h(sm["alias"])][0]
    assert alias[2] == "r-xp" and alias[1] - alias[0] == sm["alias_size"]
    heap = [m for m in maps if m[4] == "[heap]"][0]
    assert sm["alias_above_heap"] and alias[0] >= heap[1]


# -- corruptions -------------------------------------------------------------------------------

def demangle(pid, field):
    return read_word(pid, field, 8) ^ (field >> 12)


@pytest.mark.parametrize("kind", CORRUPT_KINDS)
def test_corrupt(workdir, procs, kind):
    r, t = start(procs, workdir, ["corrupt", kind])
    check_truth(t, "corrupt", 8, r.pid)
    c = t["corruption"]
    e, at = c["expect"], h(c["corrupted_at"])
    assert c["kind"] == kind
    maps = read_maps(r.pid)
    assert mapping_of(maps, at)[2] == "rw-p"
    if kind in ("tcache_cycle", "tcache_wild"):
        assert demangle(r.pid, at) == h(e["list"][-1])
        count = int.from_bytes(read_mem(r.pid, h(e["tcache_struct"]) + 2 * e["bin_index"], 2), "little")
        assert count == e["count_after"] == (7 if kind == "tcache_cycle" else 4) and e["count_before"] == 3
        if kind == "tcache_cycle":
            assert e["list"][0] == e["list"][-1]
        else:
            assert e["wild_unmapped"] and mapping_of(maps, h(e["wild"])) is None
    elif kind == "fastbin_cycle":
        assert demangle(r.pid, at) == h(e["list_chunks"][0]) == h(e["list_chunks"][-1])
    elif kind == "zero_size":
        assert at == h(e["size_field"]) and read_word(r.pid, at, 8) == 0 and h(e["original_size_field"]) & ~7
    elif kind == "heapinfo_self":
        assert at == h(e["heap"]) + 8 and read_word(r.pid, at, 8) == h(e["heap"])
    elif kind == "fake_tcache":
        for s in e["stale_entries"]:
            assert read_word(r.pid, h(s), 8) == 5
        for f in e["fakes"] + e["real_tcaches"]:
            assert read_word(r.pid, h(f) - 8, 8) & ~7 == e["fake_chunk_size"] == 0x290
        assert not set(e["fakes"]) & set(e["real_tcaches"])
        assert not set(e["fake_entry_targets_live"]) & set(t["leaked"]["addresses"])


# -- ASLR and the core cache -------------------------------------------------------------------

def test_runs_differ(workdir, procs):
    with open("/proc/sys/kernel/randomize_va_space") as fh:
        if fh.read().strip() == "0":
            pytest.skip("ASLR is off")
    r1, t1 = start(procs, workdir, ["corrupt", "tcache_cycle"])
    r2, t2 = start(procs, workdir, ["corrupt", "tcache_cycle"])
    r3, t3 = start(procs, workdir, ["corrupt", "tcache_cycle"], run=1)
    assert t1["exe_base"] != t2["exe_base"]
    assert not set(t1["leaked"]["addresses"]) & set(t2["leaked"]["addresses"])
    assert t1["leaked"]["count"] == t2["leaked"]["count"]       # same seed: same shapes
    assert "seed=1" in t3["argv"] and t3["seed"] == 1


def test_stress_core_cached(workdir):
    exe, core, t = stress_core(workdir, ["corrupt", "fastbin_cycle"])
    mtime = os.stat(core).st_mtime_ns
    exe2, core2, t2 = stress_core(workdir, ["corrupt", "fastbin_cycle"])
    assert (exe2, core2, t2) == (exe, core, t) and os.stat(core).st_mtime_ns == mtime
    assert os.path.getsize(core) < MAX_CORE
    assert not [f for f in os.listdir(str(workdir)) if ".tmp" in f]
    r = subprocess.run(["gdb", "-nx", "-batch", "-ex", "info threads", exe, core],
                       capture_output=True, text=True, timeout=60)
    rows = [line for line in r.stdout.splitlines() if re.match(r"^\*?\s+\d+\s+Thread ", line)]
    assert len(rows) == t["threads_alive"] == 2, r.stdout
