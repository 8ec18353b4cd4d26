"""User errors end in one clear line and a non-zero exit: never a traceback, never a silent 0."""
import os
import shutil

from conftest import build, run_cli, run_gdb


def one_line_error(stderr):
    lines = [l for l in stderr.strip().splitlines() if l.strip() and not l.startswith("warning:")]
    assert "Traceback" not in stderr, stderr
    assert len(lines) >= 1
    return lines[-1]


def test_reversed_range(maps64):
    exe, run, core = maps64
    r = run_gdb("memleak dump 0x2000 0x1000", exe=exe, core=core)
    assert r.returncode != 0
    assert "reversed" in one_line_error(r.stderr)
    r = run_cli("--core", core, "dump", "0x2000", "0x1000")
    assert r.returncode == 2 and "reversed" in one_line_error(r.stderr)


def test_unmapped_range(maps64, tmp_path):
    exe, run, core = maps64
    r = run_gdb("memleak dump -o %s 0x10 0x20" % (tmp_path / "x"), exe=exe, core=core)
    assert r.returncode != 0 and "not mapped" in one_line_error(r.stderr)
    r = run_cli("--core", core, "dump", "-o", str(tmp_path / "y"), "0x10", "0x20")
    assert r.returncode == 1 and "not mapped" in one_line_error(r.stderr)


def test_bad_expression_and_option(maps64):
    exe, run, core = maps64
    r = run_gdb("memleak dump no_such_symbol 0x20", exe=exe, core=core)
    assert r.returncode != 0 and "no_such_symbol" in one_line_error(r.stderr)
    r = run_gdb("memleak maps --kind bogus", exe=exe, core=core)
    assert r.returncode != 0 and "unknown kind" in one_line_error(r.stderr)
    r = run_gdb("memleak maps --frobnicate", exe=exe, core=core)
    assert r.returncode != 0 and "unrecognized" in one_line_error(r.stderr)
    r = run_cli("--core", core, "dump", "zz", "0x20")
    assert r.returncode == 2 and "not an address" in one_line_error(r.stderr)


def test_no_process():
    r = run_gdb("memleak maps")
    assert r.returncode != 0 and "no process or core" in one_line_error(r.stderr)


def test_missing_core():
    r = run_cli("--core", "/nonexistent/core.1", "maps")
    assert r.returncode == 1 and "cannot open core file" in one_line_error(r.stderr)
    r = run_cli("maps")
    assert r.returncode == 2 and "--core" in one_line_error(r.stderr)


def test_not_a_core(maps64):
    exe, run, core = maps64
    r = run_cli("--core", exe, "maps")
    assert r.returncode == 1 and "not a core file" in one_line_error(r.stderr)


def test_truncated_core(maps64, tmp_path):
    exe, run, core = maps64
    cut = tmp_path / "cut.core"
    with open(core, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(os.path.getsize(core) // 2))
    r = run_cli("--core", str(cut), "maps")
    assert r.returncode == 1 and "truncated" in one_line_error(r.stderr)
    r = run_cli("--core", str(cut), "--allow-truncated", "maps")
    assert r.returncode == 0, r.stderr


def test_wrong_executable(workdir, maps64):
    exe, run, core = maps64
    other = build(workdir, "maps_fixture.c", "maps_fixture_other", ("-DOTHER_BUILD=1", "-O1"))
    r = run_cli("--core", core, "--exe", other, "maps")
    assert r.returncode == 1
    line = one_line_error(r.stderr)
    assert "build-id mismatch" in line and os.path.basename(other) in line
    r = run_cli("--core", core, "--exe", exe, "maps")
    assert r.returncode == 0, r.stderr


def test_help_and_exit_status(maps64):
    exe, run, core = maps64
    r = run_gdb("help memleak", "help memleak dump")
    assert r.returncode == 0
    assert "memleak maps --" in r.stdout and "memleak dump --" in r.stdout
    assert "Usage: memleak dump" in r.stdout
    r = run_gdb("memleak maps -h", exe=exe, core=core)
    assert r.returncode == 0 and "--kind" in r.stdout
    r = run_cli("--help")
    assert r.returncode == 0 and "maps" in r.stdout


def test_internal_errors_keep_traceback_behind_debug(maps64):
    exe, run, core = maps64
    r = run_gdb("set memleak debug on", "show memleak debug", exe=exe, core=core)
    assert r.returncode == 0 and "memleak debug is on" in r.stdout
