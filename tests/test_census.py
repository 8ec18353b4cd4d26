"""vtable-census against the census fixture's own ground truth: PIE, non-PIE, stripped, -m32;
in gdb on the core, live, offline; and the manual `x/Na` + _ZTV count on a small range."""
import collections
import os
import re
import subprocess

import pytest

from conftest import FIXTURES, Running, load_json, run_cli, run_gdb

VARIANTS = {"pie": [], "nopie": ["-no-pie"], "stripped": [], "m32": ["-m32"]}


def _build_variant(workdir, variant):
    d = os.path.join(str(workdir), "census-" + variant)
    os.makedirs(d, exist_ok=True)
    flags = VARIANTS[variant]
    lib = os.path.join(d, "libcensuslib.so")
    exe = os.path.join(d, "census")
    if not os.path.exists(exe):
        m32 = ["-m32"] if variant == "m32" else []
        subprocess.run(["g++", "-g", "-O0", "-fPIC", "-shared", *m32, os.path.join(FIXTURES, "censuslib.cpp"),
                        "-o", lib], check=True, capture_output=True)
        subprocess.run(["g++", "-g", "-O0", "-pthread", *flags, os.path.join(FIXTURES, "census.cpp"),
                        "-I", FIXTURES, "-L", d, "-lcensuslib", "-Wl,-rpath,$ORIGIN", "-o", exe],
                       check=True, capture_output=True)
        if variant == "stripped":
            subprocess.run(["strip", "-s", exe], check=True)
    return exe


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def census_target(request, workdir):
    exe = _build_variant(workdir, request.param)
    run = Running([exe])
    core = run.gcore(os.path.join(os.path.dirname(exe), "census.core"))
    yield request.param, exe, run, core
    run.kill()


def _classes(doc):
    return {c["name"]: c for c in doc["classes"]}


def test_census_at_chunk_start_matches_truth(census_target, tmp_path):
    variant, exe, run, core = census_target
    out = str(tmp_path / "c.json")
    r = run_cli("--core", core, "--exe", exe, "vtable-census", "--heap", "--at-chunk-start",
                "--examples", "2", "--json", out)
    assert r.returncode == 0, r.stderr
    got = _classes(load_json(out))
    for name, (at_start, embedded, secondary) in run.truth["classes"].items():
        c = got.get(name, {"count": 0, "embedded": 0, "secondary": 0})
        assert (c["count"], c["embedded"], c["secondary"]) == (at_start, embedded, secondary), (variant, name, c)
    src = {n: got[n]["name_source"] for n in ("Single", "lib::LibThing")}
    assert src["Single"] == ("rtti" if variant == "stripped" else "symbol")
    assert src["lib::LibThing"] == "symbol"
    assert got["lib::LibThing"]["module"] == "libcensuslib.so"
    ps = run.truth["pointer_size"]
    assert got["Single"]["size"] >= 2 * ps
    assert len(got["Single"]["examples"]) == 2


def test_census_plain_heap_counts_every_primary_vptr(census_target, tmp_path):
    variant, exe, run, core = census_target
    out = str(tmp_path / "p.json")
    r = run_cli("--core", core, "vtable-census", "--heap", "--top", "0", "--json", out)
    assert r.returncode == 0, r.stderr
    got = _classes(load_json(out))
    for name, (at_start, embedded, secondary) in run.truth["classes"].items():
        if name.startswith("Freed"):
            assert got.get(name, {"count": 0})["count"] == 0   # the freed vptr is overwritten
            continue
        assert got[name]["count"] == at_start + embedded, (variant, name)
        assert got[name]["secondary"] == secondary


