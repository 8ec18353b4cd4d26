"""Self-check of the glibc-truth oracle (tests/oracle/): glibc's own bookkeeping, read
through libc's debug info, must be the same live and from a core, must satisfy the
identities of tests/oracle/README.md against mallinfo2(), and the workload must have
put something everywhere (thread arenas with several heaps, tcache, fastbins, bins,
mmapped chunks).  Drives real gdb; x86-64 always, i386 when libc6-dbg:i386 is installed.
"""
import json
import os
import shutil
import subprocess
import time

import pytest

import oracle

pytestmark = pytest.mark.skipif(shutil.which("gdb") is None or shutil.which("gcc") is None,
                                reason="needs gdb and gcc")

GDB_TIMEOUT = 240


def _build(tmpdir, bits):
    exe = os.path.join(str(tmpdir), "oracle_prog%d" % bits)
    flags = ["-m32"] if bits == 32 else []
    proc = subprocess.run(["gcc", "-g", "-O0", "-pthread", *flags, oracle.PROG_SRC, "-o", exe],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        if bits == 32:
            pytest.skip("-m32 build failed (gcc-multilib?): %s" % proc.stderr[-500:])
        raise AssertionError(proc.stderr)
    return exe


class Run:
    """oracle_prog run to oracle_ready() in gdb: gcore, live truth (+mallinfo2), core truth."""

    def __init__(self, tmpdir, bits):
        self.bits = bits
        self.exe = _build(tmpdir, bits)
        self.core = os.path.join(str(tmpdir), "oracle%d.core" % bits)
        live_json = os.path.join(str(tmpdir), "live%d.json" % bits)
        argv = ["gdb", "-nx", "-batch",
                "-ex", "break oracle_ready", "-ex", "run",
                "-ex", "gcore %s" % self.core,
                *oracle.truth_gdb_commands(live_json, mallinfo=True),
                "-ex", "kill", self.exe]
        t0 = time.time()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=GDB_TIMEOUT)
        self.live_seconds = time.time() - t0
        assert os.path.exists(live_json), "live glibc-truth failed:\n%s\n%s" % (
            proc.stderr, proc.stdout[-3000:])
        with open(live_json) as fh:
            self.live = json.load(fh)
        t0 = time.time()
        self.from_core = oracle.truth_from_core(self.exe, self.core, timeout=GDB_TIMEOUT)
        self.core_seconds = time.time() - t0


@pytest.fixture(scope="module", params=[64, 32], ids=["x86_64", "i386"])
def run(request, tmp_path_factory):
    bits = request.param
    if not oracle.have_libc_dbg(bits):
        pytest.skip("libc debug info for %d-bit libc not installed (%s)" % (
            bits, "libc6-dbg" if bits == 64 else "dpkg --add-architecture i386; "
            "apt-get install libc6-dbg:i386"))
    return Run(tmp_path_factory.mktemp("oracle%d" % bits), bits)


def test_no_oracle_errors(run):
    assert run.live["errors"] == []
    assert run.from_core["errors"] == []
    assert run.live["pointer_size"] == run.bits // 8


def test_core_equals_live(run):
    assert run.live["mallinfo2"] is not None
    assert run.from_core["mallinfo2"] is None
    assert oracle.comparable(run.from_core) == oracle.comparable(run.live)


def test_identities_and_mallinfo2(run):
    assert oracle.check_identities(run.live) == []
    assert oracle.check_identities(run.from_core) == []
    assert oracle.mallinfo2_from_truth(run.live) == run.live["mallinfo2"]


def test_workload_covers_everything(run):
    t = run.live
    view = oracle.expected_tool_view(t)
    assert len(t["arenas"]) == 8                     # main + 6 workers + big thread
    assert t["narenas"] == 8
    assert max(len(a["heaps"]) for a in t["arenas"]) >= 3
    assert t["heap_max_size"] == (64 << 20 if run.bits == 64 else 1 << 20)
    for a in t["arenas"]:
        if not a["main"]:
            for h in a["heaps"]:
                assert h["start"] % t["heap_max_size"] == 0
                assert h["size"] <= h["mprotect_size"] <= t["heap_max_size"]
            if len(a["heaps"]) > 1:
                # two fenceposts (CHUNK_HDR_SZ-sized and size 0) close every older heap
                assert a["walk"]["fencepost_chunks"] >= 2 * (len(a["heaps"]) - 1)
    tot = view["totals"]
    assert tot["tcache"][0] > 100 and tot["fastbin"][0] > 50 and tot["free"][0] > 100
    assert view["mmapped"] == (3, t["mp"]["mmapped_mem"]) and t["mp"]["mmapped_mem"] >= 1 << 20
    assert len(t["tcache"]) == 8 and all(x["address"] for x in t["tcache"])
    assert tot["tcache_structs"][0] == 8
    big = max(view["arenas"], key=lambda a: a["in_use"][1])
    assert big["in_use"][1] > (200 << 20 if run.bits == 64 else 20 << 20)


def test_manual_tls_matches_libthread_db(run):
    manual = oracle.truth_from_core(run.exe, run.core, timeout=GDB_TIMEOUT,
                                    gdb_args=oracle.NO_LIBTHREAD_DB)
    assert [x["tls"] for x in manual["tcache"]] == ["manual"] * len(manual["tcache"])
    assert [x["tls"] for x in run.from_core["tcache"]] == ["gdb"] * len(manual["tcache"])
    assert oracle.comparable(manual) == oracle.comparable(run.from_core)


def test_timing(run):
    # the whole live session (run + gcore + truth + mallinfo2) and the offline read
    assert run.live_seconds < 60
    assert run.core_seconds < 30
