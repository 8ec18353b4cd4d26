"""Fuzzing the parsers of untrusted input with hypothesis: a real (small) gcore mutated at its
header, program-header and note fields (and truncated), fed to CoreFile/CoreTarget; the pure
text parsers (/proc smaps, gdb's `info proc mappings`, `info auxv`, `info target`, sizes) and the
valgrind monitor parsers fed mutations of real outputs.  Only MemleakError subclasses may come
out (hypothesis fails the test on any other exception), every answer must be sane (mappings with
start < end inside the address space, no overlaps), and every example must finish within
EXAMPLE_LIMIT seconds.  Deterministic (derandomize) and bounded (~100-200 examples each).
"""
from __future__ import annotations

import glob
import os
import re
import signal
import subprocess
import time
from contextlib import contextmanager

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import ROOT, Running  # noqa: E402
from test_badcore import Layout  # noqa: E402

from gdb_memleak.core.memory.elfcore import CoreFile, CoreTarget  # noqa: E402
from gdb_memleak.core.errors import MemleakError  # noqa: E402
from gdb_memleak.core import textparse, vgdb  # noqa: E402

EXAMPLE_LIMIT = 10
# GDB_MEMLEAK_FUZZ=N multiplies the example counts for a deeper local run (CI keeps 1)
SCALE = max(1, int(os.environ.get("GDB_MEMLEAK_FUZZ", "1") or 1))
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


class Hung(Exception):
    pass


@contextmanager
def time_bound(seconds=EXAMPLE_LIMIT):
    """Fail (not hang) when one example takes longer than ``seconds``."""
    def on_alarm(signum, frame):
        raise Hung("no answer within %d s" % seconds)
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    t0 = time.monotonic()
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - t0 < seconds


# -- a small real process: its gcore and gdb's / the kernel's texts about it ---------------------
def _section(text, start, stop):
    i = text.find(start)
    if i < 0:
        return ""
    j = text.find(stop, i + len(start)) if stop else -1
    return text[i:j if j >= 0 else len(text)]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    proc = subprocess.Popen(["sleep", "300"])
    try:
        time.sleep(0.2)
        with open("/proc/%d/smaps" % proc.pid) as fh:
            smaps = fh.read()
        core = str(d / "small.core")
        r = subprocess.run(["gdb", "-nx", "-batch", "-p", str(proc.pid),
                            "-ex", "echo @@maps\\n", "-ex", "info proc mappings",
                            "-ex", "echo @@auxv\\n", "-ex", "info auxv",
                            "-ex", "gcore " + core,
                            "-ex", "echo @@end\\n"],
                           capture_output=True, text=True, timeout=120)
        assert os.path.exists(core), r.stderr
        t = subprocess.run(["gdb", "-nx", "-batch", "-ex", "info target", "/bin/sleep", core],
                           capture_output=True, text=True, timeout=120)
    finally:
        proc.kill()
        proc.wait()
    with open(core, "rb") as fh:
        data = fh.read()
    return Small({"dir": str(d), "core": core, "data": data, "layout": Layout(core), "smaps": smaps,
                  "maps": _section(r.stdout, "@@maps", "@@auxv"), "auxv": _section(r.stdout, "@@auxv", "@@end"),
                  "target": t.stdout})


TINY_C = "#include <unistd.h>\nint main(void) { write(1, \"READY\\n\", 6); pause(); return 0; }\n"


@pytest.fixture(scope="module")
def small32(small):
    """A real -m32 core of a tiny process (None when -m32 cannot be built here)."""
    d = small["dir"]
    src, exe, core = os.path.join(d, "tiny.c"), os.path.join(d, "tiny32"), os.path.join(d, "tiny32.core")
    with open(src, "w") as fh:
        fh.write(TINY_C)
    if subprocess.run(["gcc", "-m32", "-O0", src, "-o", exe], capture_output=True).returncode:
        return None
    run = Running([exe])
    try:
        prefix = os.path.join(d, "tiny32")
        core = run.gcore(prefix)
    finally:
        run.kill()
    with open(core, "rb") as fh:
        data = fh.read()
    return Small({"dir": d, "core": core, "data": data, "layout": Layout(core)})


