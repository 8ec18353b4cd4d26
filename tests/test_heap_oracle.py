"""The heap model against glibc's own bookkeeping (tests/oracle, libc6-dbg) on the oracle's
workload: thread arenas several heaps long, tcache, fastbins, bins, mmapped chunks; 64-bit
(two ASLR layouts) and i386.  Ours runs without libc debug info: offline, in gdb on the core,
and live in the session that took the core."""
import os
import subprocess

import pytest

import oracle
from heapcheck import Stop, disagreements, ours_gdb_core, ours_offline

CASES = [(64, 0), (64, 1), (32, 0)]


@pytest.fixture(scope="module", params=CASES, ids=["x86_64-a", "x86_64-b", "i386"])
def stop(request, tmp_path_factory):
    bits, run = request.param
    if not oracle.have_libc_dbg(bits):
        pytest.skip("libc debug info for %d-bit libc not installed" % bits)
    d = tmp_path_factory.mktemp("heaporacle%d%d" % (bits, run))
    exe = os.path.join(str(d), "oracle_prog%d" % bits)
    r = subprocess.run(["gcc", "-g", "-O0", "-pthread"] + (["-m32"] if bits == 32 else [])
                       + [oracle.PROG_SRC, "-o", exe], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return Stop(d, "oracle", exe, ["break oracle_ready", "run"], commands=("heap",))


def test_offline(stop):
    assert disagreements(ours_offline(stop.exe, stop.core), stop.truth) == []


def test_gdb_core(stop):
    assert disagreements(ours_gdb_core(stop.exe, stop.core), stop.truth) == []


def test_live(stop):
    assert disagreements(stop.live["heap"], stop.truth) == []


def test_multi_heap_arena_present(stop):
    assert max(len(a["heaps"]) for a in stop.truth["arenas"]) >= 3
