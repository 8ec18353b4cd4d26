"""The compiled kernel (kernel.c): the census word scan, the owner lookup of census hits and the
heap chunk-header walk, in C.

Built on first use with the system C compiler (``$CC``, else ``cc``; ``-O2 -shared -fPIC``) into a
private per-user cache, ``$XDG_CACHE_HOME/gdb_memleak`` (default ``~/.cache/gdb_memleak``): the
folder is made 0700 and must be ours and not writable by others, the library is written 0700 under
a temporary name and renamed into place, its name keyed by the source's hash, the machine and the
Python's pointer width — never inside the repository.  Loaded with ctypes (which releases the GIL
around each call: the scan threads run it in parallel).

``GDB_MEMLEAK_NATIVE=0`` (or no compiler, or any failure) leaves ``lib()`` None: every caller then
runs its numpy/Python code, which gives the same results (tests/test_native.py compares them).
``status()`` says which path is in use and why; ``python -m gdb_memleak --version`` and
``show memleak`` print it.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import stat
import struct
import subprocess
import sys
import tempfile
import threading

import numpy as np

ABI = 1
_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernel.c")
_FLAGS = ["-O3", "-shared", "-fPIC", "-std=gnu99"]
_lock = threading.Lock()
_state = {"lib": None, "tried": False, "status": "not loaded yet"}

_u64p = np.ctypeslib.ndpointer(dtype=np.uint64, flags="C_CONTIGUOUS")
_i64p = np.ctypeslib.ndpointer(dtype=np.int64, flags="C_CONTIGUOUS")
_i32p = np.ctypeslib.ndpointer(dtype=np.int32, flags="C_CONTIGUOUS")
_i8p = np.ctypeslib.ndpointer(dtype=np.int8, flags="C_CONTIGUOUS")
_u8p = np.ctypeslib.ndpointer(dtype=np.uint8, flags="C_CONTIGUOUS")
_vp, _long, _int, _u64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_uint64


def _nullable(p):
    """ndpointer that also takes None (NULL)."""
    class P(p):
        @classmethod
        def from_param(cls, obj):
            return None if obj is None else p.from_param(obj)
    return P


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gdb_memleak")


def _private_dir(path: str) -> None:
    """Make ``path`` (0700) or check it: a real folder, ours, writable by nobody else."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError("%s is not a folder" % path)
    if st.st_uid != os.getuid():
        raise OSError("%s belongs to uid %d, not to us" % (path, st.st_uid))
    if st.st_mode & 0o022:
        raise OSError("%s is writable by others (mode %o)" % (path, st.st_mode & 0o777))


def _key(src: bytes, cc: str) -> str:
    h = hashlib.sha256(src + b"\0" + " ".join([cc] + _FLAGS).encode()).hexdigest()[:16]
    return "kernel-%s-%s-%dbit-abi%d.so" % (h, platform.machine() or "unknown", 8 * struct.calcsize("P"), ABI)


def _prune(folder: str, keep: str) -> None:
    """Remove the builds of older sources for this machine (a running process keeps its copy)."""
    tail = keep.split("-", 2)[2]
    for name in os.listdir(folder):
        if name.startswith("kernel-") and name.endswith(tail) and name != keep:
            try:
                os.unlink(os.path.join(folder, name))
            except OSError:
                pass


def _build(src_path: str, dest_dir: str, cc: str) -> str:
    with open(src_path, "rb") as fh:
        src = fh.read()
    path = os.path.join(dest_dir, _key(src, cc))
    try:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022:
            return path
        raise OSError("%s is not a private file of ours" % path)
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=dest_dir)
    os.close(fd)
    try:
        r = subprocess.run([cc] + _FLAGS + ["-o", tmp, src_path], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=120)
        if r.returncode:
            raise OSError("%s failed: %s" % (cc, (r.stderr or r.stdout).strip().splitlines()[-1:] or r.returncode))
        os.chmod(tmp, 0o700)
        os.rename(tmp, path)     # atomic: another process building the same key loses nothing
        _prune(dest_dir, os.path.basename(path))
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _declare(lib) -> None:
    lib.mlk_abi.restype = _int
    lib.mlk_abi.argtypes = []
    lib.mlk_points_table.restype = None
    lib.mlk_points_table.argtypes = [_u64p, _long, _u64p, _int, _int, _u64p, _i32p, _int]
    lib.mlk_census.restype = _long
    # plain addresses: this runs once per chunk, and ndpointer's checks cost microseconds per array
    lib.mlk_census.argtypes = [_vp, _long, _int, _int, _int, _vp, _vp, _vp, _int, _int, _vp, _vp, _int,
                               _vp, _vp, _vp, _int]
    lib.mlk_census_heap.restype = _long
    lib.mlk_census_heap.argtypes = [_vp, _long, _u64, _int, _int, _int, _vp, _vp, _vp, _int, _int, _vp, _vp, _int,
                                    _int, _vp, _vp, _vp, _vp, _vp, _vp, _long, _u64, _vp, _vp, _vp, _vp, _int,
                                    _vp, _vp, _vp]
    lib.mlk_simd.restype = _int
    lib.mlk_simd.argtypes = []
    lib.mlk_owners.restype = None
    lib.mlk_owners.argtypes = [_u64p, _long, _u64p, _u64p, _i8p, _long, _u64, _i64p, _u8p]
    lib.mlk_walk.restype = _long
    lib.mlk_walk.argtypes = [_vp, _long, _int, _int, _long, _long, _u64, _u64, _u64, _int, _u64,
                             _u64p, _u64p, _u8p, _long, _i64p]


