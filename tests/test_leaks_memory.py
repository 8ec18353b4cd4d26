"""leaks in a few bytes per chunk (issue 16): the references' spill file gives the same answer
as RAM, and Ctrl-C during a spilled run stops with one line, status 130 and no file left."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import PY, ROOT, Running, build, load_json, run_cli


@pytest.fixture(scope="module")
def scale_core(workdir):
    """scaleheap.cpp with 96 MiB of lists of 8 objects, one list in 4 leaked."""
    exe = build(workdir, "scaleheap.cpp", "scaleheap")
    run = Running([exe, "96", "4"])
    core = run.gcore(os.path.join(str(workdir), "scaleheap.core"))
    run.kill()
    return exe, core, run.truth


def _leaks(core, exe, out, **env):
    e = dict(os.environ, **env)
    r = subprocess.run([PY, "-m", "gdb_memleak", "--core", core, "--exe", exe, "--no-progress", "leaks",
                        "--show", "4", "--json", out], capture_output=True, text=True, cwd=ROOT, env=e,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    doc = load_json(out)
    doc.pop("seconds", None)
    return doc


def test_spill_gives_the_same_leaks(scale_core, tmp_path):
    exe, core, truth = scale_core
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    ram = _leaks(core, exe, str(tmp_path / "ram.json"))
    spilled = _leaks(core, exe, str(tmp_path / "spill.json"), GDB_MEMLEAK_EDGE_BUDGET="4k",
                     GDB_MEMLEAK_TMPDIR=str(spill_dir))
    assert ram == spilled
    assert (ram["leaked"]["direct_chunks"], ram["leaked"]["indirect_chunks"]) == (truth["direct"], truth["indirect"])
    assert list(spill_dir.iterdir()) == []


def test_spill_in_process_same_arrays(scale_core, monkeypatch, tmp_path):
    """find_leaks itself: every array equal, and the spill really happened."""
    from gdb_memleak.core.heap import walk_heap
    from gdb_memleak.core.leaks import find_leaks
    from gdb_memleak.core.maps import classify
    from gdb_memleak.core.memory.elfcore import CoreTarget
    exe, core, truth = scale_core
    results = []
    for budget in (None, "1k"):
        if budget:
            monkeypatch.setenv("GDB_MEMLEAK_EDGE_BUDGET", budget)
            monkeypatch.setenv("GDB_MEMLEAK_TMPDIR", str(tmp_path))
        t = CoreTarget(core, exe=exe)
        maps = classify(t)
        results.append(find_leaks(t, maps, walk_heap(t, maps)))
    ram, spill = results
    assert ram.spilled_bytes == 0 and spill.spilled_bytes == 4 * spill.edges > 0
    assert ram.edges == spill.edges
    for name in ("index", "reached", "direct", "cls", "first_word"):
        assert np.array_equal(getattr(ram, name), getattr(spill, name)), name
    assert ram.index.dtype == np.int32 and ram.cls.dtype == np.int16
    # (no stale_reason here: the worker's cached stack, struct pthread included, is no root, so
    # glibc's own block it points to counts too; the command's count is checked against the truth above)
    assert int((~ram.reached).sum()) >= truth["direct"] + truth["indirect"]
    assert list(tmp_path.iterdir()) == []


def _spill_fds(pid):
    out = []
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if "gdb-memleak-edges-" in target:
            out.append(target)
    return out


def test_ctrl_c_during_a_spilled_run(scale_core, tmp_path):
    """SIGINT while the references spill: exit status 130, one line 'interrupted', no file left
    in the temporary folder (the spill file is unnamed from its creation on)."""
    exe, core, _truth = scale_core
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    env = dict(os.environ, GDB_MEMLEAK_EDGE_BUDGET="0", GDB_MEMLEAK_TMPDIR=str(spill_dir),
               GDB_MEMLEAK_PROGRESS_AFTER="0", GDB_MEMLEAK_THREADS="1")
    p = subprocess.Popen([PY, "-m", "gdb_memleak", "--core", core, "--exe", exe, "leaks"], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen_spill = []
    try:
        for line in p.stderr:
            if line.startswith("leaks: scanning the heap"):
                seen_spill = _spill_fds(p.pid)
                if seen_spill:
                    p.send_signal(signal.SIGINT)
                    break
        rest = p.stderr.read()
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert seen_spill and all(t.endswith("(deleted)") for t in seen_spill), seen_spill
    assert p.returncode == 130, rest
    lines = [ln for ln in rest.splitlines() if not ln.startswith(("leaks:", "heap:"))]
    assert lines == ["interrupted"], rest
    assert list(spill_dir.iterdir()) == []


def test_heap_sizes_are_compact_and_mean_bytes(scale_core):
    from gdb_memleak.core.heap import walk_heap
    from gdb_memleak.core.maps import classify
    from gdb_memleak.core.memory.elfcore import CoreTarget
    exe, core, _truth = scale_core
    t = CoreTarget(core, exe=exe)
    heap = walk_heap(t, classify(t))
    assert heap.size.dtype == np.uint32 and heap.free.dtype == np.int8
    sizes = set(np.unique(heap.size[heap.inuse]).tolist())
    assert {64, 128, 256, 512, 1024} <= sizes
    assert int(heap.usable_end[0]) == int(heap.addr[0]) + int(heap.size[0]) + 8