@pytest.fixture(scope="module")
def kernel_small(small):
    """The kernel's own core of a sleep (notes before the segments, page-sized NT_FILE offsets,
    file-backed text left out with p_filesz 0); None when cores go to a pipe or elsewhere."""
    d = os.path.join(small["dir"], "kcore")
    os.makedirs(d, exist_ok=True)
    run = Running(["sh", "-c", "echo READY; exec sleep 300"], cwd=d, core_limit=True)
    core = run.kernel_core(d)
    if core is None:
        return None
    with open(core, "rb") as fh:
        data = fh.read()
    return Small({"dir": d, "core": core, "data": data, "layout": Layout(core)})


class Small(dict):
    """The small core and texts; a short repr keeps hypothesis' reports readable."""

    def __repr__(self):
        return "<small core %s>" % self["core"]


# -- core mutations ------------------------------------------------------------------------------
INTERESTING = [0, 1, 2, 3, 4, 0x7f, 0x80, 0xff, 0x100, 0xfff, 0x1000, 0x7fff, 0xffff, 0x10000, 0x7fffffff,
               0x80000000, 0xffffffff, 1 << 32, 1 << 47, 1 << 56, 1 << 62, 1 << 63, (1 << 64) - 1, (1 << 64) - 0x1000]


def _fields(lay):
    """(offset, width, original value) of every header and note field worth corrupting."""
    w = lay.cls
    out = [(4, 1), (5, 1), (6, 1), (16, 2), (18, 2), (20, 4)]
    out += [(o, n) for o, n in ((32, 8), (40, 8), (54, 2), (56, 2), (58, 2), (60, 2))] if w == 8 else \
        [(28, 4), (32, 4), (42, 2), (44, 2), (46, 2), (48, 2)]
    rel = [(0, 4), (4, 4), (8, 8), (16, 8), (32, 8), (40, 8)] if w == 8 else \
        [(0, 4), (4, 4), (8, 4), (16, 4), (20, 4), (24, 4)]
    for i in range(lay.e_phnum):
        out += [(lay.e_phoff + i * lay.phent + o, n) for o, n in rel]
    for n in lay.notes:
        out += [(n["hdr"], 4), (n["hdr"] + 4, 4), (n["hdr"] + 8, 4)]
        if n["type"] == 0x46494C45:              # NT_FILE: count, page size, 12 entries, name bytes
            out += [(n["desc"] + k * w, w) for k in range(2 + 3 * 12)]
            count = int.from_bytes(n["data"][:w], "little")
            names = n["desc"] + (2 + 3 * count) * w
            out += [(names + k, 1) for k in range(0, min(200, n["descsz"] - (2 + 3 * count) * w))]
        elif n["type"] in (1, 6):                # NT_PRSTATUS (pid, registers), NT_AUXV
            out += [(n["desc"] + k, 4 if k < 112 else w) for k in range(0, min(n["descsz"], 400), 4 if w == 4 else 8)]
    return out


