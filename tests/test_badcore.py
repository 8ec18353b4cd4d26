"""Bad input never hangs and never lies (issue 12, offline).

A corpus of broken inputs built from real gcores of tests/fixtures/maps_fixture.c (64-bit and
-m32) by patching header and note fields with struct at offsets read from the good core, plus
files of the wrong kind (directory, FIFO, device, empty, symlink loop, a path no user — root
included — can open) and wrong executables.  Every input goes through every offline command;
each run must end within TIMEOUT seconds, with either

* an error: the expected exit status, exactly one line on stderr ("error: ...", naming the
  problem), nothing on stdout, and no file left behind; or
* for a salvageable input given ``--allow-truncated``: exit 0 with a warning line saying what
  is missing (a command may still end in one clean error line of its own, e.g. nothing to dump).

Never a traceback, never "internal error".

Root bypasses file permissions, so "unreadable" is a path through a regular file
("file/core": ENOTDIR), which fails for root too.
"""
from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import GDBINIT, PY

TIMEOUT = 20
COMMANDS = [["maps"], ["heap"], ["leaks"], ["threads"], ["vtable-census", "--heap"],
            ["dump", "-o", "{out}"], ["whatis", "0x1000"]]
ALLOW = "--allow-truncated"
NT_PRSTATUS, NT_FILE = 1, 0x46494C45


# -- the good core's layout ----------------------------------------------------------------------
class Layout:
    """Offsets of every field we patch, read from a good core with struct (not with the code
    under test)."""

    def __init__(self, path):
        self.path = path
        self.size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(64)
            self.cls = 8 if head[4] == 2 else 4
            c64 = self.cls == 8
            self.w = "Q" if c64 else "I"
            self.e_phoff = struct.unpack_from("<Q" if c64 else "<I", head, 32 if c64 else 28)[0]
            self.e_phnum = struct.unpack_from("<H", head, 56 if c64 else 44)[0]
            self.phent = 56 if c64 else 32
            fh.seek(self.e_phoff)
            raw = fh.read(self.phent * self.e_phnum)
            self.phdrs = []
            for i in range(self.e_phnum):
                o = i * self.phent
                if c64:
                    t, _f, off, va, _pa, fs, ms = struct.unpack_from("<IIQQQQQ", raw, o)
                else:
                    t, off, va, _pa, fs, ms, _f = struct.unpack_from("<IIIIIII", raw, o)
                self.phdrs.append(dict(i=i, type=t, offset=off, vaddr=va, filesz=fs, memsz=ms))
            note = [p for p in self.phdrs if p["type"] == 4][0]
            self.note_off, self.note_size = note["offset"], note["filesz"]
            fh.seek(self.note_off)
            buf = fh.read(self.note_size)
        self.notes = []
        pos = 0
        while pos + 12 <= len(buf):
            namesz, descsz, ntype = struct.unpack_from("<III", buf, pos)
            desc = pos + 12 + ((namesz + 3) & ~3)
            self.notes.append(dict(hdr=self.note_off + pos, namesz=namesz, descsz=descsz, type=ntype,
                                   desc=self.note_off + desc, data=buf[desc:desc + descsz]))
            pos = desc + ((descsz + 3) & ~3)
        self.loads = [p for p in self.phdrs if p["type"] == 1]
        self.need = max(p["offset"] + p["filesz"] for p in self.phdrs)   # gcore adds section headers after

    def ehdr(self, field):
        c64 = self.cls == 8
        return {"e_type": (16, "H"), "e_machine": (18, "H"),
                "e_phoff": (32, "Q") if c64 else (28, "I"), "e_shoff": (40, "Q") if c64 else (32, "I"),
                "e_phentsize": (54, "H") if c64 else (42, "H"), "e_phnum": (56, "H") if c64 else (44, "H")}[field]

    def phdr(self, i, field):
        c64 = self.cls == 8
        rel = ({"p_offset": 8, "p_vaddr": 16, "p_filesz": 32, "p_memsz": 40} if c64 else
               {"p_offset": 4, "p_vaddr": 8, "p_filesz": 16, "p_memsz": 20})[field]
        return self.e_phoff + i * self.phent + rel, self.w

    def note(self, ntype):
        return [n for n in self.notes if n["type"] == ntype and n["namesz"] == 5]


