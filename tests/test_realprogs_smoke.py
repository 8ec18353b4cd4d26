"""Smoke test of the real-program corpus (tests/realprogs/): each packaged program installs, runs
under gdb to its "mid" and "exit" stops (a core gdb reads back, with the expected threads) and
runs under valgrind (XML parsed).  Everything is built once per session, two programs at a time,
under BASETEMP/realprogs ($REALPROGS_WORKDIR to keep the cache across sessions); other test
modules get the same cache through realprogs.workdir_for(tmp_path_factory)."""
import os
import re
import subprocess

import pytest

import realprogs

NAMES = [p.name for p in realprogs.PROGRAMS]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """(workdir, results, errors) of realprogs.build_all over every program."""
    for tool in ("gdb", "valgrind"):
        if not subprocess.run(["sh", "-c", "command -v " + tool], capture_output=True).stdout:
            pytest.skip("no " + tool)
    workdir = realprogs.workdir_for(tmp_path_factory)
    errors = {}
    results = realprogs.build_all(workdir, jobs=2, errors=errors)
    return workdir, results, errors


def _result(corpus, name, what):
    workdir, results, errors = corpus
    if name in errors:
        err = errors[name]
        if isinstance(err, realprogs.NotInstalled):
            pytest.skip(str(err))
        pytest.fail("%s: %s: %s" % (name, type(err).__name__, err))
    return results[(name, what)]


def test_corpus_shape():
    progs = realprogs.PROGRAMS
    assert len(progs) >= 5
    assert sum(p.cxx for p in progs) >= 2
    assert sum(p.threads for p in progs) >= 2
    assert any(p.server for p in progs)
    assert len(set(NAMES)) == len(NAMES)


def _core_threads(exe, core):
    r = subprocess.run(["gdb", "-nx", "-batch", "-ex", "file " + exe, "-ex", "core-file " + core,
                        "-ex", "info threads"], capture_output=True, text=True, timeout=300)
    return r, len(re.findall(r"^[ *]\s*\d+\s+(?:Thread 0x|LWP )", r.stdout, re.M))


@pytest.mark.parametrize("stop", realprogs.STOPS)
@pytest.mark.parametrize("name", NAMES)
def test_stop_core_readable(corpus, name, stop):
    prog = realprogs.get(name)
    snap = _result(corpus, name, stop)
    assert os.path.getsize(snap.core) > 0
    # gdb's gcore dumps each thread arena's whole 64 MiB reservation: keep an eye on the size
    assert os.path.getsize(snap.core) < 512 << 20, "core of %s %s is %d MiB" % (name, stop, os.path.getsize(snap.core) >> 20)
    r, nthreads = _core_threads(prog.exe, snap.core)
    assert nthreads >= 1, r.stdout + r.stderr
    assert nthreads == snap.threads, (nthreads, snap.threads, r.stdout)
    if stop == "mid" and prog.threads:
        assert nthreads > 1, "%s mid stop shows only %d thread(s):\n%s" % (name, nthreads, r.stdout)
    if stop == "exit":
        assert snap.exit_status == prog.expected_status
        assert nthreads == 1 or prog.threads


@pytest.mark.parametrize("name", NAMES)
def test_valgrind_parsed(corpus, name):
    prog = realprogs.get(name)
    v = _result(corpus, name, "valgrind")
    assert v["finished"] and v["returncode"] == prog.expected_status
    for kind in ("definite", "indirect", "possible", "reachable"):
        assert v[kind]["blocks"] >= 0 and v[kind]["bytes"] >= v[kind]["blocks"]
    assert isinstance(v["errors"], int)
    lost = [r for r in v["all_records"] if r["kind"] in ("Leak_DefinitelyLost", "Leak_IndirectlyLost")]
    assert lost == v["records"]
    assert sum(r["blocks"] for r in v["records"] if r["kind"] == "Leak_DefinitelyLost") == v["definite"]["blocks"]
    for r in v["records"]:
        assert r["blocks"] > 0 and r["stack"], r
    if prog.server:        # the client really drove it, then shut it down
        workdir = corpus[0]
        with open(os.path.join(prog.rundir(workdir), "valgrind.client.log")) as fh:
            log = fh.read()
        assert "traffic done" in log and "client done" in log, log


def test_server_mid_stop_after_traffic(corpus):
    """The server's mid stop comes after the client's traffic (the `stats` request)."""
    workdir = corpus[0]
    for prog in realprogs.PROGRAMS:
        if prog.server:
            _result(corpus, prog.name, "mid")
            with open(os.path.join(prog.rundir(workdir), "gdb-mid.client.log")) as fh:
                assert "traffic done" in fh.read()
