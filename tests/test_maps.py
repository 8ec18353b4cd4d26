"""memleak maps on a real multi-threaded fixture: in gdb on its gcore, live (attach), offline,
on a kernel core and on -m32; all agree on the kinds of the same ranges."""
import os

import pytest

from conftest import Running, build, load_json, run_cli, run_gdb


def _maps_json(tmp_path, name, runner):
    out = os.path.join(str(tmp_path), name)
    r = runner(out)
    assert r.returncode == 0, r.stderr
    return load_json(out)


def _by_start(doc):
    return {int(m["start"], 16): m for m in doc["mappings"]}


def _find(doc, addr):
    for m in doc["mappings"]:
        if int(m["start"], 16) <= addr < int(m["end"], 16):
            return m
    raise AssertionError("0x%x not in any mapping" % addr)


def check_fixture_layout(doc, truth, live_threads_expected=True):
    """Heap and arenas classified, every thread stack owned by its LWP, guards below, libraries named."""
    assert _find(doc, int(truth["heap_block"], 16))["kind"] == "main-heap"
    for blk in truth["arena_blocks"]:
        assert _find(doc, int(blk, 16))["kind"] == "arena-heap"
    assert _find(doc, int(truth["anon"], 16))["kind"] == "anon"
    stacks = [m for m in doc["mappings"] if m["kind"] == "thread-stack"]
    owners = {m["owner_lwp"] for m in stacks}
    for lwp in truth["lwps"]:
        assert lwp in owners, "LWP %d owns no stack" % lwp
    # one exited-unjoined thread's stack: stack-shaped, owned by nobody
    assert sum(1 for m in stacks if m["owner_lwp"] is None) == 1
    small = [m for m in stacks if m["owner_lwp"] == truth["small_stack_lwp"]]
    assert small and small[0]["size"] == 256 * 1024
    ends = {int(m["end"], 16): m for m in doc["mappings"]}
    for m in stacks:
        below = ends.get(int(m["start"], 16))
        assert below is not None and below["kind"] == "guard", m
    main = [m for m in doc["mappings"] if m["kind"] == "stack"]
    assert len(main) == 1 and main[0]["owner_lwp"] == truth["pid"]
    paths = {os.path.basename(m["path"] or "") for m in doc["mappings"] if m["kind"] == "file"}
    assert any(p.startswith("libc.so") for p in paths)
    assert doc["totals"]["thread-stack"]["count"] == len(stacks)
    assert doc["totals"]["guard"]["size"] == sum(m["size"] for m in doc["mappings"] if m["kind"] == "guard")


def test_maps_gdb_on_gcore(maps64, tmp_path):
    exe, run, core = maps64
    doc = _maps_json(tmp_path, "m.json", lambda out: run_gdb("memleak maps --json " + out, exe=exe, core=core))
    assert doc["target"]["kind"] == "core" and doc["target"]["pointer_size"] == 8
    check_fixture_layout(doc, run.truth)


def test_maps_live_core_offline_agree(maps64, tmp_path):
    exe, run, core = maps64
    live = _maps_json(tmp_path, "live.json", lambda out: run_gdb("memleak maps --json " + out, pid=run.pid))
    incore = _maps_json(tmp_path, "core.json", lambda out: run_gdb("memleak maps --json " + out, exe=exe, core=core))
    offline = _maps_json(tmp_path, "off.json", lambda out: run_cli("--core", core, "--exe", exe, "maps", "--json", out))
    assert live["target"]["kind"] == "live" and live["target"]["pid"] == run.pid
    assert offline["target"]["kind"] == "offline"
    check_fixture_layout(live, run.truth)
    check_fixture_layout(offline, run.truth)
    assert all(m["rss"] is not None for m in live["mappings"])
    assert incore["mappings"] == offline["mappings"]
    lv = _by_start(live)
    compared = 0
    for start, m in _by_start(offline).items():
        if m["kind"] == "file" and m["perms"] == "???p":
            continue  # text gcore left out of the core: known range, no bytes
        other = lv.get(start)
        assert other is not None, "0x%x missing live" % start
        if other["kind"] == "shm" and m["kind"] == "anon" and m["path"] is None:
            # gcore leaves a SysV segment whose shmid (its inode) is 0 out of NT_FILE: plain anon there
            continue
        if other["kind"] == "vvar":
            continue
        assert (m["kind"], m["end"]) == (other["kind"], other["end"]), (hex(start), m, other)
        compared += 1
    assert compared >= 20