def sparse_copy(src, dst, limit=None):
    """Copy ``src`` to ``dst`` (the first ``limit`` bytes), leaving holes for zero blocks: gcore
    writes reserved arena space as zeros, so a 220 MB core copies as ~10 MB."""
    size = os.path.getsize(src) if limit is None else limit
    zero = bytes(1 << 16)
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        fd = fi.fileno()
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            if data >= size:
                break
            hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
            fi.seek(data)
            at = data
            while at < hole:
                block = fi.read(min(len(zero), hole - at))
                if block != zero[:len(block)]:
                    fo.seek(at)
                    fo.write(block)
                at += len(block)
            pos = hole
        fo.truncate(size)


def patch(path, off, fmt, *vals):
    with open(path, "r+b") as fh:
        fh.seek(off)
        fh.write(struct.pack("<" + fmt, *vals))


# -- the corpus ------------------------------------------------------------------------------------
class Case:
    def __init__(self, name, core, expect, pattern, exe=None, args=(), code=1):
        self.name, self.core, self.exe, self.args = name, core, exe, list(args)
        self.expect, self.pattern, self.code = expect, pattern, code

    def __repr__(self):
        return self.name


def _build_corpus(d, lay64, lay32, exe64, exe32):
    cases = []
    base64, base32 = lay64.path, lay32.path

    def mk(name, lay=lay64, limit=None):
        p = os.path.join(d, name)
        sparse_copy(lay.path, p, limit)
        return p

    def err(name, path, pattern, **kw):
        cases.append(Case(name, path, "error", pattern, **kw))

    def part(name, path, pattern, **kw):
        cases.append(Case(name, path, "partial", pattern, args=[ALLOW], **kw))

    # controls: the good cores give no warning at all
    cases.append(Case("good64", base64, "ok", None, exe=exe64))
    cases.append(Case("good32", base32, "ok", None, exe=exe32))

    # truncations
    err("trunc_in_ehdr", mk("trunc_in_ehdr", limit=40), r"truncated: 40 bytes, its 64-bit ELF header needs 64")
    cut = lay64.e_phoff + 5 * lay64.phent + 10
    err("trunc_in_phdrs", mk("trunc_in_phdrs", limit=cut),
        r"truncated core: .* has %d bytes, its %d program headers need %d" % (cut, lay64.e_phnum,
                                                                              lay64.e_phoff + lay64.e_phnum * 56))
    big = max(lay64.loads, key=lambda p: p["filesz"])
    mid = big["offset"] + big["filesz"] // 2
    p = mk("trunc_in_load", limit=mid)
    err("trunc_in_load", p, r"truncated core: .* has %d bytes, its headers need %d: notes missing \(threads, "
        r"registers, mapped files\); \d+ of \d+ segments missing or cut" % (mid, lay64.need))
    part("trunc_in_load_allowed", p, r"warning: truncated core: .*segments missing or cut")
    p = mk("trunc_before_notes", limit=lay64.note_off)
    err("trunc_before_notes", p, r"truncated core: .* has %d bytes, its headers need %d: notes missing "
        r"\(threads, registers, mapped files\)" % (lay64.note_off, lay64.need))
    part("trunc_before_notes_allowed", p, r"warning: truncated core: .*notes missing \(threads, registers, "
         r"mapped files\)")
    part("trunc_in_notes_allowed", mk("trunc_in_notes", limit=lay64.note_off + 2000),
         r"warning: truncated core: .*notes missing .*: 2000 of %d note bytes present" % lay64.note_size)
    p = mk("trunc_before_notes32", lay32, limit=lay32.note_off)
    err("trunc_before_notes32", p, r"truncated core: .* has %d bytes, its headers need %d: notes missing"
        % (lay32.note_off, lay32.need))
    part("trunc_before_notes32_allowed", p, r"warning: truncated core: .*notes missing")

    # NT_FILE
    nf = lay64.note(NT_FILE)[0]
    p = mk("ntfile_count_huge")
    patch(p, nf["desc"], "Q", 1 << 62)
    err("ntfile_count_huge", p, r"NT_FILE note claims %d mappings, which need \d+ bytes, but it has %d"
        % (1 << 62, nf["descsz"]))
    part("ntfile_count_huge_allowed", p, r"warning: NT_FILE note claims .*mapped files are missing")
    p = mk("ntfile_start_gt_end")
    patch(p, nf["desc"] + 16, "QQ", 0x7f0000002000, 0x7f0000001000)
    err("ntfile_start_gt_end", p, r"NT_FILE note: 1 of \d+ entries are impossible \(e.g. #0 "
        r"0x7f0000002000-0x7f0000001000: start above end\)")
    count = struct.unpack_from("<Q", nf["data"], 0)[0]
    names_at = nf["desc"] + 16 + 24 * count
    p = mk("ntfile_names_unterminated")
    patch(p, names_at, "%ds" % (nf["descsz"] - 16 - 24 * count),
          nf["data"][16 + 24 * count:].replace(b"\0", b"A"))
    err("ntfile_names_unterminated", p, r"NT_FILE note: its %d file names are not %d NUL-terminated paths"
        % (count, count))
    nf32 = lay32.note(NT_FILE)[0]
    p = mk("ntfile_count_huge32", lay32)
    patch(p, nf32["desc"], "I", 0x7fffffff)
    err("ntfile_count_huge32", p, r"NT_FILE note claims %d mappings" % 0x7fffffff)

    # NT_PRSTATUS too short: each one cut to 0x50 bytes, the rest turned into an unnamed filler note
    p = mk("prstatus_short")
    for n in lay64.note(NT_PRSTATUS):
        patch(p, n["hdr"] + 4, "I", 0x50)
        patch(p, n["desc"] + 0x50, "III", 0, n["descsz"] - 0x50 - 12, 0x4444)
    err("prstatus_short", p, r"NT_PRSTATUS note of LWP \d+ is 80 bytes, its x86-64 registers need 328: a thread "
        r"and its registers are missing")
    part("prstatus_short_allowed", p, r"warning: no usable NT_PRSTATUS note: threads and registers are missing")

    # a note whose size runs past its segment
    p = mk("note_desc_huge")
    patch(p, lay64.notes[0]["hdr"] + 4, "I", 0x7fffffff)
    err("note_desc_huge", p, r"PT_NOTE #\d+: note 0 \(type 0x%x\) claims 5 name and %d data bytes but only \d+ "
        r"are left in its segment" % (lay64.notes[0]["type"], 0x7fffffff))

    # program headers
    ld = big
    p = mk("memsz_huge")
    patch(p, *lay64.phdr(ld["i"], "p_memsz"), 1 << 63)
    err("memsz_huge", p, r"PT_LOAD #%d at 0x%x: p_memsz 0x8000000000000000 \(8.0 EiB\) reaches past the end of "
        r"user space" % (ld["i"], ld["vaddr"]))
    part("memsz_huge_allowed", p, r"warning: PT_LOAD #%d .*segment skipped" % ld["i"])
    last = max((p for p in lay64.loads if p["memsz"] > 0x1000), key=lambda p: p["vaddr"])
    p = mk("vaddr_overflow")
    patch(p, *lay64.phdr(last["i"], "p_vaddr"), (1 << 64) - 0x1000)
    err("vaddr_overflow", p, r"PT_LOAD #%d at 0xfffffffffffff000: p_memsz 0x%x \(.*\) runs past the end of the "
        r"64-bit address space" % (last["i"], last["memsz"]))
    last32 = max((p for p in lay32.loads if p["memsz"] > 0x1000), key=lambda p: p["vaddr"])
    p = mk("vaddr_overflow32", lay32)
    patch(p, *lay32.phdr(last32["i"], "p_vaddr"), 0xfffff000)
    err("vaddr_overflow32", p, r"PT_LOAD #%d at 0xfffff000: .* runs past the end of the 32-bit address space"
        % last32["i"])
    p = mk("offset_past_eof")
    patch(p, *lay64.phdr(ld["i"], "p_offset"), lay64.size + (1 << 30))
    err("offset_past_eof", p, r"corrupt core .*: a segment's data lies at file offset 0x%x past the end of the "
        r"file \(%d bytes\)" % (lay64.size + (1 << 30), lay64.size))
    a, b = lay64.loads[1], lay64.loads[2]
    p = mk("file_data_overlap")
    patch(p, *lay64.phdr(b["i"], "p_offset"), a["offset"])
    err("file_data_overlap", p, r"PT_LOAD #%d \(0x%x\)'s file data .* overlaps PT_LOAD #%d \(0x%x\)'s"
        % (b["i"], b["vaddr"], a["i"], a["vaddr"]))
    p = mk("filesz_gt_memsz")
    patch(p, *lay64.phdr(a["i"], "p_filesz"), a["memsz"] + 0x1000)
    err("filesz_gt_memsz", p, r"PT_LOAD #%d at 0x%x: p_filesz 0x%x exceeds p_memsz" % (a["i"], a["vaddr"],
                                                                                       a["memsz"] + 0x1000))

    # ELF header
    p = mk("phnum_zero")
    patch(p, *lay64.ehdr("e_phnum"), 0)
    err("phnum_zero", p, r"no program headers \(e_phnum 0\)")
    p = mk("phnum_xnum_bad_shdr")
    patch(p, *lay64.ehdr("e_phnum"), 0xffff)
    patch(p, *lay64.ehdr("e_shoff"), lay64.size + 4096)
    err("phnum_xnum_bad_shdr", p, r"e_phnum is 0xffff \(PN_XNUM.* lies past the end of the file")
    p = mk("phoff_past_eof")
    patch(p, *lay64.ehdr("e_phoff"), lay64.size + 64)
    err("phoff_past_eof", p, r"its %d program headers at e_phoff 0x%x lie past the end of the file"
        % (lay64.e_phnum, lay64.size + 64))
    p = mk("phentsize_small")
    patch(p, *lay64.ehdr("e_phentsize"), 32)
    err("phentsize_small", p, r"program header entries of 32 bytes \(e_phentsize\), a 64-bit one is 56")
    p = mk("machine_wrong")
    patch(p, *lay64.ehdr("e_machine"), 8)
    err("machine_wrong", p, r"unsupported architecture mips")
    p = mk("class_wrong")
    patch(p, 4, "B", 1)
    err("class_wrong", p, r"a 32-bit ELF class does not fit its machine x86-64")
    p = mk("class_invalid")
    patch(p, 4, "B", 7)
    err("class_invalid", p, r"invalid ELF class 7")
    p = mk("type_exec")
    patch(p, *lay64.ehdr("e_type"), 2)
    err("type_exec", p, r"is not a core file: it is an executable \(ET_EXEC\)")
    p = mk("not_elf")
    patch(p, 0, "4s", b"GIF8")
    err("not_elf", p, r"is not an ELF file")

    # files of the wrong kind
    p = os.path.join(d, "empty")
    open(p, "wb").close()
    err("empty", p, r"is empty \(0 bytes\)")
    err("directory", d, r"is a directory, not a regular file")
    p = os.path.join(d, "fifo")
    os.mkfifo(p)
    err("fifo", p, r"is a FIFO \(named pipe\), not a regular file")
    err("dev_null", "/dev/null", r"is a character device, not a regular file")
    if os.geteuid() != 0:      # root reads a mode-000 file: only meaningful for other users
        p = mk("mode000", lay32, limit=4096)
        os.chmod(p, 0)
        err("mode000", p, r"cannot open core file .*: Permission denied")
    err("through_a_file", os.path.join(base64, "x"), r"cannot open core file .*: a component of the path is not "
        r"a directory")
    p = os.path.join(d, "loop")
    os.symlink(p, p)
    err("symlink_loop", p, r"too many levels of symbolic links")
    err("missing", os.path.join(d, "no-such-core"), r"cannot open core file .*: No such file or directory")

    # wrong executables for a good core
    err("exe_directory", base64, r"--exe %s is a directory, not a regular file" % re.escape(d), exe=d)
    txt = os.path.join(d, "script.sh")
    with open(txt, "w") as fh:
        fh.write("#!/bin/sh\necho hi\n")
    err("exe_not_elf", base64, r"--exe .*script.sh is not an ELF file", exe=txt)
    err("exe_other_class", base64, r"--exe .* is a 32-bit i386 file, but the core is 64-bit x86-64", exe=exe32)
    other = os.path.join(d, "exe_aarch64")
    shutil.copy(exe64, other)
    patch(other, 18, "H", 183)
    err("exe_other_machine", base64, r"--exe .* is a 64-bit aarch64 file, but the core is 64-bit x86-64", exe=other)
    libc = "/lib/x86_64-linux-gnu/libc.so.6"
    if os.path.exists(libc):
        err("exe_wrong_library", base64, r"build-id mismatch: the core's executable .* has build-id [0-9a-f]+, but "
            r"--exe %s has [0-9a-f]+" % re.escape(libc), exe=libc)
    err("exe_fifo", base64, r"--exe .*fifo is a FIFO \(named pipe\), not a regular file",
        exe=os.path.join(d, "fifo"))
    err("exe_empty", base64, r"--exe .*empty is empty \(0 bytes\)", exe=os.path.join(d, "empty"))
    err("exe_is_core", base64, r"--exe .* is not an executable or shared object: it is a core file", exe=base32)
    return cases


