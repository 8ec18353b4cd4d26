"""The offline front door follows the ecosystem's conventions: --help and COMMAND --help need no
core, --version, global options anywhere on the line, errors point at --help, and the
gdb-memleak console script."""
import os
import shutil
import subprocess

import pytest

from conftest import PY, ROOT, run_cli


def test_help_and_version_need_no_core():
    r = run_cli("--help")
    assert r.returncode == 0 and "COMMAND" in r.stdout and "leaks" in r.stdout
    for cmd in ("leaks", "heap", "vtable-census", "strings", "snapshot", "diff", "maps"):
        r = run_cli(cmd, "--help")
        assert r.returncode == 0 and r.stdout.startswith("usage: python -m gdb_memleak %s" % cmd), (cmd, r.stderr)
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("gdb_memleak ")


def test_global_options_anywhere(maps64, tmp_path):
    exe, run, core = maps64
    a, b = str(tmp_path / "a.json"), str(tmp_path / "b.json")
    assert run_cli("--core", core, "--exe", exe, "maps", "--json", a).returncode == 0
    r = run_cli("maps", "--json", b, "--core", core, "--exe=" + exe, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert open(a).read().split('"mappings"')[1] == open(b).read().split('"mappings"')[1]


def test_errors_point_at_help():
    r = run_cli("leaks")
    assert r.returncode == 2 and "--help" in r.stderr and "help python" not in r.stderr
    r = run_cli("heap", "--core", "x", "--bogus")
    assert r.returncode == 2 and "'python -m gdb_memleak heap --help'" in r.stderr


def test_console_script():
    exe = os.path.join(os.path.dirname(PY), "gdb-memleak")
    if not os.path.exists(exe):
        pytest.skip("the venv has no gdb-memleak script (make install)")
    r = subprocess.run([exe, "--version"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.startswith("gdb_memleak ")
