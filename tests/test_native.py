"""The compiled kernel (gdb_memleak/core/native) against the numpy/Python code it replaces: the
census word scan, the census at chunk start and the heap chunk walk give identical results on
random and real data (64- and 32-bit words, both byte orders, chunk and window edges, corrupt
chunks, fenceposts, shape mode), and the tool says which path it runs."""
import os
import stat
import struct
import subprocess
import sys

import numpy as np
import pytest

from conftest import FIXTURES, ROOT, Running, run_cli

from gdb_memleak.core import native

pytestmark = pytest.mark.skipif(native.lib() is None, reason="no compiled kernel: " + native.status())


class _NoKernel:
    """Within the block, native.lib() is None: every caller takes its numpy/Python path."""

    def __enter__(self):
        self.saved = dict(native._state)
        native._state.update(lib=None, tried=True, status="numpy (test)")

    def __exit__(self, *exc):
        native._state.update(self.saved)


def _reference_hits(words, points):
    """(positions, point indices) of words equal to a point, by numpy."""
    pts = np.asarray(points, dtype=np.uint64)
    w = words.astype(np.uint64)
    i = np.searchsorted(pts, w)
    i[i >= len(pts)] = len(pts) - 1
    ok = pts[i] == w
    return np.flatnonzero(ok), i[ok]


def _scan(table, words, ws, swap, counts=None):
    n = len(words)
    pos = np.empty(max(n, 1), dtype=np.int32)
    idx = np.empty(max(n, 1), dtype=np.int32)
    raw = words.astype(words.dtype.newbyteorder(">" if swap else "<")) if ws else words
    buf = np.ascontiguousarray(raw).view(np.uint8)
    k = table.scan(buf.ctypes.data, n, ws, swap, counts, pos, idx)
    return pos[:k], idx[:k]


def test_status_names_the_path():
    assert native.status().startswith("native")
    with _NoKernel():
        assert native.status().startswith("numpy")


@pytest.mark.parametrize("ws", [8, 4])
@pytest.mark.parametrize("swap", [0, 1])
@pytest.mark.parametrize("nwin", [1, 2, 3, 4, 0, 7])
@pytest.mark.parametrize("simd", [True, False])
def test_census_scan_equals_numpy(ws, swap, nwin, simd):
    rng = np.random.default_rng(ws * 100 + swap * 10 + nwin)
    top = (1 << 47) if ws == 8 else (1 << 32)
    nw = max(nwin, 1)
    bases = sorted(int(b) & ~7 for b in rng.integers(1 << 20, top - (8 << 20), nw))
    points = sorted({b + int(o) * ws for b in bases for o in rng.integers(0, 50000, 40)})
    windows = []
    for b in bases:
        inside = [p for p in points if b <= p < b + 50000 * ws]
        if inside:
            windows.append((inside[0], inside[-1]))
    windows = sorted(set(windows))
    if nwin == 0:
        windows = []                        # bitset mode
    dt = np.uint64 if ws == 8 else np.uint32
    for n in (0, 1, 63, 64, 65, 127, 128, 129, 1000, 4099):
        words = rng.integers(0, top, n, dtype=np.uint64).astype(dt)
        if n:
            k = min(n, 300)
            at = rng.integers(0, n, k)
            words[at] = rng.choice(points, k)                     # hits
            words[0] = points[0]                                   # at both chunk edges
            words[-1] = points[-1]
            edges = [w for lo, hi in windows for w in (lo - ws, lo - 1, hi + 1, hi + ws)]
            if edges:
                words[rng.integers(0, n, min(n, 50))] = rng.choice(np.array(edges, dtype=np.uint64) % top, min(n, 50))
        table = native.PointsTable(np.array(points, dtype=np.uint64), windows, simd=simd)
        assert table.nw == (len(windows) if 0 < len(windows) <= 4 else 0)
        counts = np.zeros(len(points), dtype=np.int64)
        pos, idx = _scan(table, words, ws, swap, counts)
        want_pos, want_idx = _reference_hits(words, points)
        assert np.array_equal(pos, want_pos) and np.array_equal(idx, want_idx)
        assert np.array_equal(counts, np.bincount(want_idx, minlength=len(points)))


