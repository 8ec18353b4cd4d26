"""Bad ranges, paths and writes end in one clear line (or a result that reads only mapped memory),
never a hang, a traceback, a file left half written, or a file anyone else can read."""
import os
import resource
import signal
import stat
import subprocess
import time

import pytest

from conftest import PY, ROOT, Running, build, load_json, run_cli, run_gdb

BOUND = 60      # seconds: a hang fails the test, a slow run does not


def one_error(r):
    lines = [l for l in r.stderr.splitlines() if l.strip() and not l.startswith("warning:")]
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    return lines


@pytest.fixture(scope="module")
def cxx(workdir):
    exe = build(workdir, "leaks.cpp", "leaks-badinput")
    run = Running([exe])
    core = run.gcore(os.path.join(str(workdir), "leaks-badinput.core"))
    run.kill()
    return exe, run, core


@pytest.mark.parametrize("rng", [("0x1000", "0x7ffffffff000"), ("0", "0xffffffffffffffff")])
def test_census_over_huge_ranges_reads_only_mapped_memory(cxx, rng, tmp_path):
    exe, run, core = cxx
    out = str(tmp_path / "c.json")
    t = time.monotonic()
    r = run_cli("--core", core, "--exe", exe, "--no-progress", "vtable-census", *rng, "--json", out, timeout=BOUND)
    assert r.returncode == 0, r.stderr
    doc = load_json(out)
    maps = load_json(_maps_json(core, exe, tmp_path))["mappings"]
    mapped = sum(int(m["end"], 16) - int(m["start"], 16) for m in maps
                 if int(m["start"], 16) >= int(rng[0], 16))
    assert doc["scanned_bytes"] <= mapped
    assert time.monotonic() - t < BOUND


def _maps_json(core, exe, tmp_path):
    p = str(tmp_path / "maps.json")
    assert run_cli("--core", core, "--exe", exe, "maps", "--json", p).returncode == 0
    return p


@pytest.mark.parametrize("args,code,words", [
    (("-1", "0x1000"), 2, "not an address"),
    (("0x1000", "0x10000000000000001"), 2, "not an address"),
    (("0x10", "0x20"), 1, "not mapped"),
    (("0x2000", "0x1000"), 2, "reversed"),
])
def test_bad_ranges_are_one_line(cxx, args, code, words):
    exe, run, core = cxx
    for cmd in ("vtable-census", "dump"):
        r = run_cli("--core", core, "--exe", exe, cmd, *args, timeout=BOUND)
        lines = one_error(r)
        assert r.returncode == code and len(lines) == 1 and words in lines[0], (cmd, r.returncode, r.stderr)


def test_dump_of_a_huge_range_writes_only_mapped_pieces(maps64, tmp_path):
    exe, run, core = maps64
    out = tmp_path / "d"
    r = run_cli("--core", core, "--exe", exe, "--no-progress", "dump", "0x1000", "0x7ffffffff000", "--force",
                "-o", str(out), timeout=BOUND)
    assert r.returncode == 0, r.stderr
    man = load_json(out / "manifest.json")
    maps = load_json(_maps_json(core, exe, tmp_path))["mappings"]
    starts = {m["start"] for m in maps}
    for e in man["regions"]:
        assert e["start"] in starts or e["start"] == "0x1000"
        assert os.path.getsize(out / e["file"]) == e["size"]
    for p in out.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600


def test_json_and_addresses_files_are_0600(maps64, tmp_path):
    exe, run, core = maps64
    for cmd, extra in (("maps", ()), ("heap", ()), ("leaks", ("--addresses", str(tmp_path / "a.txt")))):
        out = tmp_path / (cmd + ".json")
        r = run_cli("--core", core, "--exe", exe, cmd, *extra, "--json", str(out))
        assert r.returncode == 0, r.stderr
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o600
    # in gdb too
    out = tmp_path / "g.json"
    r = run_gdb("memleak maps --json %s" % out, exe=exe, core=core)
    assert r.returncode == 0 and stat.S_IMODE(out.stat().st_mode) == 0o600


def test_symlinked_parent_folder_is_refused(maps64, tmp_path):
    exe, run, core = maps64
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    r = run_cli("--core", core, "--exe", exe, "dump", "--kind", "heap", "-o", str(tmp_path / "link" / "sub"))
    lines = one_error(r)
    assert r.returncode == 1 and len(lines) == 1 and "symbolic link" in lines[0], r.stderr
    assert list(real.iterdir()) == []
    r = run_cli("--core", core, "--exe", exe, "maps", "--json", str(tmp_path / "link" / "m.json"))
    assert r.returncode == 1 and "symbolic link" in r.stderr
    assert list(real.iterdir()) == []


def test_write_failure_removes_what_it_wrote(maps64, tmp_path):
    """A file size limit (EFBIG, as on a full disk): one line saying how much was written, no
    file left behind, no manifest."""
    exe, run, core = maps64
    out = tmp_path / "f"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))
    r = subprocess.run([PY, "-m", "gdb_memleak", "--core", core, "--exe", exe, "--no-progress", "dump", "--kind",
                        "heap,anon", "-o", str(out)], capture_output=True, text=True, timeout=BOUND, cwd=ROOT,
                       preexec_fn=limit)
    lines = one_error(r)
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "bytes were written" in lines[0] and "removed" in lines[0], lines
    assert list(out.iterdir()) == []
    r = subprocess.run([PY, "-m", "gdb_memleak", "--core", core, "--exe", exe, "maps", "--json",
                        str(tmp_path / "m.json")], capture_output=True, text=True, timeout=BOUND, cwd=ROOT,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100)))
    assert r.returncode == 1 and len(one_error(r)) == 1, r.stderr
    assert not [p for p in tmp_path.iterdir() if "m.json" in p.name]


@pytest.fixture(scope="module")
def big(workdir):
    exe = os.path.join(str(workdir), "bigheap")
    if not os.path.exists(exe):
        subprocess.run(["g++", "-O1", "-pthread", os.path.join(ROOT, "tests", "fixtures", "bigheap.cpp"), "-o", exe],
                       check=True)
    run = Running([exe, "384"])
    core = run.gcore(os.path.join(str(workdir), "big.core"))
    run.kill()
    yield exe, core
    os.unlink(core)


def test_ctrl_c_during_dump_leaves_no_file(big, tmp_path):
    exe, core = big
    out = tmp_path / "i"
    p = subprocess.Popen([PY, "-m", "gdb_memleak", "--core", core, "--exe", exe, "dump", "--force", "--kind", "heap,anon",
                          "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.time() + BOUND
    while time.time() < deadline and not (out.exists() and any(out.iterdir())):
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    _out, err = p.communicate(timeout=BOUND)
    if p.returncode == 0:
        pytest.skip("the dump finished before the interrupt")
    assert p.returncode == 130 and "Traceback" not in err, err
    assert list(out.iterdir()) == []
