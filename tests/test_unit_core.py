"""Tier 1: the gdb-free core on a bytes-backed FakeTarget and captured text."""
import struct

import pytest

from gdb_memleak.core.errors import MemoryReadError
from gdb_memleak.core.maps import classify, heap_max_size
from gdb_memleak.core.memory.stream import iter_chunks, map_chunks
from gdb_memleak.core.memory.target import AT_RANDOM, FakeTarget, Region, ThreadInfo
from gdb_memleak.core.textparse import (human_size, parse_core_path_from_info_target, parse_info_auxv,
                                        parse_info_proc_mappings, parse_size, parse_smaps)

SMAPS = """\
55e240c0f000-55e240c30000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
Rss:                  12 kB
Private_Dirty:         8 kB
7fdc212d9000-7fdc212e9000 rw-s 00000000 00:01 5                          /SYSV00000000 (deleted)
Rss:                  64 kB
Private_Dirty:         4 kB
7fdc21298000-7fdc21299000 ---p 00000000 00:00 0 
Rss:                   0 kB
"""

INFO_PROC = """process 1234
Mapped address spaces:

          Start Addr           End Addr       Size     Offset  Perms  objfile
      0x555555554000     0x555555555000     0x1000        0x0  r--p   /tmp/a.out
      0x7ffff7dd3000     0x7ffff7df9000    0x26000        0x0  r--p   /usr/lib/x86_64-linux-gnu/libc.so.6
      0x7ffffffde000     0x7ffffffff000    0x21000        0x0  rw-p   [stack]
"""

INFO_AUXV = """33   AT_SYSINFO_EHDR      System-supplied DSO's ELF header 0x7ffff7fc1000
6    AT_PAGESZ            System page size               4096
25   AT_RANDOM            Address of 16 random bytes     0x7fffffffe389
31   AT_EXECFN            File name of executable        0x7fffffffefd5 "/tmp/a.out"
0    AT_NULL              End of vector                  0x0
"""


def test_parse_smaps():
    regs = parse_smaps(SMAPS)
    assert [r.path for r in regs] == ["[heap]", "/SYSV00000000 (deleted)", None]
    assert regs[0].rss == 12 * 1024 and regs[0].private_dirty == 8 * 1024
    assert regs[1].perms == "rw-s" and regs[2].perms == "---p"


def test_parse_info_proc_mappings_and_auxv():
    regs = parse_info_proc_mappings(INFO_PROC)
    assert len(regs) == 3 and regs[2].path == "[stack]" and regs[0].perms == "r--p"
    aux = parse_info_auxv(INFO_AUXV)
    assert aux[33] == 0x7ffff7fc1000 and aux[6] == 4096 and aux[31] == 0x7fffffffefd5 and aux[25] == 0x7fffffffe389
    text = "Local core dump file:\n\t`/tmp/core.77', file type elf64-x86-64.\n"
    assert parse_core_path_from_info_target(text) == "/tmp/core.77"


def test_sizes():
    assert parse_size("64K") == 65536 and parse_size("2G") == 2 << 30 and parse_size("0x10") == 16
    assert parse_size("1MiB") == 1 << 20
    with pytest.raises(ValueError):
        parse_size("lots")
    assert human_size(1536) == "1.5 KiB"


def _arena_bytes(start, size, ps=8):
    hdr = struct.pack("<4Q", start + 48, 0, size, size)  # ar_ptr just after heap_info, prev 0
    return hdr + bytes(size - len(hdr))


def test_classify_shapes_without_names():
    """A core-like target: no names; arena by heap_info, guard+stack by adjacency, stack by auxv."""
    hmax = heap_max_size(8)
    arena = 0x7f0000000000
    assert arena % hmax == 0
    guard, stack = 0x7f1000000000, 0x7f1000001000
    orphan_guard, orphan = 0x7f1000801000, 0x7f1000802000
    main_stack = 0x7ffc00000000
    heap = 0x555555600000
    heap_bytes = struct.pack("<QQ", 0, 0x291) + bytes(0x21000 - 16)
    segs = {arena: _arena_bytes(arena, 0x21000), heap: heap_bytes,
            stack: bytes(0x800000), orphan: bytes(0x800000), main_stack: bytes(0x21000)}
    regions = [Region(heap, heap + 0x21000, "rw-p"),
               Region(arena, arena + 0x21000, "rw-p"), Region(arena + 0x21000, arena + hmax, "---p"),
               Region(guard, guard + 0x1000, "---p"), Region(stack, stack + 0x800000, "rw-p"),
               Region(orphan_guard, orphan_guard + 0x1000, "---p"), Region(orphan, orphan + 0x800000, "rw-p"),
               Region(main_stack, main_stack + 0x21000, "rw-p")]
    threads = [ThreadInfo(1, 100, main_stack + 0x20000, 0), ThreadInfo(2, 101, stack + 0x7ff000, 0)]
    t = FakeTarget(segs, regions, threads, auxv={AT_RANDOM: main_stack + 0x20f00})
    got = {m.start: (m.kind, m.owner_lwp) for m in classify(t)}
    assert got[arena] == ("arena-heap", None) and got[arena + 0x21000][0] == "arena-heap"
    assert got[guard] == ("guard", None) and got[stack] == ("thread-stack", 101)
    assert got[orphan] == ("thread-stack", None) and got[orphan_guard][0] == "guard"
    assert got[main_stack] == ("stack", 100)
    assert got[heap][0] == "anon"   # no executable module known: the brk heap is not guessed


