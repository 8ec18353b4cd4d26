"""memleak threads / whatis against the threads fixture's truth: live threads, a custom stack size,
exited-unjoined and cached stacks; 64-bit and i386; offline, in gdb on the core and live."""
import os

import pytest

from conftest import Running, build, load_json, run_cli, run_gdb

VARIANTS = {"64": [], "m32": ["-m32"]}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def threads_target(request, workdir):
    exe = build(workdir, "threads.c", "threads-" + request.param, VARIANTS[request.param])
    run = Running([exe])
    core = run.gcore(os.path.join(str(workdir), "threads-%s.core" % request.param))
    yield request.param, exe, run, core
    run.kill()


def _check_threads(doc, truth):
    by_lwp = {t["lwp"]: t for t in doc["threads"]}
    assert set(truth["live_lwps"]) | {truth["pid"]} == set(by_lwp)
    for lwp in truth["live_lwps"]:
        t = by_lwp[lwp]
        assert t["guard"] is True and t["stack_start"] and t["used"] > 0
        assert int(t["stack_start"], 16) <= int(t["sp"], 16) < int(t["stack_end"], 16)
    assert by_lwp[truth["custom_lwp"]]["stack_size"] == truth["custom_stack"]
    reasons = [o["reason"] for o in doc["orphan_stacks"]]
    assert reasons.count("exited-unjoined") == truth["exited_unjoined"], doc["orphan_stacks"]
    assert reasons.count("cached") == truth["cached"], doc["orphan_stacks"]
    assert all(o["guard"] for o in doc["orphan_stacks"])
    assert any("%d exited threads were never joined" % truth["exited_unjoined"] in f for f in doc["findings"])
    assert any("LWP %d) uses" % truth["deep_lwp"] in f for f in doc["findings"])


def test_threads_offline_and_gdb(threads_target, tmp_path):
    variant, exe, run, core = threads_target
    out = str(tmp_path / "t.json")
    r = run_cli("--core", core, "--exe", exe, "threads", "--check", "--json", out)
    assert r.returncode == 0, r.stderr
    assert "never joined" in r.stdout
    _check_threads(load_json(out), run.truth)
    for how in ("core", "live"):
        cmd = "memleak threads --check --json " + out
        r = run_gdb(cmd, exe=exe, core=core) if how == "core" else run_gdb(cmd, pid=run.pid)
        assert r.returncode == 0, r.stderr
        doc = load_json(out)
        _check_threads(doc, run.truth)
        if how == "live":
            assert doc["totals"]["rlimit_source"].startswith("/proc/")


def _whatis(front, exe, core, pid, addr, out):
    if front == "cli":
        r = run_cli("--core", core, "--exe", exe, "whatis", addr, "--json", out)
    elif front == "core":
        r = run_gdb("memleak whatis %s --json %s" % (addr, out), exe=exe, core=core)
    else:
        r = run_gdb("memleak whatis %s --json %s" % (addr, out), pid=pid)
    assert r.returncode == 0, r.stderr
    return load_json(out), r.stdout


@pytest.mark.parametrize("front", ["cli", "core", "live"])
def test_whatis(threads_target, front, tmp_path):
    variant, exe, run, core = threads_target
    if variant == "m32" and front != "cli":
        pytest.skip("one front end is enough on i386")
    t = run.truth
    out = str(tmp_path / "w.json")
    doc, _ = _whatis(front, exe, core, run.pid, t["global_counter"], out)
    assert doc["kind"] == "file" and doc["symbol"]["symbol"] == "global_counter"
    assert doc["value"] == "0x2a"
    doc, _ = _whatis(front, exe, core, run.pid, t["heap_object"], out)
    assert doc["kind"] == "main-heap"
    assert doc["chunk"]["user"] == t["heap_object"] and doc["chunk"]["state"] == "in use"
    doc, _ = _whatis(front, exe, core, run.pid, t["deep_local"], out)
    assert doc["kind"] == "thread-stack" and doc["thread"]["lwp"] == t["deep_lwp"]
    if front != "cli":
        assert doc["frame"]["function"] == "recurse" and doc["frame"]["depth"] > 40
    doc, text = _whatis(front, exe, core, run.pid, t["main"], out)
    assert doc["symbol"]["symbol"] == "main" and doc["code"] is True
    here = [i for i in doc["disassembly"] if i.get("here")]
    assert here and here[0]["address"] == int(t["main"], 16)
    assert "=>" in text
    doc, _ = _whatis(front, exe, core, run.pid, "0x10", out)
    assert doc["kind"] == "unmapped"


def test_whatis_bad_address_is_one_line(threads_target):
    variant, exe, run, core = threads_target
    r = run_cli("--core", core, "--exe", exe, "whatis", "nonsense")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_threads_32bit_address_space_finding(workdir, tmp_path):
    """The field case: `ulimit -s 32768` on a 32-bit service: every thread reserves 32 MiB."""
    exe = build(workdir, "threads.c", "threads-m32", VARIANTS["m32"])
    run = Running(["sh", "-c", "ulimit -s 32768 && exec %s 24" % exe])
    try:
        core = run.gcore(os.path.join(str(tmp_path), "t32.core"))
        out = str(tmp_path / "t.json")
        r = run_cli("--core", core, "--exe", exe, "threads", "--check", "--json", out)
        assert r.returncode == 0, r.stderr
        doc = load_json(out)
        assert doc["totals"]["rlimit_stack"] == 32 << 20
        assert any("x 32 MiB stacks =" in f and "of a 3 GiB address space (32-bit target)" in f
                   for f in doc["findings"]), doc["findings"]
        assert any("24 exited threads were never joined: 768 MiB" in f for f in doc["findings"]), doc["findings"]
    finally:
        run.kill()
