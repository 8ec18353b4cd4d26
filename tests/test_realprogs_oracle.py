"""Real Debian programs nobody here wrote (tests/realprogs), each stopped mid-run and at
exit_group, checked against both oracles:
- glibc's own bookkeeping read through libc6-dbg in a separate gdb (tests/oracle): our heap
  model offline, in gdb on the core and live (in the session that took the core), all without
  libc debug info;
- valgrind's leak check at exit on the same input: our leaked set at the exit stop must be
  valgrind's definitely + indirectly lost (count; bytes within malloc's rounding).
"""
import os

import pytest

import oracle
import realprogs
from heapcheck import GDBINIT, disagreements, ours_gdb_core, ours_offline

pytestmark = pytest.mark.skipif(not oracle.have_libc_dbg(64), reason="libc6-dbg not installed")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    return realprogs.workdir_for(tmp_path_factory)


@pytest.fixture(scope="module", params=[(p.name, s) for p in realprogs.PROGRAMS for s in realprogs.STOPS],
                ids=lambda x: "%s-%s" % x)
def stop(request, corpus):
    name, which = request.param
    prog = realprogs.get(name)
    nodebug = os.path.join(str(corpus), "no-debug-info")
    os.makedirs(nodebug, exist_ok=True)
    live = {c: os.path.join(str(corpus), "%s-%s.live-%s.json" % (name, which, c)) for c in ("heap", "leaks")}
    extra = ["source " + GDBINIT, "set memleak progress off"]
    extra += ["memleak %s --json %s" % (c, p) for c, p in live.items()]
    snap = realprogs.snapshot(prog, corpus, which, extra_gdb_commands=extra, debug_file_directory=nodebug)
    text = snap.read_stdout() + snap.read_stderr()
    assert "internal error" not in text and "Traceback" not in text, text[-3000:]
    for c, p in live.items():
        assert os.path.exists(p), "live memleak %s did not run:\n%s" % (c, text[-3000:])
    truth = oracle.truth_from_core(snap.exe, snap.core)
    assert oracle.check_identities(truth) == []
    return prog, which, snap, truth, {c: _load(p) for c, p in live.items()}


def _load(p):
    import json
    with open(p) as fh:
        return json.load(fh)


def test_heap_offline(stop):
    prog, _which, snap, truth, _live = stop
    assert disagreements(ours_offline(snap.exe, snap.core), truth, expected_findings=prog.expected_findings) == []


def test_heap_gdb_core(stop):
    prog, _which, snap, truth, _live = stop
    assert disagreements(ours_gdb_core(snap.exe, snap.core), truth, expected_findings=prog.expected_findings) == []


def test_heap_live(stop):
    prog, _which, _snap, truth, live = stop
    assert disagreements(live["heap"], truth, expected_findings=prog.expected_findings) == []


def test_threads_at_mid(stop):
    prog, which, snap, truth, live = stop
    if which == "mid" and prog.threads:
        assert snap.threads > 1
        assert len(truth["arenas"]) > 1


def test_leaks_equal_valgrind_at_exit(stop, corpus):
    prog, which, snap, _truth, live = stop
    if which != "exit":
        pytest.skip("valgrind's leak check runs at exit")
    if not prog.leaks_deterministic:
        pytest.skip("%s leaks a scheduling-dependent number of blocks (see tests/realprogs/README.md)" % prog.name)
    vg = realprogs.valgrind_leaks(prog, corpus)
    ours = ours_offline(snap.exe, snap.core, "leaks")
    for doc in (ours, live["leaks"]):
        lk = doc["leaked"]
        want_blocks = vg["definite"]["blocks"] + vg["indirect"]["blocks"]
        want_bytes = vg["definite"]["bytes"] + vg["indirect"]["bytes"]
        assert lk["chunks"] == want_blocks, (lk, vg["definite"], vg["indirect"])
        # chunk sizes: the request plus SIZE_SZ, rounded up to 16 (32 at least)
        assert want_bytes <= lk["bytes"] <= want_bytes + 40 * lk["chunks"], (lk, vg["definite"], vg["indirect"])
        assert (lk["direct_chunks"], lk["indirect_chunks"]) == (vg["definite"]["blocks"], vg["indirect"]["blocks"])
        assert [f for f in doc["findings"] if f["kind"] not in prog.expected_findings] == []