def test_iter_chunks_skips_holes():
    t = FakeTarget({0x10000: b"a" * 0x2000, 0x13000: b"b" * 0x1000})
    skipped = []
    got = [(a, bytes(d)) for a, d in iter_chunks(t, 0x10000, 0x14000, chunk=0x4000, skipped=skipped)]
    assert got == [(0x10000, b"a" * 0x2000), (0x13000, b"b" * 0x1000)]
    assert skipped == [(0x12000, 0x13000, "unreadable")]
    with pytest.raises(MemoryReadError):
        t.read(0x12000, 8)


class _FileBackedFake(FakeTarget):
    """Fast reads everywhere except ``slow`` (as for a core's file-backed gaps)."""

    def __init__(self, segments, slow=()):
        super().__init__(segments)
        self.slow = slow

    def fast_read_into(self, addr, buf):
        if any(a < addr + len(buf) and addr < b for a, b in self.slow):
            return False
        try:
            buf[:] = self.read(addr, len(buf))
        except MemoryReadError:
            return False
        return True


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_map_chunks_in_order_with_slow_and_unreadable_chunks(workers):
    data = bytes(range(256)) * 0x100           # 64 KiB
    t = _FileBackedFake({0x10000: data, 0x30000: data}, slow=[(0x14000, 0x15000)])

    class Scratch:
        def __init__(self):
            self.buf = bytearray(0x2000)

    skipped = []
    got = list(map_chunks(t, [(0x10000, 0x20000), (0x2f000, 0x40000)], 0x2000,
                          lambda a, d, sc: (a, bytes(d)), Scratch, None, skipped, workers=workers))
    # order kept; each result's bytes are the target's, even though every thread reuses its buffer
    assert [g[0] for g in got] == sorted(g[0] for g in got)
    for addr, n, (a2, b) in got:
        assert addr == a2 and n == len(b) and b == bytes(t.read(addr, n))
    assert sum(n for _, n, _ in got) == 0x10000 + 0x10000
    assert skipped == [(0x2f000, 0x30000, "unreadable")]


def test_map_chunks_interrupted_leaves_no_threads():
    import threading
    t = _FileBackedFake({0x10000: bytes(0x40000)})

    class Scratch:
        def __init__(self):
            self.buf = bytearray(0x1000)

    gen = map_chunks(t, [(0x10000, 0x50000)], 0x1000, lambda a, d, sc: len(d), Scratch, workers=2)
    with pytest.raises(KeyboardInterrupt):
        for i, _ in enumerate(gen):
            if i == 3:
                raise KeyboardInterrupt     # Ctrl-C while the pool has chunks in flight
    gen.close()
    assert not [th for th in threading.enumerate() if th.name.startswith("memleak-scan")]


def test_prefilter_windows_merge_only_across_code():
    from gdb_memleak.core.census import prefilter_windows
    from gdb_memleak.core.maps import Mapping
    maps = [Mapping(0x1000, 0x2000, "r--p", "file", "/exe"), Mapping(0x5000, 0x9000, "rw-p", "main-heap"),
            Mapping(0x10000, 0x20000, "r--p", "file", "/lib1"), Mapping(0x20000, 0x21000, "rw-p", "anon"),
            Mapping(0x21000, 0x30000, "r--p", "file", "/lib2")]
    wins = [(0x1100, 0x1200), (0x10100, 0x10200), (0x21100, 0x21200)]
    # the heap splits exe from lib1; lib1 and lib2 merge over code and a small anonymous .bss
    assert prefilter_windows(wins, maps) == [(0x1100, 0x1200), (0x10100, 0x21200)]
    assert prefilter_windows(wins, None) == wins


def _graph(n, edges):
    """CSR arrays (indptr, indices) of a small directed graph, as find_leaks builds them."""
    import numpy as np
    src = np.array([a for a, _ in edges], dtype=np.int64)
    dst = np.array([b for _, b in edges], dtype=np.int64)
    order = np.argsort(src, kind="stable")
    return np.searchsorted(src[order], np.arange(n + 1)).astype(np.int64), dst[order]