@pytest.fixture(scope="module")
def corpus(maps64, maps32, tmp_path_factory):
    d = str(tmp_path_factory.mktemp("badcore"))
    exe64, _r64, core64 = maps64
    exe32, _r32, core32 = maps32
    b64, b32 = os.path.join(d, "base64.core"), os.path.join(d, "base32.core")
    sparse_copy(core64, b64)
    sparse_copy(core32, b32)
    return d, _build_corpus(d, Layout(b64), Layout(b32), exe64, exe32)


def _run(case, cmd, workdir):
    out = os.path.join(workdir, "dump")
    argv = [PY, "-m", "gdb_memleak", "--no-progress", "--core", case.core]
    if case.exe:
        argv += ["--exe", case.exe]
    argv += case.args + [a.format(out=out) for a in cmd]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, cwd=workdir,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return cmd, None, "", "hung: no answer within %d s" % TIMEOUT, []
    return cmd, r.returncode, r.stdout, r.stderr, sorted(os.listdir(workdir))


def _check(case, cmd, rc, stdout, stderr, left):
    what = "%s: %s" % (case.name, " ".join(cmd))
    assert rc is not None, "%s %s" % (what, stderr)
    assert "Traceback" not in stderr and "internal error" not in stderr, "%s\n%s" % (what, stderr)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if not ln.startswith("warning:")]
    warnings = [ln for ln in lines if ln.startswith("warning:")]
    if case.expect == "ok":
        if cmd[0] == "vtable-census":   # a C fixture: no vtables to count is its one clean error
            assert rc == 1 and errors == ["error: no C++ vtables found in any module (no symbols, no RTTI): "
                                          "nothing to count"], "%s: rc=%s\n%s" % (what, rc, stderr)
            return
        assert rc == 0 and not lines, "%s: rc=%s\n%s" % (what, rc, stderr)
        return
    if case.expect == "error":
        assert rc == case.code, "%s: rc=%s, want %d\n%s" % (what, rc, case.code, stderr)
        assert len(errors) == 1 and errors[0].startswith("error: "), "%s: not one error line\n%s" % (what, stderr)
        assert re.search(case.pattern, errors[0]), "%s: %r does not match %r" % (what, errors[0], case.pattern)
        assert stdout == "", "%s: output despite the error\n%s" % (what, stdout)
        assert left == [], "%s: files left behind: %s" % (what, left)
        return
    # partial: exit 0 saying what is missing, or one clean error line of the command's own
    assert any(re.search(case.pattern, w) for w in warnings), "%s: no warning matching %r\n%s" % (
        what, case.pattern, stderr)
    if rc == 0:
        assert not errors, "%s: exit 0 with error lines\n%s" % (what, stderr)
    else:
        assert rc == 1 and len(errors) == 1 and errors[0].startswith("error: "), "%s: rc=%s\n%s" % (what, rc, stderr)
        assert left == [], "%s: files left behind: %s" % (what, left)


