"""Helpers for the glibc-truth oracle (tests/oracle/glibc_truth.py), used from pytest.

These run OUTSIDE gdb: they drive ``gdb -nx -batch`` as a subprocess, which sources
glibc_truth.py and writes glibc malloc's own view of a heap (read through libc's debug
info) as JSON.  See glibc_truth.py for the JSON schema and README.md (this folder) for
the identities that tie it to mallinfo2().

    truth_from_core(exe, core)             -> dict   (offline, from a core file)
    truth_gdb_commands(json_path, ...)     -> argv to append to a gdb session
    have_libc_dbg(bits)                    -> is libc's debug info installed?
    expected_tool_view(truth)              -> what a symbol-less analyser should report
    check_identities(truth)                -> [] or a list of broken identities
    comparable(truth)                      -> truth minus the fields that differ live/core
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

ORACLE_DIR = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(ORACLE_DIR, "glibc_truth.py")
PROG_SRC = os.path.join(ORACLE_DIR, "oracle_prog.c")

# gdb options that make it skip libthread_db (forces glibc-truth's manual TLS path)
NO_LIBTHREAD_DB = ["-iex", "set libthread-db-search-path /nonexistent/glibc-truth"]


class OracleError(RuntimeError):
    pass


def _quote(path):
    """Quote PATH for a gdb command line parsed with gdb.string_to_argv."""
    return '"%s"' % path.replace("\\", "\\\\").replace('"', '\\"')


def truth_gdb_commands(json_path, mallinfo=False, tls=None):
    """The ``-ex`` arguments that dump the truth from the current gdb session to JSON_PATH.

    Append them to a gdb command line after the program has been brought to its stop
    (and, if wanted, after ``gcore``: with ``mallinfo=True`` the inferior runs
    ``mallinfo2()``, which takes the arena locks; it is called after everything else
    has been read).  TLS is None/"auto", "gdb" or "manual" (see glibc_truth.py)."""
    cmd = "glibc-truth %s" % _quote(json_path)
    if mallinfo:
        cmd += " --mallinfo"
    if tls:
        cmd += " --tls=%s" % tls
    # `source` takes the rest of the line literally: no quoting
    return ["-ex", "source %s" % SCRIPT, "-ex", cmd]


def truth_from_core(exe, core, timeout=300, tls=None, gdb_args=()):
    """Run gdb on EXE + CORE, dump the truth and return it as a dict.

    Raises OracleError with gdb's stderr/stdout if gdb fails or writes nothing.
    GDB_ARGS are put before the file arguments (e.g. NO_LIBTHREAD_DB)."""
    gdb = shutil.which("gdb")
    if gdb is None:
        raise OracleError("gdb not found")
    tmpdir = tempfile.mkdtemp(prefix="glibc-truth-")
    out = os.path.join(tmpdir, "truth.json")
    try:
        argv = [gdb, "-nx", "-batch", *gdb_args, *truth_gdb_commands(out, tls=tls), exe, core]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise OracleError("gdb timed out after %ss: %s" % (timeout, exc.stderr)) from exc
        if proc.returncode != 0 or not os.path.exists(out):
            raise OracleError("glibc-truth failed (rc=%d)\nstderr:\n%s\nstdout:\n%s"
                              % (proc.returncode, proc.stderr, proc.stdout[-4000:]))
        with open(out) as fh:
            return json.load(fh)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _build_id(path):
    """The GNU build-id of an ELF file, as hex, or None (parses the section headers)."""
    import struct
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    if data[:4] != b"\x7fELF":
        return None
    is64 = data[4] == 2
    e = "<" if data[5] == 1 else ">"
    if is64:
        shoff, = struct.unpack_from(e + "Q", data, 0x28)
        shentsize, shnum = struct.unpack_from(e + "HH", data, 0x3A)
    else:
        shoff, = struct.unpack_from(e + "I", data, 0x20)
        shentsize, shnum = struct.unpack_from(e + "HH", data, 0x2E)
    for i in range(shnum):
        sh = shoff + i * shentsize
        if is64:
            sh_type, = struct.unpack_from(e + "I", data, sh + 4)
            off, size = struct.unpack_from(e + "QQ", data, sh + 0x18)
        else:
            sh_type, = struct.unpack_from(e + "I", data, sh + 4)
            off, size = struct.unpack_from(e + "II", data, sh + 0x10)
        if sh_type != 7:          # SHT_NOTE
            continue
        pos = off
        while pos + 12 <= off + size:
            namesz, descsz, ntype = struct.unpack_from(e + "III", data, pos)
            name = data[pos + 12:pos + 12 + namesz]
            dpos = pos + 12 + ((namesz + 3) & ~3)
            if ntype == 3 and name.rstrip(b"\0") == b"GNU":   # NT_GNU_BUILD_ID
                return data[dpos:dpos + descsz].hex()
            pos = dpos + ((descsz + 3) & ~3)
    return None


def libc_path(bits=64):
    """The libc.so.6 a -m64/-m32 program loads: the one beside the dynamic linker's real file."""
    ld = "/lib64/ld-linux-x86-64.so.2" if bits == 64 else "/lib/ld-linux.so.2"
    if not os.path.exists(ld):
        return None
    p = os.path.join(os.path.dirname(os.path.realpath(ld)), "libc.so.6")
    return p if os.path.exists(p) else None


