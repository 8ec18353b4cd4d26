"""memleak strings against the fixture's own truth: exact histogram (matches straddling the scan's
chunk borders counted once), stale bytes of free chunks excluded with --in-use, repeated
ASCII and UTF-16LE strings; offline, in gdb on the core and live."""
import os
import re

import pytest

from conftest import Running, build, load_json, run_cli, run_gdb
from gdb_memleak.core import strings as S
from gdb_memleak.core.memory.target import FakeTarget, Region

HIST = "channelid=([0-9]+);"


@pytest.fixture(scope="module")
def sfix(workdir):
    exe = build(workdir, "strings_fixture.c", "strings_fixture")
    run = Running([exe])
    core = run.gcore(os.path.join(str(workdir), "strings.core"))
    yield exe, run, core
    run.kill()


def _check(doc, truth, in_use):
    want = dict(truth["counts"])
    if not in_use:
        want["777"] = truth["stale_777"]
    assert doc["histogram"] == want
    assert doc["matches"] == sum(want.values())


def test_strings_offline_gdb_live(sfix, tmp_path):
    exe, run, core = sfix
    for in_use in (False, True):
        extra = ["--in-use"] if in_use else []
        out = str(tmp_path / "o.json")
        r = run_cli("--core", core, "--exe", exe, "strings", "--heap", *extra, "--histogram", HIST, "--json", out)
        assert r.returncode == 0, r.stderr
        _check(load_json(out), run.truth, in_use)
        for how in ("core", "live"):
            out = str(tmp_path / ("%s.json" % how))
            cmd = "memleak strings --heap %s --histogram '%s' --json %s" % (" ".join(extra), HIST, out)
            r = run_gdb(cmd, exe=exe, core=core) if how == "core" else run_gdb(cmd, pid=run.pid)
            assert r.returncode == 0, r.stderr
            _check(load_json(out), run.truth, in_use)


def test_repeated_strings(sfix, tmp_path):
    exe, run, core = sfix
    out = str(tmp_path / "t.json")
    r = run_cli("--core", core, "--exe", exe, "strings", "--heap", "--in-use", "--top", "200", "--json", out)
    assert r.returncode == 0, r.stderr
    top = {(t["text"], t["encoding"]): t for t in load_json(out)["top"]}
    a = top[(run.truth["ascii"], "ascii")]
    assert a["count"] == run.truth["ascii_copies"] and a["bytes"] == (a["count"] - 1) * len(run.truth["ascii"])
    u = top[(run.truth["utf16"], "utf-16le")]
    assert u["count"] == run.truth["utf16_copies"] and u["bytes"] == (u["count"] - 1) * 2 * len(run.truth["utf16"])


def test_bad_regex_is_a_usage_error(sfix):
    exe, run, core = sfix
    r = run_cli("--core", core, "--exe", exe, "strings", "--heap", "--histogram", "no group")
    assert r.returncode == 2 and "one (group)" in r.stderr
    r = run_cli("--core", core, "--exe", exe, "strings", "--heap", "--pattern", "(")
    assert r.returncode == 2 and "bad --pattern regex" in r.stderr


@pytest.mark.parametrize("shift", range(-16, 17, 4))
def test_match_across_a_chunk_border_counts_once(shift):
    """A match placed across the scan's chunk border, at every offset: counted exactly once,
    with its whole value; so is a printable run across it."""
    base = 0x100000
    size = 2 * S.CHUNK + 4096
    data = bytearray(size)
    rec = b"channelid=987654;"
    at = S.CHUNK + shift - len(rec) // 2
    data[at:at + len(rec)] = rec
    data[100:100 + len(rec)] = rec
    run = b"abcdefghij0123456789"
    data[2 * S.CHUNK - 7:2 * S.CHUNK - 7 + len(run)] = run
    data[5000:5000 + len(run)] = run
    t = FakeTarget({base: bytes(data)}, [Region(base, base + size)])
    res = S.scan_strings(t, [(base, base + size)], None, re.compile(rb"channelid=([0-9]+);"), 8, True)
    assert res.histogram == {b"987654": 2} and res.matches == 2
    assert res.ascii[run] == 2