def test_maps_table_and_filters(maps64):
    exe, run, core = maps64
    r = run_gdb("memleak maps --kind thread-stack,guard --sort size --min-size 8K", exe=exe, core=core)
    assert r.returncode == 0, r.stderr
    rows = [l for l in r.stdout.splitlines() if l.startswith("0x")]
    assert rows and all(" thread-stack " in l for l in rows)  # guards are 4 KiB: filtered
    assert "LWP %d" % run.truth["lwps"][0] in r.stdout
    assert "total" in r.stdout


def test_maps_kernel_core(workdir, tmp_path):
    exe = build(workdir, "maps_fixture.c", "maps_fixture64")
    run = Running([exe], cwd=str(tmp_path), core_limit=True)
    core = run.kernel_core(str(tmp_path))
    if core is None:
        pytest.skip("kernel cores go to a handler here (core_pattern is a pipe)")
    doc = _maps_json(tmp_path, "k.json", lambda out: run_cli("--core", core, "--exe", exe, "maps", "--json", out))
    check_fixture_layout(doc, run.truth)
    # the kernel names SysV segments in NT_FILE
    assert _find(doc, int(run.truth["shm"], 16))["kind"] == "shm"
    r = run_gdb("memleak maps --kind heap", exe=exe, core=core)
    assert r.returncode == 0 and " main-heap " in r.stdout and " arena-heap " in r.stdout, r.stderr


def test_maps_i386(maps32, tmp_path):
    exe, run, core = maps32
    assert run.truth["pointer_size"] == 4
    doc = _maps_json(tmp_path, "o.json", lambda out: run_cli("--core", core, "--exe", exe, "maps", "--json", out))
    assert doc["target"]["pointer_size"] == 4 and doc["target"]["arch"] == "i386"
    check_fixture_layout(doc, run.truth)
    g = _maps_json(tmp_path, "g.json", lambda out: run_gdb("memleak maps --json " + out, exe=exe, core=core))
    assert g["mappings"] == doc["mappings"]
    live = _maps_json(tmp_path, "l.json", lambda out: run_gdb("memleak maps --json " + out, pid=run.pid))
    check_fixture_layout(live, run.truth)


def test_maps_under_vgdb(workdir, tmp_path):
    """The remote target: valgrind's gdbserver through vgdb; layout from the real PID's smaps."""
    import shutil
    import subprocess
    import time
    if not shutil.which("valgrind"):
        pytest.skip("valgrind not installed")
    exe = build(workdir, "maps_fixture.c", "maps_fixture64")
    vg = subprocess.Popen(["valgrind", "--vgdb=yes", "--vgdb-error=0", exe],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)
        out = str(tmp_path / "vg.json")
        r = run_gdb("target remote | vgdb --pid=%d" % vg.pid, "source " + os.path.join(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gdbinit.example"),
            "memleak maps --json " + out, exe=exe, source=False, timeout=120)
        assert r.returncode == 0, r.stderr
        doc = load_json(out)
        assert doc["target"]["kind"] == "remote" and doc["target"]["pid"] == vg.pid
        kinds = {m["kind"] for m in doc["mappings"]}
        assert {"stack", "file"} <= kinds
        assert all(m["rss"] is not None for m in doc["mappings"])
    finally:
        vg.kill()
        vg.wait()


def test_core_read_across_file_mappings(maps64):
    """A read that starts in a file mapping the core has no data for and runs on into the next
    mapping is assembled piecewise (gcore leaves out a file mapping whose private pages are all
    swapped out: a root range of a module can start there and end in the core)."""
    from gdb_memleak.core.memory.elfcore import CoreTarget
    exe, _run, core = maps64
    t = CoreTarget(core, exe)
    files = sorted(t.core.files, key=lambda f: f.start)
    pairs = [(a, b) for a, b in zip(files, files[1:]) if a.end == b.start and a.path == b.path
             and t.core.file_offset(a.end - 16, 16) is None]
    assert pairs, "no two adjacent mappings of one file with the first not in the core"
    a, b = pairs[0]
    got = bytes(t.read(a.end - 16, 32))
    assert got == bytes(t.read(a.end - 16, 16)) + bytes(t.read(b.start, 16))