def test_corpus(corpus, tmp_path):
    d, cases = corpus
    assert len({c.name for c in cases}) == len(cases)
    assert sum(c.expect == "error" for c in cases) >= 30
    jobs = []
    for case in cases:
        for k, cmd in enumerate(COMMANDS):
            wd = tmp_path / ("%s-%d" % (case.name, k))
            wd.mkdir()
            jobs.append((case, cmd, str(wd)))
    with ThreadPoolExecutor(max(2, min(8, 2 * (os.cpu_count() or 1)))) as pool:
        results = list(pool.map(lambda j: (j[0],) + _run(*j), jobs))
    failures = []
    for case, cmd, rc, out, err_, left in results:
        try:
            _check(case, cmd, rc, out, err_, left)
        except AssertionError as e:
            failures.append(str(e).split("\nassert")[0])
    assert not failures, "%d of %d runs failed:\n\n%s" % (len(failures), len(results), "\n\n".join(failures[:30]))
    # the salvageable inputs still give an answer: maps succeeds on each
    for case, cmd, rc, out, err_, left in results:
        if case.expect == "partial" and cmd == ["maps"]:
            assert rc == 0 and out, case.name



def _run_gdb(case, workdir):
    argv = ["gdb", "-nx", "-batch", "-ex", "source " + GDBINIT, "-ex", "set memleak progress off",
            "-ex", "memleak maps", "-ex", "memleak heap"]
    argv += [case.exe] if case.exe else []
    argv += [case.core]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, cwd=workdir,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, "", "hung"
    return r.returncode, r.stdout, r.stderr


def test_corpus_in_gdb(corpus, tmp_path):
    """The same inputs through gdb: gdb may load a core we refuse offline, or refuse one; either
    way memleak never hangs, never shows a traceback or an internal error, and a damaged core is
    never analysed without a word about it."""
    d, cases = corpus
    cases = [c for c in cases if os.path.isfile(c.core) and os.path.getsize(c.core) > 0]
    jobs = []
    for case in cases:
        wd = tmp_path / case.name
        wd.mkdir()
        jobs.append((case, str(wd)))
    with ThreadPoolExecutor(max(2, min(8, 2 * (os.cpu_count() or 1)))) as pool:
        results = list(pool.map(lambda j: (j[0],) + _run_gdb(*j), jobs))
    bad = []
    for case, rc, out, err_ in results:
        if rc is None:
            bad.append("%s: hung" % case.name)
        elif "Traceback" in err_ + out or "internal error" in err_ + out:
            bad.append("%s: %s" % (case.name, err_[-800:]))
        elif case.expect != "ok" and rc == 0 and "warning" not in err_.lower() and "error" not in err_.lower():
            bad.append("%s: analysed a damaged input without a word\n%s" % (case.name, err_[-800:]))
    assert not bad, "\n\n".join(bad[:20])
