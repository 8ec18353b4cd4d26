"""memleak dump: files 0600, manifest, bytes equal what gdb reads, bounds and overwrite refusals."""
import hashlib
import os
import stat

from conftest import load_json, run_cli, run_gdb


def test_dump_default_regions_match_gdb(maps64, tmp_path):
    exe, run, core = maps64
    out = tmp_path / "d"
    heap = int(run.truth["heap_block"], 16)
    ref = tmp_path / "ref.bin"
    r = run_gdb("memleak dump -o %s" % out,
                "dump binary memory %s %d %d" % (ref, heap, heap + 4096), exe=exe, core=core)
    assert r.returncode == 0, r.stderr
    man = load_json(out / "manifest.json")
    kinds = {e["kind"] for e in man["regions"]}
    assert kinds == {"main-heap", "arena-heap", "anon"}
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o700
    for e in man["regions"]:
        p = out / e["file"]
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
        data = p.read_bytes()
        assert len(data) == e["size"] == int(e["end"], 16) - int(e["start"], 16)
        assert hashlib.sha256(data).hexdigest() == e["sha256"]
        if int(e["start"], 16) <= heap < int(e["end"], 16):
            off = heap - int(e["start"], 16)
            assert data[off:off + 4096] == ref.read_bytes()
            assert data[off:off + 15] == b"main-heap-block"
    assert stat.S_IMODE(os.stat(out / "manifest.json").st_mode) == 0o600
    # reserved (PROT_NONE) arena tails are not dumped by default
    assert all(e["size"] < 64 << 20 for e in man["regions"])


def test_dump_range_expression_live(maps64, tmp_path):
    exe, run, core = maps64
    out = tmp_path / "live"
    anon = int(run.truth["anon"], 16)
    r = run_gdb("memleak dump -o %s 0x%x '0x%x + 8192'" % (out, anon, anon), pid=run.pid)
    assert r.returncode == 0, r.stderr
    man = load_json(out / "manifest.json")
    (e,) = man["regions"]
    assert e["kind"] == "anon" and e["size"] == 8192
    assert (out / e["file"]).read_bytes() == b"\x5a" * 8192


def test_dump_offline_equals_gdb(maps64, tmp_path):
    exe, run, core = maps64
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_gdb("memleak dump -o %s --kind heap" % a, exe=exe, core=core).returncode == 0
    r = run_cli("--core", core, "--exe", exe, "dump", "-o", str(b), "--kind", "heap")
    assert r.returncode == 0, r.stderr
    ma, mb = load_json(a / "manifest.json"), load_json(b / "manifest.json")
    assert [e["sha256"] for e in ma["regions"]] == [e["sha256"] for e in mb["regions"]]


def test_dump_refuses_over_bound_and_overwrite(maps64, tmp_path):
    exe, run, core = maps64
    out = tmp_path / "bound"
    r = run_gdb("set memleak max-dump-size 64K", "memleak dump -o %s" % out, exe=exe, core=core)
    assert r.returncode != 0
    assert "max-dump-size" in r.stderr and "Traceback" not in r.stderr
    assert not (out / "manifest.json").exists()
    r = run_cli("--core", core, "--max-dump-size", "64K", "dump", "-o", str(out))
    assert r.returncode == 1 and "--force" in r.stderr
    assert run_cli("--core", core, "dump", "-o", str(out), "--kind", "heap").returncode == 0
    r = run_cli("--core", core, "dump", "-o", str(out), "--kind", "heap")
    assert r.returncode == 1 and "exists" in r.stderr
    assert run_cli("--core", core, "dump", "-o", str(out), "--kind", "heap", "--force").returncode == 0


def test_dump_never_follows_symlinks(maps64, tmp_path):
    exe, run, core = maps64
    out = tmp_path / "s"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (out / "manifest.json").symlink_to(victim)
    r = run_cli("--core", core, "dump", "-o", str(out), "--kind", "heap")
    assert r.returncode == 1 and "exists" in r.stderr          # never overwritten without --force
    r = run_cli("--core", core, "dump", "-o", str(out), "--kind", "heap", "--force")
    assert r.returncode == 0, r.stderr
    assert victim.read_text() == "keep"                          # the link was replaced, not followed
    assert not (out / "manifest.json").is_symlink()
    # a region file planted as a symlink is refused even with --force (O_NOFOLLOW)
    name = [p.name for p in out.iterdir() if p.name.endswith(".bin")][0]
    (out / name).unlink()
    (out / name).symlink_to(victim)
    r = run_cli("--core", core, "dump", "-o", str(out), "--kind", "heap", "--force")
    assert r.returncode == 1 and "symbolic link" in r.stderr
    assert victim.read_text() == "keep"


def test_dump_skips_unreadable_and_records_it(maps64, tmp_path):
    """A kernel-style hole: a range that runs past readable memory is recorded, not fatal."""
    exe, run, core = maps64
    out = tmp_path / "u"
    doc_r = run_cli("--core", core, "maps", "--kind", "file", "--json", str(tmp_path / "f.json"))
    assert doc_r.returncode == 0
    text = [m for m in load_json(tmp_path / "f.json")["mappings"] if m["perms"] == "???p"]
    assert text, "gcore leaves text out of the core"
    m = text[0]
    # offline without the library file available the text is unreadable: use a sysroot that lacks it
    empty = tmp_path / "sysroot"
    empty.mkdir()
    r = run_cli("--core", core, "--sysroot", str(empty), "dump", "-o", str(out), m["start"], m["end"])
    assert r.returncode == 0, r.stderr
    man = load_json(out / "manifest.json")
    (e,) = man["regions"]
    assert e["skipped"] and e["skipped"][0]["start"] == m["start"] and e["skipped"][-1]["end"] == m["end"]
    assert "unreadable" in r.stdout