def test_mark_long_chain_and_wide_fanout():
    """Both marking paths: a 5000-long linked list (narrow) and a 3000-wide fan-out (numpy)."""
    import numpy as np
    from gdb_memleak.core.leaks import mark
    n = 5000 + 3001 + 10
    edges = [(i, i + 1) for i in range(4999)]
    edges += [(5000, 5001 + k) for k in range(3000)] + [(5001 + k, 5000) for k in range(3000)]
    indptr, indices = _graph(n, edges)
    seen = np.zeros(n, dtype=bool)
    mark(seen, np.array([0, 5000]), indptr, indices)
    assert seen[:8001].all() and not seen[8001:].any()


def test_split_direct_like_memcheck():
    """Chains: head direct; cycles: lowest index direct; chunks hanging off a cycle: indirect;
    a cycle reached from a direct leak: all indirect."""
    import numpy as np
    from gdb_memleak.core.leaks import split_direct
    edges = [(0, 1), (1, 2),                 # chain 0 -> 1 -> 2
             (3, 4), (4, 5), (5, 3), (5, 6),  # cycle 3-4-5 with a tail 6
             (7, 8), (8, 9), (9, 8)]          # 7 points into cycle 8-9
    indptr, indices = _graph(11, edges)
    leaked = np.ones(11, dtype=bool)
    leaked[10] = False
    direct = split_direct(leaked, indptr, indices)
    assert np.flatnonzero(direct).tolist() == [0, 3, 7]


@pytest.mark.parametrize("dtype", ["<u8", "<u4"])
def test_prefilter_plans_keep_every_hit(dtype):
    import numpy as np
    from gdb_memleak.core import census
    rng = np.random.default_rng(7)
    bits = 47 if dtype == "<u8" else 31
    wins = sorted((lo, lo + int(rng.integers(0, 5 << 20))) for lo in rng.integers(1 << 20, 1 << bits, 4).tolist())
    words = rng.integers(0, 1 << bits, 50000).astype(dtype)
    for lo, hi in wins:       # plant hits at both ends and just outside
        words[rng.integers(0, len(words), 4)] = [lo, hi, lo - 1, hi + 1]
    want = np.flatnonzero(np.any([(words >= lo) & (words <= hi) for lo, hi in wins], axis=0))
    for shift_cost in (0.0, 1e9):          # all-keys plan, all-ranges plan
        old = census._COST_SHIFT
        census._COST_SHIFT = shift_cost
        try:
            pf = census._Prefilter(wins, np.dtype(dtype), len(words))
        finally:
            census._COST_SHIFT = old
        got = pf(words)
        if shift_cost:      # ranges: exact
            assert not pf.keys and np.array_equal(got, want)
        else:               # 1 MiB blocks: every hit, and the rest only from the windows' blocks
            assert pf.keys and set(want.tolist()) <= set(got.tolist())
            blocks = {k for lo, hi in wins for k in range(lo >> 20, (hi >> 20) + 1)}
            assert all(int(words[i]) >> 20 in blocks for i in got)


def test_main_heap_first_chunk_after_a_static_tls_block():
    from gdb_memleak.core.maps import main_heap_first_chunk
    start, tls = 0x600000, 0x9c8          # a static executable's TLS block + struct pthread first
    first = start + ((tls + 16 + 15) & ~15) - 16
    body = bytearray(0x4000)
    for i in range(0, tls, 8):            # pointers and junk, as a TCB holds
        struct.pack_into("<Q", body, i, (start + i * 3) | (i & 1))
    at = first
    for size in [0x290] + [0x50] * 40:
        struct.pack_into("<QQ", body, at - start, 0, size | 1)
        at += size
    struct.pack_into("<QQ", body, at - start, 0, (start + len(body) - at) | 1)   # top to the end
    t = FakeTarget({start: bytes(body)})
    assert main_heap_first_chunk(t, start, start + len(body)) == first
    plain = FakeTarget({start: bytes(body[first - start:])})
    assert main_heap_first_chunk(plain, start, start + len(body) - (first - start)) == start
    assert main_heap_first_chunk(FakeTarget({start: bytes(0x4000)}), start, start + 0x4000) is None


def test_report_groups_mmapped_chunks_last_wherever_they_lie():
    """The report pairs its per-group class rows with arena_summaries (arenas in the order of
    their first heap): mmapped chunks between two arenas' heaps (qemu-user's layout) must not
    shift the pairing."""
    from types import SimpleNamespace as NS
    from gdb_memleak.core.commands.report import _segment_groups
    segs = [NS(kind="main", arena=0x100, start=0x1000), NS(kind="mmapped", arena=None, start=0x2000),
            NS(kind="thread", arena=0x5000030, start=0x5000000), NS(kind="mmapped", arena=None, start=0x6000000),
            NS(kind="thread", arena=0x9000030, start=0x9000000)]
    keys, groups = _segment_groups(NS(segments=segs))
    assert keys == [0x100, 0x5000030, 0x9000030, "mmapped"]
    assert groups == [0, 3, 1, 3, 2]
