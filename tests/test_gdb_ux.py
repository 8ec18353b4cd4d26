"""Feels like gdb: prefix commands list their subcommands, 'show memleak' lists the settings,
options/--kind/--sort/file names complete, whatis follows x's rule and takes several addresses,
function names come from gdb's symbols."""
import os

import pytest

from conftest import Running, build, load_json, run_gdb


@pytest.fixture(scope="module")
def tls_run(workdir):
    exe = build(workdir, "tls_fixture.c", "tls_fixture")
    run = Running([exe])
    yield exe, run
    run.kill()


def test_prefixes_and_show():
    r = run_gdb("memleak", "memleak vgdb", "show memleak")
    assert r.returncode == 0, r.stderr
    assert "memleak leaks" in r.stdout and "memleak vgdb leak-check" in r.stdout
    for s in ("memleak debug is", "memleak progress is", "memleak max-dump-size is"):
        assert s in r.stdout


def test_completion(tmp_path):
    f = tmp_path / "out-file.json"
    f.write_text("{}")
    r = run_gdb("complete memleak maps --so", "complete memleak maps --kind thr", "complete memleak maps --kind main-heap,ar",
                "complete memleak leaks --js", "complete memleak leaks --json %s" % str(tmp_path / "out-"),
                "complete memleak ")
    lines = r.stdout.splitlines()
    for want in ("memleak maps --sort", "memleak maps --kind thread-stack", "memleak maps --kind main-heap,arena-heap",
                 "memleak leaks --json", "memleak leaks --json %s" % f, "memleak heap", "memleak vtable-census"):
        assert want in lines, (want, r.stdout)
    assert not any("sockaddr" in l for l in lines)


def test_help_is_gdb_style():
    r = run_gdb("help memleak leaks")
    text = r.stdout
    assert text.splitlines()[1].startswith("Usage: memleak leaks")
    assert "-h, --help" not in text and text.count("Find heap chunks nothing reaches") == 1


def test_whatis_follows_x(tls_run, tmp_path):
    exe, run = tls_run
    out = str(tmp_path / "w.json")
    # an array is its address; an element (a pointer) is its value; several in one call; $pc
    r = run_gdb("memleak whatis keep keep[60] $pc --json %s" % out, pid=run.pid)
    assert r.returncode == 0, r.stderr
    res = load_json(out)["results"]
    assert len(res) == 3
    assert "keep" in (res[0].get("symbol") or {}).get("symbol", "")
    assert res[1]["chunk"]["state"] == "in use" and res[1]["chunk"]["offset"] == 0
    assert (res[2].get("symbol") or {}).get("symbol")          # gdb names the function
    r = run_gdb("memleak whatis '$sp + 8'", pid=run.pid)
    assert r.returncode == 0, r.stderr
    # the main thread's struct pthread is not on its stack: an address above SP is a frame
    assert "stack of thread 1 " in r.stdout and "struct pthread" not in r.stdout, r.stdout