def test_census_in_gdb_core_and_live_agree_with_offline(census_target, tmp_path):
    variant, exe, run, core = census_target
    if variant not in ("pie", "m32"):
        pytest.skip("one PIE and one 32-bit run of the three front ends is enough")
    docs = {}
    for where, runner in (
            ("core", lambda o: run_gdb("memleak vtable-census --heap --at-chunk-start --json " + o, exe=exe, core=core)),
            ("live", lambda o: run_gdb("memleak vtable-census --heap --at-chunk-start --json " + o, pid=run.pid)),
            ("offline", lambda o: run_cli("--core", core, "vtable-census", "--heap", "--at-chunk-start", "--json", o))):
        out = str(tmp_path / (where + ".json"))
        r = runner(out)
        assert r.returncode == 0, (where, r.stderr)
        docs[where] = {n: (c["count"], c["embedded"], c["secondary"]) for n, c in _classes(load_json(out)).items()}
    assert docs["core"] == docs["offline"] == docs["live"]


def test_census_range_expression_and_grep(census_target):
    variant, exe, run, core = census_target
    if variant != "pie":
        pytest.skip("expression syntax is arch-independent")
    r = run_gdb("memleak vtable-census &global_single '(char*)&global_single + 16' --grep ^Single$", exe=exe, core=core)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^1\s+0\s+Single\s", r.stdout, re.M), r.stdout


def test_manual_xa_method_agrees_on_raw_counts(census_target, tmp_path):
    """The field method: x/Na over a range, count <_ZTV…+off> symbols; our raw per-point hits equal it."""
    variant, exe, run, core = census_target
    if variant in ("stripped", "m32"):
        # stripped: the manual method needs symbols. m32: gdb 13's x/a leaves words pointing into
        # a 32-bit shared library's vtable unsymbolized in a core (info symbol resolves them):
        # the manual method undercounts there, so it cannot be the reference.
        pytest.skip("the manual method is only a reference with symbols on 64-bit")
    maps_json = str(tmp_path / "m.json")
    assert run_cli("--core", core, "maps", "--kind", "heap", "--json", maps_json).returncode == 0
    heap = load_json(maps_json)["mappings"][0]
    start = int(heap["start"], 16)
    length = min(heap["size"], 256 << 10)
    ps = run.truth["pointer_size"]
    out = str(tmp_path / "raw.json")
    r = run_gdb("memleak vtable-census 0x%x 0x%x --raw --json %s" % (start, start + length, out),
                "x/%da 0x%x" % (length // ps, start), exe=exe, core=core)
    assert r.returncode == 0, r.stderr
    manual = collections.Counter(re.findall(r"<(_ZTV[A-Za-z0-9_]+)\+(\d+)>", r.stdout))
    ours = {(p["vtable"], str(p["offset"])): p["count"] for p in load_json(out)["points"]}
    # the manual log counts any word inside a vtable; compare on the address points we know
    assert ours, "no hits in the range"
    for key, n in ours.items():
        assert manual.get(key, 0) == n, (key, n, manual.get(key))
    stray = {k: v for k, v in manual.items() if k not in ours}
    assert not stray, stray


def test_heap_walk_classifies_freed_chunks(census_target, tmp_path):
    """memleak heap: every freed object is free (tcache, fastbin or bins), tcache holds 7 per size."""
    variant, exe, run, core = census_target
    if variant not in ("pie", "m32"):
        pytest.skip("64-bit and i386 layouts are enough")
    out = str(tmp_path / "h.json")
    r = run_gdb("memleak heap --json " + out, exe=exe, core=core)
    assert r.returncode == 0, r.stderr
    doc = load_json(out)
    main = [a for a in doc["arenas"] if a["kind"] == "main"][0]
    freed = sum(run.truth["freed"].values())
    assert main["free_chunks"] == freed, main
    assert main["tcache_chunks"] == 14, main      # FreedSmall and FreedMulti sizes: 7 each
    thread = [a for a in doc["arenas"] if a["kind"] == "thread"]
    assert thread and thread[0]["in_use_chunks"] >= 100     # the thread's Namespaced objects
    assert not doc["findings"], doc["findings"]
    off = str(tmp_path / "o.json")
    assert run_cli("--core", core, "heap", "--json", off).returncode == 0
    assert load_json(off)["arenas"] == doc["arenas"]