def have_libc_dbg(bits=64):
    """True when the debug info of the libc that a BITS-bit program loads is installed
    (Debian: libc6-dbg for 64-bit, libc6-dbg:i386 for 32-bit), found by build-id."""
    lib = libc_path(bits)
    if lib is None:
        return False
    bid = _build_id(lib)
    if not bid:
        return False
    return os.path.exists("/usr/lib/debug/.build-id/%s/%s.debug" % (bid[:2], bid[2:]))


# ----------------------------------------------------------------------------- summaries

def _pair(d):
    return (d["chunks"], d["bytes"])


def expected_tool_view(truth):
    """Convert glibc's view into what a symbol-less heap analyser should report.

    Per arena (in the truth's ring order, main_arena first), every value derived as:

    * ``in_use`` = (walk.in_use_chunks - tcache_held.chunks - fastbins.chunks,
                    walk.in_use_bytes  - tcache_held.bytes  - fastbins.bytes).
      The walk calls a chunk in use when the next chunk's PREV_INUSE is set, which is
      also true of chunks parked in a tcache or a fastbin (glibc never clears the bit
      for them), so those are subtracted.  Bytes are chunk sizes (header included,
      flag bits masked).  Fenceposts are not in it.  It DOES include each thread's
      tcache_perthread_struct chunk (reported separately as ``tcache_structs``) and
      any chunk a program allocated and freed into another thread's tcache is counted
      under ``tcache`` of the arena whose heap holds it.
    * ``tcache`` = tcache_held: the entries of every thread's tcache, attributed to the
      arena whose heap contains the chunk (a thread may cache chunks of other arenas).
    * ``fastbin`` = (fastbins.chunks, fastbins.bytes): the arena's fastbinsY lists.
    * ``free`` = (bins.chunks, bins.bytes): unsorted + small + large bins; equals the
      walk's free chunks (check_identities asserts it).  Top is not in it.
    * ``top_size`` = chunksize(av->top).
    * ``heaps`` = [(start, end)]: thread arenas: each heap_info region [&heap_info,
      &heap_info + heap_info.size), oldest first; main arena: [mp_.sbrk_base,
      top + top_size) (the [heap]/brk area as far as malloc uses it).
    * ``fencepost`` = (walk.fencepost_chunks, walk.fencepost_bytes).
    * ``overhead`` = walk.header_bytes: heap_info (+ malloc_state) headers and the
      alignment gap in front of the first chunk of each heap.
    * ``system_mem`` = av->system_mem, which equals
      overhead + in_use + tcache + fastbin + free + fencepost bytes + top_size.

    ``totals`` sums each pair over the arenas; ``mmapped`` = (mp_.n_mmaps,
    mp_.mmapped_mem) for chunks served by mmap (not in any arena).
    """
    arenas = []
    for a in truth["arenas"]:
        w = a["walk"]
        tc = _pair(a["tcache_held"])
        fb = _pair(a["fastbins"])
        arenas.append({
            "address": a["address"], "main": a["main"],
            "in_use": (w["in_use_chunks"] - tc[0] - fb[0], w["in_use_bytes"] - tc[1] - fb[1]),
            "tcache": tc,
            "fastbin": fb,
            "free": _pair(a["bins"]),
            "top_size": a["top_size"],
            "heaps": [(h["start"], h["end"]) for h in a["heaps"]],
            "fencepost": (w["fencepost_chunks"], w["fencepost_bytes"]),
            "overhead": w["header_bytes"],
            "tcache_structs": _pair(a["tcache_structs"]),
            "system_mem": a["system_mem"],
        })
    totals = {}
    for key in ("in_use", "tcache", "fastbin", "free", "fencepost", "tcache_structs"):
        totals[key] = (sum(x[key][0] for x in arenas), sum(x[key][1] for x in arenas))
    totals["top_size"] = sum(x["top_size"] for x in arenas)
    totals["system_mem"] = sum(x["system_mem"] for x in arenas)
    return {"arenas": arenas, "totals": totals,
            "mmapped": (truth["mp"]["n_mmaps"], truth["mp"]["mmapped_mem"])}