def _load():
    if os.environ.get("GDB_MEMLEAK_NATIVE", "1").strip() in ("0", "no", "off", "false"):
        return None, "numpy (GDB_MEMLEAK_NATIVE=0)"
    cc = os.environ.get("CC") or "cc"
    try:
        d = cache_dir()
        _private_dir(d)
        path = _build(_SRC, d, cc)
        lib = ctypes.CDLL(path)
        _declare(lib)
        if lib.mlk_abi() != ABI:
            return None, "numpy (%s has ABI %d, want %d)" % (path, lib.mlk_abi(), ABI)
    except FileNotFoundError as e:
        return None, "numpy (no C compiler: %s)" % (e.filename or cc)
    except (OSError, subprocess.SubprocessError, AttributeError) as e:
        return None, "numpy (the kernel could not be built or loaded: %s)" % e
    return lib, "native%s (%s)" % (", AVX2" if lib.mlk_simd() else "", path)


def lib():
    """The loaded kernel, or None (then use the numpy/Python path)."""
    if not _state["tried"]:
        with _lock:
            if not _state["tried"]:
                _state["lib"], _state["status"] = _load()
                _state["tried"] = True
    return _state["lib"]


def status() -> str:
    """'native (PATH)' or 'numpy (why)': which path the census and the heap walk take."""
    lib()
    return _state["status"]


def _reset_for_tests():
    with _lock:
        _state.update(lib=None, tried=False, status="not loaded yet")


def host_swap(byteorder: str) -> int:
    """1 when target words must be byte-swapped on this host."""
    return int(byteorder != sys.byteorder)


# -- wrappers ------------------------------------------------------------------------------------

class PointsTable:
    """The census's lookup tables for sorted, distinct address points (uint64): the windows that
    hold them (at most 4, tested as ranges), else a bitset over hashed 1 MiB blocks (about 1 bit in
    32 set); then an open-addressing table of the points themselves."""
    BSHIFT = 20
    MAX_WINDOWS = 4

    def __init__(self, points: np.ndarray, windows=(), simd: bool = True):
        L = lib()
        pts = np.ascontiguousarray(points, dtype=np.uint64)
        n = len(pts)
        nblocks = len(np.unique(pts >> np.uint64(self.BSHIFT))) if n else 0
        self.bbits = max(12, min(26, int(32 * max(nblocks, 1) - 1).bit_length()))
        self.kbits = max(4, int(2 * max(n, 1) - 1).bit_length() + 1)
        self.bits = np.zeros(1 << max(0, self.bbits - 6), dtype=np.uint64)
        self.keys = np.zeros(1 << self.kbits, dtype=np.uint64)
        self.vals = np.full(1 << self.kbits, -1, dtype=np.int32)
        self.n = n
        self.simd = int(simd)
        L.mlk_points_table(pts, n, self.bits, self.bbits, self.BSHIFT, self.keys, self.vals, self.kbits)
        windows = sorted(windows)
        lo = np.array([a for a, _b in windows] or [0], dtype=np.uint64)
        hi = np.array([b for _a, b in windows] or [0], dtype=np.uint64)
        covered = n == 0 or (len(windows) and bool(np.all(
            pts <= hi[np.clip(np.searchsorted(lo, pts, side="right") - 1, 0, None)])) and pts[0] >= lo[0])
        if 0 < len(windows) <= self.MAX_WINDOWS and covered:
            self.nw, self.lo, self.span = len(windows), lo, hi - lo
        else:                   # bitset mode
            self.nw, self.lo, self.span = 0, np.zeros(1, dtype=np.uint64), np.zeros(1, dtype=np.uint64)
        self._fn = L.mlk_census
        # the arrays live as long as self: their addresses are passed as plain integers
        self._args = (self.nw, self.lo.ctypes.data, self.span.ctypes.data, self.bits.ctypes.data, self.bbits,
                      self.BSHIFT, self.keys.ctypes.data, self.vals.ctypes.data, self.kbits)

    def scan(self, data_address: int, nwords: int, ws: int, swap: int, counts=None, out_pos=None, out_idx=None) -> int:
        """Hits among the nwords words at data_address (the caller keeps that buffer alive):
        counted into ``counts`` (int64 per point) and/or written to out_pos/out_idx (int32, room
        for nwords); returns their number."""
        for a, dt in ((counts, np.int64), (out_pos, np.int32), (out_idx, np.int32)):
            if a is not None and (a.dtype != dt or not a.flags.c_contiguous or not a.flags.writeable
                                  or (a is counts and len(a) < self.n) or (a is not counts and len(a) < nwords)):
                raise ValueError("bad output array for the census kernel")
        return self._fn(data_address, nwords, ws, swap, *self._args,
                        None if counts is None else counts.ctypes.data,
                        None if out_pos is None else out_pos.ctypes.data,
                        None if out_idx is None else out_idx.ctypes.data, self.simd)


