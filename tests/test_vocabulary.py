"""One vocabulary (docs/ARCHITECTURE.md, "Vocabulary" and "JSON keys").

Every analysis command is run with --json on the report fixture's core (threads, arenas,
classes, direct and indirect leaks, a leaked mmapped chunk, orphan stacks):
- every JSON key any command writes is one the glossary documents, in snake_case;
- sizes and byte counts in JSON are integers (bytes), never strings;
- the mapping kinds and orphan reasons are the documented ones;
- the tables say sizes in human units, and nothing says "1 threads", "(no vptr)", "stale" or
  "a app::Request".
"""
import json
import os
import re

import pytest

from conftest import ROOT, run_cli

from gdb_memleak.core.commands import registry
from gdb_memleak.core.maps import KINDS
from gdb_memleak.core.vocabulary import NO_CLASS, ORPHAN_REASONS

SCHEMA_KEY = re.compile(r"^[a-z][a-z0-9_]*$")
# dicts keyed by data, not by schema: captured strings, regexes, kinds, sizes, class names
DATA_MAPS = {"histogram", "strings", "totals"}
PLURAL_NOUNS = ("threads", "mappings", "chunks", "classes", "objects", "blocks", "stacks", "arenas", "heaps",
                "references", "matches", "leaks", "regions", "instances", "records", "tcaches")
SYNONYMS = ["(no vptr)", "no thread", "stale", "exited_unjoined", "stacks no live thread owns", " a app::",
            "process stopped for"]


def glossary_keys():
    text = open(os.path.join(ROOT, "docs", "ARCHITECTURE.md")).read()
    m = re.search(r"^### JSON keys\n(.*?)(?=^#)", text, re.S | re.M)
    assert m, "docs/ARCHITECTURE.md has a '### JSON keys' section"
    return set(re.findall(r"`([a-z][a-z0-9_]*)`", m.group(1)))


@pytest.fixture(scope="module")
def outputs(report_core, tmp_path_factory):
    d = tmp_path_factory.mktemp("vocabulary")
    exe, core, _truth, _ = report_core
    base = ("--core", core, "--exe", exe)
    # the arguments each command needs besides --json (a chunk for whatis: the first leaked one)
    runs = {
        "maps": [], "heap": [], "leaks": [], "threads": [], "vtable-census": ["--heap"],
        "strings": ["--heap", "--histogram", "(app)::", "--pattern", "[a-z]{4,}"],
        "report": [], "dump": ["-o", str(d / "dump")],
    }
    out = {}
    for name, args in runs.items():
        js = str(d / ("%s.json" % name))
        r = run_cli(*base, name, *args, "--json", js)
        assert r.returncode == 0, (name, r.stderr)
        out[name] = (json.load(open(js)), r.stdout + r.stderr)
    leak = out["leaks"][0]["examples"][0]["address"]
    js = str(d / "whatis.json")
    r = run_cli(*base, "whatis", leak, "--json", js)
    assert r.returncode == 0, r.stderr
    out["whatis"] = (json.load(open(js)), r.stdout)
    snap = str(d / "snap.json")
    r = run_cli(*base, "snapshot", snap)
    assert r.returncode == 0, r.stderr
    out["snapshot"] = (json.load(open(snap)), r.stdout)
    js = str(d / "diff.json")
    r = run_cli("diff", snap, snap, "--json", js)
    assert r.returncode == 0, r.stderr
    out["diff"] = (json.load(open(js)), r.stdout)
    return out


def walk(o, path=()):
    """(path, key, value) of every schema key."""
    if isinstance(o, dict):
        for k, v in o.items():
            if path and path[-1] in DATA_MAPS:
                yield from walk(v, path + ("*",))
                continue
            yield path, k, v
            yield from walk(v, path + (k,))
    elif isinstance(o, list):
        for v in o:
            yield from walk(v, path)


def test_every_analysis_command_is_covered(outputs):
    with_json = {c.name for c in registry() if c.name.split()[0] != "vgdb" and
                 any("--json" in a.option_strings for a in c.build_parser("x")._actions)}
    assert with_json - set(outputs) == set(), "add the command to the vocabulary run"


def test_json_keys_are_the_glossary(outputs):
    documented = glossary_keys()
    unknown = {}
    for name, (doc, _) in outputs.items():
        for path, k, _ in walk(doc):
            if k in KINDS and path and path[-1] in ("totals",):
                continue
            if not SCHEMA_KEY.match(k):
                unknown.setdefault("%s (not snake_case)" % k, set()).add(name)
            elif k not in documented:
                unknown.setdefault(k, set()).add(name)
    assert not unknown, "keys missing from docs/ARCHITECTURE.md '### JSON keys': %s" % sorted(
        "%s (%s)" % (k, ", ".join(sorted(v))) for k, v in unknown.items())


def test_sizes_in_json_are_bytes(outputs):
    for name, (doc, _) in outputs.items():
        for path, k, v in walk(doc):
            if k in ("size", "bytes") or k.endswith(("_bytes", "_size", "_mem")) and not k.startswith(("by_", "first_")):
                ok = v is None or isinstance(v, int) and not isinstance(v, bool) or \
                    isinstance(v, list) and all(isinstance(x, int) for x in v)
                assert ok, (name, path, k, v)


def test_kinds_and_reasons_are_the_documented_ones(outputs):
    maps = outputs["maps"][0]["mappings"]
    assert {m["kind"] for m in maps} <= set(KINDS)
    assert {"main-heap", "arena-heap", "thread-stack"} <= {m["kind"] for m in maps}
    orphans = outputs["threads"][0]["orphan_stacks"]
    assert orphans and {o["reason"] for o in orphans} <= set(ORPHAN_REASONS)
    for name, (doc, _) in outputs.items():
        for path, k, v in walk(doc):
            if k == "class" and isinstance(v, str):
                assert v != "-" and "vptr" not in v, (name, path, v)


def test_text_says_one_word_per_thing(outputs):
    for name, (_, text) in outputs.items():
        for bad in SYNONYMS:
            assert bad not in text, (name, bad)
        m = re.search(r"(?<![\d.,+-])1 (%s)\b" % "|".join(PLURAL_NOUNS), text)
        assert m is None, (name, text[max(0, m.start() - 80):m.end() + 20])
        assert "(no class)" == NO_CLASS


def test_tables_give_sizes_in_human_units(outputs):
    """A size or bytes column never holds a bare byte count."""
    for name, (_, text) in outputs.items():
        lines = text.splitlines()
        for i, line in enumerate(lines[1:], 1):
            if not re.match(r"^-+( +-+)+$", line):
                continue
            header = lines[i - 1]
            cols = [(m.start(), m.end()) for m in re.finditer(r"-+", line)]
            names = [header[a:b + 2].strip() for a, b in cols]
            sized = [j for j, n in enumerate(names) if n in ("size", "bytes", "total", "chunk size", "in-use bytes",
                                                               "free bytes", "top")]
            for row in lines[i + 1:]:
                if not row.strip() or row.startswith(("-", " ")) and not row.strip()[0].isalnum():
                    break
                for j in sized:
                    a = cols[j][0]
                    b = cols[j + 1][0] if j + 1 < len(cols) else len(row)
                    cell = row[a:b].strip()
                    assert not re.fullmatch(r"[+-]?\d+", cell), (name, names[j], row)