def mallinfo2_from_truth(truth):
    """What mallinfo2() must return, computed from the truth (see README.md)."""
    A = truth["arenas"]
    fordblks = sum(a["top_size"] + a["fastbins"]["bytes"] + a["bins"]["bytes"] for a in A)
    arena = sum(a["system_mem"] for a in A)
    main = [a for a in A if a["main"]][0]
    return {
        "arena": arena,
        "ordblks": sum(a["bins"]["chunks"] for a in A) + len(A),
        "smblks": sum(a["fastbins"]["chunks"] for a in A),
        "hblks": truth["mp"]["n_mmaps"],
        "hblkhd": truth["mp"]["mmapped_mem"],
        "usmblks": 0,
        "fsmblks": sum(a["fastbins"]["bytes"] for a in A),
        "uordblks": arena - fordblks,
        "fordblks": fordblks,
        "keepcost": main["top_size"],
    }


def check_identities(truth):
    """Every identity the truth must satisfy; returns the broken ones (empty = all hold)."""
    bad = list("oracle error: %s" % e for e in truth.get("errors", []))
    view = expected_tool_view(truth)
    for a, v in zip(truth["arenas"], view["arenas"]):
        name = "arena %#x" % a["address"]
        w = a["walk"]
        if not w["complete"]:
            bad.append("%s: walk incomplete" % name)
        if (w["free_chunks"], w["free_bytes"]) != _pair(a["bins"]):
            bad.append("%s: walk free %r != bins %r"
                       % (name, (w["free_chunks"], w["free_bytes"]), _pair(a["bins"])))
        parts = (v["overhead"] + v["in_use"][1] + v["tcache"][1] + v["fastbin"][1]
                 + v["free"][1] + v["fencepost"][1] + v["top_size"])
        if parts != a["system_mem"]:
            bad.append("%s: overhead+in_use+tcache+fastbin+free+fencepost+top = %d != "
                       "system_mem %d" % (name, parts, a["system_mem"]))
        if v["in_use"][0] < 0 or v["in_use"][1] < 0:
            bad.append("%s: negative in_use %r" % (name, v["in_use"]))
        if not a["main"]:
            if a["heaps"] and sum(h["size"] for h in a["heaps"]) != a["system_mem"]:
                bad.append("%s: sum(heap_info.size) != system_mem" % name)
        elif a["heaps"]:
            h = a["heaps"][0]
            if h["end"] - h["start"] != a["system_mem"]:
                bad.append("%s: top end - sbrk_base %d != system_mem %d"
                           % (name, h["end"] - h["start"], a["system_mem"]))
    if truth.get("narenas") is not None and truth["narenas"] != len(truth["arenas"]):
        bad.append("narenas %d != arenas in the ring %d" % (truth["narenas"], len(truth["arenas"])))
    for t in truth["tcache"]:
        if t["counts"] != t["list_lengths"]:
            bad.append("LWP %d: tcache counts != list lengths" % t["lwp"])
    tc_threads = (sum(t["chunks"] for t in truth["tcache"]), sum(t["bytes"] for t in truth["tcache"]))
    if tc_threads != view["totals"]["tcache"]:
        bad.append("tcache entries of threads %r != attributed to arenas %r"
                   % (tc_threads, view["totals"]["tcache"]))
    mi = truth.get("mallinfo2")
    if mi is not None:
        want = mallinfo2_from_truth(truth)
        for k, val in want.items():
            if mi.get(k) != val:
                bad.append("mallinfo2.%s = %r, truth says %r" % (k, mi.get(k), val))
    return bad


def comparable(truth):
    """TRUTH without the fields that legitimately differ between a live read and a read
    of a core of the same stop (mallinfo2, notes, the TLS method)."""
    t = json.loads(json.dumps(truth))
    t.pop("mallinfo2", None)
    t.pop("notes", None)
    for th in t.get("tcache", []):
        th.pop("tls", None)
    return t