class HeapTally:
    """Per scan thread: the census at chunk start done by the kernel (mlk_census_heap): live hits
    and hits at a chunk start per point, (point, chunk size) pairs of primary points at a chunk
    start in a hash table (overflow: a list the caller tallies).  The chunk arrays must stay
    alive and unchanged while it is used."""
    TBITS = 14

    def __init__(self, table: PointsTable, primary: np.ndarray, caddr: np.ndarray, csize: np.ndarray,
                 cfree: np.ndarray, user_off: int, nwords: int):
        self.table = table
        n = table.n
        self.hits = np.zeros(n, dtype=np.int64)
        self.starts = np.zeros(n, dtype=np.int64)
        self.tkeys = np.zeros(1 << self.TBITS, dtype=np.uint64)
        self.tcounts = np.zeros(1 << self.TBITS, dtype=np.int64)
        self.tused = np.zeros(1, dtype=np.int64)
        self.novf = np.zeros(1, dtype=np.int64)
        self.ovf = np.empty(nwords, dtype=np.uint64)
        self.pos = np.empty(nwords, dtype=np.int32)
        self.idx = np.empty(nwords, dtype=np.int32)
        self.overflow: list = []
        self._keep = (primary, caddr, csize, cfree)
        for a, dt in zip(self._keep, (np.uint8, np.uint64, np.uint64, np.int8)):
            if a.dtype != dt or not a.flags.c_contiguous:
                raise ValueError("bad chunk array for the census kernel")
        self.nwords = nwords
        self._args = (primary.ctypes.data, caddr.ctypes.data, csize.ctypes.data, cfree.ctypes.data, len(caddr),
                      user_off, self.hits.ctypes.data, self.starts.ctypes.data, self.tkeys.ctypes.data,
                      self.tcounts.ctypes.data, self.TBITS, self.tused.ctypes.data, self.ovf.ctypes.data,
                      self.novf.ctypes.data)
        self._fn = lib().mlk_census_heap

    def scan(self, data_address: int, nwords: int, addr: int, ws: int, swap: int) -> int:
        if nwords > self.nwords:
            raise ValueError("chunk larger than the tally's scratch")
        t = self.table
        self.novf[0] = 0
        r = self._fn(data_address, nwords, addr, ws, swap, t.nw, t.lo.ctypes.data, t.span.ctypes.data,
                     t.bits.ctypes.data, t.bbits, t.BSHIFT, t.keys.ctypes.data, t.vals.ctypes.data, t.kbits, t.simd,
                     self.pos.ctypes.data, self.idx.ctypes.data, *self._args)
        if self.novf[0]:
            self.overflow.append(self.ovf[:int(self.novf[0])].copy())
        return r

    def pairs(self):
        """((point, chunk size) keys as point << 40 | size, counts) of this thread."""
        used = self.tcounts != 0
        keys, counts = self.tkeys[used], self.tcounts[used]
        if self.overflow:
            k2, c2 = np.unique(np.concatenate(self.overflow), return_counts=True)
            keys, counts = np.concatenate([keys, k2]), np.concatenate([counts, c2.astype(np.int64)])
        return keys, counts


def owners(where: np.ndarray, caddr: np.ndarray, csize: np.ndarray, cfree: np.ndarray, user_off: int):
    """(owner chunk index or -1, what: 0 outside, 1 at an in-use chunk's user start, 2 elsewhere in
    an in-use chunk, 3 in a free chunk) for sorted hit addresses."""
    n = len(where)
    owner = np.empty(n, dtype=np.int64)
    what = np.empty(n, dtype=np.uint8)
    lib().mlk_owners(np.ascontiguousarray(where, dtype=np.uint64), n, caddr, csize, cfree, len(caddr),
                     user_off, owner, what)
    return owner, what