@st.composite
def core_mutations(draw, lay, data):
    """1-4 field overwrites (aligned header, program header and note fields; or any bytes),
    each with an interesting value, the field's own value nudged, or one relative to the file
    size; then maybe a truncation; then strict or --allow-truncated."""
    size = lay.size
    fields = _fields(lay)
    muts = []
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.integers(0, 9)) == 0:
            width = draw(st.sampled_from([1, 2, 4, 8]))
            off, orig = draw(st.integers(0, size - width)), 0
        else:
            off, width = draw(st.sampled_from(fields))
            orig = int.from_bytes(data[off:off + width], "little")
        top = (1 << (8 * width)) - 1
        val = draw(st.one_of(st.sampled_from([v for v in INTERESTING if v <= top]),
                             st.integers(-4096, 4096).map(lambda d: (orig + d) & top),
                             st.sampled_from([size - 1, size, size + 1, size // 2, size + 4096, 2 * orig])
                             .map(lambda v: v & top),
                             st.integers(0, top)))
        muts.append((off, width, val))
    cut = draw(st.one_of(st.none(), st.none(), st.integers(0, 64 + lay.e_phnum * lay.phent + 64),
                         st.integers(0, size), st.integers(lay.note_off - 64, size)))
    return muts, cut, draw(st.sampled_from([True, True, True, False]))   # mostly salvage: deeper code


def _apply(data, muts, cut):
    buf = bytearray(data)
    for off, width, val in muts:
        buf[off:off + width] = val.to_bytes(width, "little")
    return bytes(buf[:cut] if cut is not None else buf)


def _exercise(path, allow):
    """Everything a command asks of a core target; return what it said, or None when refused."""
    try:
        t = CoreTarget(path, exe=None, allow_truncated=allow)
    except MemleakError:
        return None
    try:
        top = 1 << (8 * t.pointer_size)
        if not allow:
            assert not t.warnings, t.warnings      # strict: damage is an error, never a result
        regs = t.regions()
        prev_end = 0
        for r in regs:
            assert 0 <= r.start < r.end <= top, r
            assert r.start >= prev_end, "overlapping mappings %r" % r
            assert r.start <= r.readable_end <= r.end, r
            prev_end = r.end
        for th in t.threads():
            assert isinstance(th.lwp, int) and 0 <= th.sp < top
        for k, v in t.auxv().items():
            assert 0 <= k < top and 0 <= v < top
        t.modules()
        buf = bytearray(64)
        for r in regs[:40]:
            t.try_read(r.start, 16)
            t.try_read(r.end - 16, 16)
            t.try_read(r.end - 8, 4096)
            t.fast_read_into(r.start, buf)
            t.read_cstring(r.start, 64)
        for a, n in ((0, 8), (top - 8, 8), (top - 4, 64), (-8, 8), (0x1000, -1)):
            t.try_read(a, n)
        t.describe()
        return t.warnings
    finally:
        t.core.close()


@settings(max_examples=200 * SCALE, **SETTINGS)
@given(data=st.data())
def test_fuzz_core_file(small, small32, kernel_small, data):
    core = data.draw(st.sampled_from([c for c in (small, small, small32, kernel_small) if c is not None]))
    lay = core["layout"]
    muts, cut, allow = data.draw(core_mutations(lay, core["data"]))
    path = os.path.join(core["dir"], "mutant.core")
    with open(path, "wb") as fh:
        fh.write(_apply(core["data"], muts, cut))
    with time_bound():
        said = _exercise(path, allow)
    hypothesis.event("refused" if said is None else "analysed with warnings" if said else "analysed clean")


def test_fuzz_core_controls(small, small32, kernel_small):
    """The unmutated cores parse clean; cut before its notes a gcore is refused, or with
    --allow-truncated analysed with warnings that say the notes are missing."""
    for c in (small, small32, kernel_small):
        if c is not None:
            assert _exercise(c["core"], False) == [], c
    if kernel_small is not None:
        t = CoreTarget(kernel_small["core"])
        assert t.threads() and any(r.path for r in t.regions()), "kernel core parsed to nothing"
        t.core.close()
    path = os.path.join(small["dir"], "cut.core")
    with open(path, "wb") as fh:
        fh.write(small["data"][:small["layout"].note_off])
    with pytest.raises(MemleakError, match=r"truncated core: .* notes missing \(threads, registers, mapped files\)"):
        CoreFile(path)
    warnings = _exercise(path, True)
    assert any("notes missing" in w for w in warnings) and any("no threads or registers" in w for w in warnings)
    t = CoreTarget(path, allow_truncated=True)
    assert t.describe()["warnings"] == warnings and t.describe()["damaged"]   # JSON outputs say it too
    t.core.close()


@settings(max_examples=60 * SCALE, **SETTINGS)
@given(blob=st.binary(min_size=0, max_size=400), allow=st.booleans())
def test_fuzz_core_random_bytes(small, blob, allow):
    """Not even a header of ours: random bytes, and random bytes behind a real ELF identity."""
    for i, data in enumerate((blob, small["data"][:16] + blob)):
        path = os.path.join(small["dir"], "random%d.core" % i)
        with open(path, "wb") as fh:
            fh.write(data)
        with time_bound():
            _exercise(path, allow)


# -- text mutations -------------------------------------------------------------------------------
TOKENS = ["", "-1", "0x", "0x-1", "ffffffffffffffffffff", "0xffffffffffffffff", "1,,", ",", ",,,",
          "99999999999999999999999", "rw-p", "----", "kB", '"', '""', "(", ")", "\t", "  ", "==1==",
          "0x7f0000000000-0x7f0000001000", "٣", "\x00", "\ufffd", "loss record", "bytes in"]


@st.composite
def mutated_text(draw, text):
    lines = text.splitlines() or [""]
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["token", "token", "insert", "delete", "dup", "line", "cut"]))
        i = draw(st.integers(0, len(lines) - 1))
        ln = lines[i]
        if op == "token":
            words = ln.split(" ")
            j = draw(st.integers(0, len(words) - 1))
            words[j] = draw(st.one_of(st.sampled_from(TOKENS), st.text(max_size=12)))
            lines[i] = " ".join(words)
        elif op == "insert":
            k = draw(st.integers(0, len(ln)))
            lines[i] = ln[:k] + draw(st.one_of(st.sampled_from(TOKENS), st.text(max_size=8))) + ln[k:]
        elif op == "delete" and ln:
            k = draw(st.integers(0, len(ln) - 1))
            lines[i] = ln[:k] + ln[k + draw(st.integers(1, 8)):]
        elif op == "dup":
            lines.insert(i, ln)
        elif op == "line":
            lines[i] = draw(st.text(max_size=80))
        elif op == "cut":
            lines = lines[:i + 1]
            lines[-1] = ln[:draw(st.integers(0, len(ln)))]
    return "\n".join(lines)


