"""Heap-model cases found on real programs, each with a fixture that reproduces it."""
import os

import pytest

from conftest import Running, build, load_json, run_cli, run_gdb


@pytest.fixture(scope="module")
def tls_run(workdir):
    exe = build(workdir, "tls_fixture.c", "tls_fixture")
    run = Running([exe])
    core = run.gcore(os.path.join(str(workdir), "tls.core"))
    yield exe, run, core
    run.kill()


def _tls_checks(maps_doc, threads_doc, leaks_doc, truth):
    tls = [m for m in maps_doc["mappings"] if m["start"] == truth["tls_mapping"]]
    assert tls and tls[0]["kind"] == "tls", tls
    assert threads_doc["orphan_stacks"] == []
    assert leaks_doc["leaked"]["chunks"] == 0
    assert any(r["start"] == truth["tls_mapping"] for r in leaks_doc["roots"])


def test_static_tls_mapping_is_not_an_orphan_stack(tls_run, tmp_path):
    """A live thread's static TLS block in a mapping of its own above a PROT_NONE page: not an
    orphan stack, and a root (the main thread's tcache pointer is there)."""
    exe, run, core = tls_run
    assert run.truth["guard"]
    docs = {}
    for cmd in ("maps", "threads", "leaks"):
        out = str(tmp_path / (cmd + ".json"))
        r = run_cli("--core", core, "--exe", exe, cmd, "--json", out)
        assert r.returncode == 0, r.stderr
        docs[cmd] = load_json(out)
    _tls_checks(docs["maps"], docs["threads"], docs["leaks"], run.truth)
    for how in ("core", "live"):
        outs = {c: str(tmp_path / ("%s-%s.json" % (how, c))) for c in ("maps", "threads", "leaks")}
        cmds = ["memleak %s --json %s" % (c, p) for c, p in outs.items()]
        r = run_gdb(*cmds, exe=exe, core=core) if how == "core" else run_gdb(*cmds, pid=run.pid)
        assert r.returncode == 0, r.stderr
        _tls_checks(*(load_json(outs[c]) for c in ("maps", "threads", "leaks")), run.truth)


def test_whatis_last_usable_word_belongs_to_the_chunk(workdir, tmp_path):
    """The next chunk's prev_size word is the last usable word of an in-use chunk: whatis names
    that chunk, not a header (the stress fixture keeps objects referenced only through it)."""
    import stress
    exe, core, truth = stress.stress_core(workdir, ["multiheap"], "64")
    for user in truth["marks"]["live_lastword_target"][:3]:
        out1, out2 = str(tmp_path / "a.json"), str(tmp_path / "b.json")
        r = run_cli("--core", core, "--exe", exe, "whatis", user, "--json", out1)
        assert r.returncode == 0, r.stderr
        c = load_json(out1)["results"][0]["chunk"] if "results" in load_json(out1) else load_json(out1)["chunk"]
        last = int(c["start"], 16) + c["size"]
        r = run_cli("--core", core, "--exe", exe, "whatis", hex(last), "--json", out2)
        assert r.returncode == 0, r.stderr
        d = load_json(out2)
        c2 = d["results"][0]["chunk"] if "results" in d else d["chunk"]
        assert c2["start"] == c["start"] and c2["state"] == "in use", (c, c2)
        assert c2["offset"] == c["size"] - 16