def test_points_table_refuses_windows_that_miss_a_point():
    pts = np.array([0x1000, 0x2000, 0x900000], dtype=np.uint64)
    t = native.PointsTable(pts, [(0x1000, 0x2000)])        # 0x900000 outside: bitset mode
    assert t.nw == 0
    words = pts.copy()
    pos, idx = _scan(t, words, 8, 0)
    assert pos.tolist() == [0, 1, 2]


# -- the census through census() on a fake target, kernel vs numpy ------------------------------

def _fake_census_target(ps, rng, nchunks=3000):
    """A heap of random chunks (some free) holding vptrs of 3 classes at chunk starts, inside
    chunks, in free chunks and outside the heap; windows and points as the index has them."""
    from gdb_memleak.core.heap import Heap
    from gdb_memleak.core.memory.target import FakeTarget, Region
    from gdb_memleak.core.vtables import VClass, VtableIndex
    base = 0x10000000
    pts = np.array([0x4000010, 0x4000030, 0x4000050, 0x4000070, 0x5000010], dtype=np.uint64)
    cls = np.array([0, 0, 1, 2, 2], dtype=np.int64)
    prim = np.array([True, False, True, True, False])
    sizes = (rng.integers(2, 20, nchunks) * 16).astype(np.uint64)
    addrs = base + np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.uint64)
    end = int(addrs[-1] + sizes[-1]) + 4096
    mem = bytearray(end - base)
    fmt = "<Q" if ps == 8 else "<I"
    free = (rng.random(nchunks) < 0.2).astype(np.int8)
    for a, s in zip(addrs.tolist(), sizes.tolist()):
        for off in rng.choice(np.arange(0, s, ps), min(3, s // ps), replace=False).tolist():
            struct.pack_into(fmt, mem, a - base + off, int(rng.choice(pts)))
        struct.pack_into(fmt, mem, a - base + 2 * ps, int(rng.choice(pts)))
    for off in range(end - base - 4096, end - base, 64):       # outside every chunk
        struct.pack_into(fmt, mem, off, int(pts[int(rng.integers(0, len(pts)))]))
    target = FakeTarget({base: bytes(mem)}, [Region(base, end, "rw-p")], pointer_size=ps)
    heap = Heap([], addrs, sizes, free, ps)
    classes = [VClass("3Foo", "m", "symbol", 0x4000000), VClass("3Bar", "m", "symbol", 0x4000040),
               VClass("3Baz", "m", "symbol", 0x4000060)]
    index = VtableIndex(classes, pts, cls, prim, np.zeros(len(pts), dtype=np.int64),
                        windows=[(0x4000010, 0x4000070), (0x5000010, 0x5000010)])
    return target, index, heap, [(base, end)]


def _result(res):
    return (res.scanned_bytes, res.point_hits.tolist(),
            {k: (c.count, c.secondary, c.embedded, c.examples, sorted(c.sizes.items()), c.size)
             for k, c in sorted(res.counts.items())})


@pytest.mark.parametrize("ps", [8, 4])
@pytest.mark.parametrize("threads", ["1", "2"])
def test_census_kernel_equals_numpy(ps, threads, monkeypatch):
    from gdb_memleak.core import census as C
    monkeypatch.setenv("GDB_MEMLEAK_THREADS", threads)
    monkeypatch.setattr(C, "CHUNK", 4096 + 64 * ps)        # many chunks, edges not at blocks of 64
    rng = np.random.default_rng(ps)
    target, index, heap, ranges = _fake_census_target(ps, rng)
    for h, ex in ((None, 0), (None, 3), (heap, 0), (heap, 2)):
        got = _result(C.census(target, index, ranges, h, ex))
        with _NoKernel():
            want = _result(C.census(target, index, ranges, h, ex))
        assert got == want
        assert sum(got[1]) > 0


# -- the heap walk, kernel vs Python --------------------------------------------------------------

def _Lay(ps, big=False):
    from gdb_memleak.core.glibc import Layout
    return Layout(ps, "big" if big else "little", "x86-64" if ps == 8 else "i386")


def _heap_bytes(ps, rng, n, big=False, corrupt=None, fencepost=False, top=True):
    """A chain of n chunks from offset 0 (sizes MALLOC_ALIGNMENT multiples, random flags), then
    a top header (or a fencepost); ``corrupt`` = (chunk number, size word) replaces a header."""
    lay = _Lay(ps, big)
    e = ">" if big else "<"
    fmt = e + ("Q" if ps == 8 else "I")
    sizes = [lay.minsize + lay.align * int(k) for k in rng.integers(0, 12, n)]
    total = sum(sizes) + 64 * ps
    mem = bytearray(total)
    a = 0
    heads = []
    for k, s in enumerate(sizes):
        heads.append(a)
        word = s | int(rng.integers(0, 2)) | (4 if rng.random() < 0.1 else 0)
        if corrupt and corrupt[0] == k:
            word = corrupt[1]
        struct.pack_into(fmt, mem, a + ps, word)
        a += s
    if fencepost:
        struct.pack_into(fmt, mem, a + ps, 2 * ps | 1)
    elif top:
        struct.pack_into(fmt, mem, a + ps, (total - a) | 1)
    return bytes(mem), a, heads, lay


def _walk_both(target, first, end, lay, shape=False, window=None, monkeypatch=None):
    from gdb_memleak.core import heap as H
    if window:
        monkeypatch.setattr(H._Window, "WINDOW", window)
    got = H._walk(H._Window(target, first, end), first, end, lay, shape)
    with _NoKernel():
        want = H._walk(H._Window(target, first, end), first, end, lay, shape)
    for x, y in ((got, want),):
        assert (x.pos, x.reason, x.pos_pbit) == (y.pos, y.reason, y.pos_pbit)
        for f in ("addrs", "sizes", "pbits"):
            assert getattr(x, f).dtype == getattr(y, f).dtype
            assert np.array_equal(getattr(x, f), getattr(y, f)), f
    return got


@pytest.mark.parametrize("ps", [8, 4])
@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("window", [4096, 8192 + 4096, None])
def test_walk_kernel_equals_python(ps, big, window, monkeypatch):
    from gdb_memleak.core.memory.target import FakeTarget
    rng = np.random.default_rng(ps + 2 * big + (window or 0))
    base = 0x20000000
    cases = []
    mem, end, heads, lay = _heap_bytes(ps, rng, 3000, big)
    cases.append(("clean", mem, end, heads, lay, False))
    mem2, end2, heads2, lay2 = _heap_bytes(ps, rng, 3000, big, fencepost=True)
    cases.append(("fencepost", mem2, end2 + 4096, heads2, lay2, False))
    for bad in (8 | 1, 0x13, 2 * ps + 0x2 | 0x2, lay.minsize | 2, 0, (1 << (8 * ps - 1)) | 0x10):
        m3, e3, h3, l3 = _heap_bytes(ps, rng, 2000, big, corrupt=(1500, bad))
        cases.append(("corrupt %#x" % bad, m3, e3, h3, l3, False))
    m4, e4, h4, l4 = _heap_bytes(ps, rng, 1000, big, corrupt=(999, 1 << 30 | 0x10))   # runs past the end
    cases.append(("runs past", m4, e4, h4, l4, False))
    m5, e5, h5, l5 = _heap_bytes(ps, rng, 800, big, top=False)                       # shape mode: last = top
    cases.append(("shape", m5, e5 + 64 * ps - 16, h5, l5, True))
    for name, m, e, h, lay, shape in cases:
        t = FakeTarget({base: m}, pointer_size=ps)
        t.byteorder = "big" if big else "little"
        w = _walk_both(t, base, base + e, lay, shape, window, monkeypatch)
        if name == "clean":
            assert w.reason == "end" and len(w.addrs) == len(h)
        assert len(w.addrs) > 0, name


@pytest.mark.parametrize("ps", [8, 4])
def test_walk_stops_at_unreadable_memory_the_same_way(ps, monkeypatch):
    from gdb_memleak.core.memory.target import FakeTarget
    rng = np.random.default_rng(5)
    mem, end, heads, lay = _heap_bytes(ps, rng, 3000, False)
    base = 0x30000000
    cut = (len(mem) // 2) & ~4095
    # two readable pieces with a hole of two pages between them
    t = FakeTarget({base: mem[:cut], base + cut + 8192: mem[cut + 8192:]}, pointer_size=ps)
    for window in (4096, 1 << 20):
        w = _walk_both(t, base, base + end, lay, False, window, monkeypatch)
        assert w.reason.startswith("bad") and len(w.addrs)


# -- real data: fixtures' cores through both paths ------------------------------------------------

@pytest.fixture(scope="module")
def census_core(workdir):
    sys.path.insert(0, os.path.dirname(__file__))
    from test_census import _build_variant
    exe = _build_variant(workdir, "pie")
    run = Running([exe])
    core = run.gcore(os.path.join(os.path.dirname(exe), "native.core"))
    yield exe, core
    run.kill()


def _cli_json(core, args, tmp_path, name, native_on):
    out = os.path.join(str(tmp_path), name)
    env = dict(os.environ, GDB_MEMLEAK_NATIVE="1" if native_on else "0")
    r = subprocess.run([sys.executable, "-m", "gdb_memleak", "--core", core, "--no-progress"] + args
                       + ["--json", out], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    import json
    doc = json.load(open(out))
    for k in ("seconds", "setup_seconds", "time"):
        doc.pop(k, None)
    return doc


@pytest.mark.parametrize("args", [["vtable-census", "--heap", "--raw"],
                                  ["vtable-census", "--heap", "--at-chunk-start", "--raw"],
                                  ["vtable-census", "--all", "--examples", "2"],
                                  ["heap"]])
def test_real_core_same_answer_both_paths(census_core, tmp_path, args):
    _exe, core = census_core
    a = _cli_json(core, args, tmp_path, "a.json", True)
    b = _cli_json(core, args, tmp_path, "b.json", False)
    assert a == b


def test_snapshot_of_the_big_heap_fixture_both_paths(workdir, tmp_path):
    """bigheap (a few MiB, payloads): the snapshot's heap and census agree between the paths."""
    exe = os.path.join(str(workdir), "bigheap-native")
    if not os.path.exists(exe):
        subprocess.run(["g++", "-O1", "-pthread", os.path.join(FIXTURES, "bigheap.cpp"), "-o", exe], check=True)
    run = Running([exe, "8", "16", "arena"])
    try:
        core = run.gcore(os.path.join(str(tmp_path), "bh.core"))
    finally:
        run.kill()
    docs = []
    for on in ("1", "0"):
        out = os.path.join(str(tmp_path), "s%s.json" % on)
        env = dict(os.environ, GDB_MEMLEAK_NATIVE=on)
        r = subprocess.run([sys.executable, "-m", "gdb_memleak", "--core", core, "--no-progress", "snapshot", out],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        import json
        d = json.load(open(out))
        docs.append((d["heap"], d["census"]))
    assert docs[0] == docs[1]
    assert docs[0][1] and docs[0][0]["in_use_chunks"] > 10000


# -- the private cache ----------------------------------------------------------------------------

def test_cache_is_private_and_rebuilt_elsewhere(tmp_path):
    cache = tmp_path / "cache"
    env = dict(os.environ, XDG_CACHE_HOME=str(cache))
    code = "from gdb_memleak.core import native; print(native.status())"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.stdout.startswith("native") and str(cache) in r.stdout, r.stdout + r.stderr
    d = cache / "gdb_memleak"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    libs = list(d.iterdir())
    assert len(libs) == 1 and not stat.S_IMODE(libs[0].stat().st_mode) & 0o077
    os.chmod(d, 0o777)          # a folder others can write to is never used
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.stdout.startswith("numpy") and "writable by others" in r.stdout
    os.chmod(d, 0o700)
    env2 = dict(env, CC="/nonexistent/cc")
    (d / libs[0].name).unlink()
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env2, capture_output=True, text=True)
    assert r.stdout.startswith("numpy") and "compiler" in r.stdout, r.stdout
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(env, GDB_MEMLEAK_NATIVE="0"),
                       capture_output=True, text=True)
    assert r.stdout.startswith("numpy (GDB_MEMLEAK_NATIVE=0)")


def test_version_says_which_path(tmp_path):
    r = run_cli("--version")
    assert "kernel: native" in r.stdout, r.stdout
    env = dict(os.environ, GDB_MEMLEAK_NATIVE="0")
    r = subprocess.run([sys.executable, "-m", "gdb_memleak", "--version"], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    assert "kernel: numpy (GDB_MEMLEAK_NATIVE=0)" in r.stdout