def _check_regions(regs):
    for r in regs:
        assert 0 <= r.start < r.end <= 1 << 64 and 0 <= r.offset < 1 << 64, r
        assert r.rss is None or r.rss >= 0
        assert r.private_dirty is None or r.private_dirty >= 0


@settings(max_examples=120 * SCALE, **SETTINGS)
@given(data=st.data())
def test_fuzz_proc_and_gdb_texts(small, data):
    which = data.draw(st.sampled_from(["smaps", "maps", "auxv", "target"]))
    text = data.draw(st.one_of(mutated_text(small[which]), st.text(max_size=300)))
    with time_bound():
        try:
            _check_regions(textparse.parse_smaps(text))
            _check_regions(textparse.parse_info_proc_mappings(text))
            for k, v in textparse.parse_info_auxv(text).items():
                assert 0 <= k < 1 << 64 and 0 <= v < 1 << 64
            p = textparse.parse_core_path_from_info_target(text)
            assert p is None or isinstance(p, str)
        except MemleakError:
            pass


def test_text_controls(small):
    """The real texts parse to what they say."""
    regs = textparse.parse_smaps(small["smaps"])
    assert regs and any(r.path == "[stack]" for r in regs) and all(r.rss is not None for r in regs)
    assert len(textparse.parse_info_proc_mappings(small["maps"])) >= len(regs) - 2
    auxv = textparse.parse_info_auxv(small["auxv"])
    assert auxv.get(6) == 4096          # AT_PAGESZ
    assert textparse.parse_core_path_from_info_target(small["target"]) == small["core"]


@settings(max_examples=150 * SCALE, **SETTINGS)
@given(text=st.one_of(st.text(max_size=24), st.from_regex(r"\A\s*(0x[0-9a-fA-F]{0,20}|[0-9.]{0,25})\s*[kKmMgGtTpP]?[iI]?[bB]?\s*\Z")))
def test_fuzz_parse_size(text):
    try:
        n = textparse.parse_size(text)
    except MemleakError as e:
        assert isinstance(e, ValueError)       # callers that catch ValueError keep working
        return
    assert isinstance(n, int) and 0 <= n < 1 << 64


VGDB_TEXTS = sorted(glob.glob(os.path.join(ROOT, "tests", "data", "vgdb", "*.txt")))


@pytest.fixture(scope="module")
def vgdb_texts():
    assert VGDB_TEXTS, "tests/data/vgdb holds the captured valgrind outputs"
    out = {}
    for p in VGDB_TEXTS:
        with open(p, encoding="utf-8", errors="replace") as fh:
            out[os.path.basename(p)] = fh.read()
    return out


def _sane_record(rec):
    for k in ("bytes", "blocks", "record", "of", "direct_bytes", "indirect_bytes"):
        assert rec.get(k) is None or (isinstance(rec[k], int) and rec[k] >= 0), (k, rec)
    for f in rec["stack"]:
        assert re.fullmatch(r"0x[0-9a-f]+", f["pc"])


@settings(max_examples=150 * SCALE, **SETTINGS)
@given(data=st.data())
def test_fuzz_vgdb_outputs(vgdb_texts, data):
    names = sorted(vgdb_texts)
    texts = [data.draw(mutated_text(vgdb_texts[data.draw(st.sampled_from(names))])) for _ in range(2)]
    with time_bound():
        try:
            checks = []
            for text in texts:
                lc = vgdb.parse_leak_check(text)
                for rec in lc["records"]:
                    _sane_record(rec)
                checks.append(lc)
                for rec in vgdb.parse_block_list(text)["records"]:
                    _sane_record(rec)
                    for b in rec["block_list"]:
                        assert b["size"] >= 0
                wpa = vgdb.parse_who_points_at(text)
                assert wpa["length"] is None or wpa["length"] >= 0
            for row in vgdb.timeline(checks):
                assert len(row["bytes"]) == len(checks)
        except MemleakError:
            pass


def test_vgdb_controls(vgdb_texts):
    lc = vgdb.parse_leak_check(vgdb_texts["lc_all.txt"])
    assert lc["records"] and lc["summary"]["definitely_lost"]["bytes"] > 0
    assert vgdb.parse_leak_check(",,, bytes in ,,, blocks are definitely lost in loss record , of ,")["records"] == []


@settings(max_examples=80 * SCALE, **SETTINGS)
@given(data=st.data())
def test_fuzz_executable(small, data):
    """--exe checks on a mutated copy of the core's own executable: a clean answer (accepted, or
    a build-id the core does not hold) or one MemleakError; never another exception."""
    with open("/bin/sleep", "rb") as fh:
        exe = fh.read()
    e_phoff = int.from_bytes(exe[32:40], "little")
    muts = []
    for _ in range(data.draw(st.integers(1, 3))):
        width = data.draw(st.sampled_from([1, 2, 8]))
        off = data.draw(st.one_of(st.integers(0, 64 - width), st.integers(e_phoff, e_phoff + 13 * 56 - width),
                                  st.integers(0, len(exe) - width)))
        muts.append((off, width, data.draw(st.one_of(st.sampled_from([v for v in INTERESTING if v < 1 << 8 * width]),
                                                      st.integers(0, (1 << 8 * width) - 1)))))
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(exe))))
    path = os.path.join(small["dir"], "mutant-exe")
    with open(path, "wb") as fh:
        fh.write(_apply(exe, muts, cut))
    with time_bound():
        t = CoreTarget(small["core"], exe=path)
        try:
            t.check_executable()
            t.modules()
        except MemleakError:
            pass
        finally:
            t.core.close()
