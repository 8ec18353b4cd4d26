"""glibc malloc's own structures, found the way glibc finds them, without libc debug info.

- ``main_arena`` (a ``struct malloc_state`` in libc's .data, or the executable's when static)
  is recognised by its bins: an empty bin's fd and bk both point at the bin itself (as a chunk,
  2*SIZE_SZ before the fd slot), and every other bin points at chunks.
- Its ``next`` field is a ring through every arena's ``malloc_state``.
- A thread arena's heaps: the heap holding its top chunk is ``top & ~(HEAP_MAX - 1)``; each
  ``heap_info {ar_ptr, prev, size, mprotect_size, pagesize}`` chains to the arena's previous
  heap.  A heap's extent is ``[h, h + size)``, whatever the kernel merged into one mapping.
- ``mp_`` (``struct malloc_par``) is found by its tail: ``sbrk_base`` (the main heap's start)
  followed by ``tcache_bins``, ``tcache_max_bytes``, ``tcache_count``, ``tcache_unsorted_limit``.
- Each thread's tcache is glibc's TLS variable ``tcache``: a word at one fixed offset from
  every thread's thread pointer (the static TLS layout is the same for all threads) that points
  at a ``tcache_perthread_struct`` chunk.

Offsets are glibc >= 2.27's (``have_fastchunks``), checked on 2.36 with libc6-dbg's types:
malloc_state is 2200 bytes on x86-64 (fastbinsY at 16, top 96, bins 112, next 2160,
system_mem 2184), heap_info 48.  Everything read is validated; nothing is trusted blindly.
"""
from __future__ import annotations

import struct
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from .errors import MemoryReadError
from .memory.target import Target

NBINS = 128
TCACHE_BINS = 64
PREV_INUSE, IS_MMAPPED, NON_MAIN_ARENA = 1, 2, 4
MAX_ARENAS = 4096
MAX_HEAPS = 1 << 16
TLS_WINDOW = 1 << 20        # how far from a thread pointer glibc's `tcache` variable is looked for


@dataclass
class Finding:
    """One kind of problem, with every place it was seen (grouped: never a line per chunk)."""
    kind: str
    message: str
    addresses: List[int] = field(default_factory=list)
    count: int = 0

    SHOW = 4

    def text(self) -> str:
        if not self.addresses:
            return self.message
        shown = ", ".join("0x%x" % a for a in self.addresses[:self.SHOW])
        more = " …" if self.count > self.SHOW else ""
        if self.count == 1:
            return "%s (at %s)" % (self.message, shown)
        return "%s (%d times: %s%s)" % (self.message, self.count, shown, more)

    @property
    def address(self) -> Optional[int]:
        return self.addresses[0] if self.addresses else None

    def to_json(self) -> dict:
        return {"kind": self.kind, "message": self.message, "count": self.count,
                "addresses": [hex(a) for a in self.addresses[:16]]}


class Findings(list):
    """A list of Finding, grouped by (kind, message)."""

    def add(self, kind: str, message: str, address: Optional[int] = None, count: int = 1):
        for f in self:
            if f.kind == kind and f.message == message:
                break
        else:
            f = Finding(kind, message)
            self.append(f)
        f.count += count
        if address is not None and len(f.addresses) < 16:
            f.addresses.append(address)
        return f


def malloc_alignment(arch: str, ps: int) -> int:
    """glibc's MALLOC_ALIGNMENT: max(2 * SIZE_SZ, alignof(long double)); i386 raised it to 16 in
    2.26; 32-bit ARM's long double is a double (8)."""
    return 8 if (arch == "arm" and ps == 4) else 16


class Layout:
    """glibc's malloc structure offsets and constants for a pointer size and architecture
    (glibc >= 2.27)."""

    def __init__(self, ps: int, byteorder: str = "little", arch: str = ""):
        self.ps = ps
        self.e = "<" if byteorder == "little" else ">"
        self.wfmt = "Q" if ps == 8 else "I"
        self.dt = np.dtype(self.e + ("u8" if ps == 8 else "u4"))
        self.align = malloc_alignment(arch, ps)
        self.hdr = 2 * ps                        # CHUNK_HDR_SZ
        self.minsize = (4 * ps + self.align - 1) & ~(self.align - 1)      # MINSIZE
        self.heap_max = (64 << 20) if ps == 8 else (1 << 20)
        # NFASTBINS = fastbin_index(request2size(MAX_FAST_SIZE)) + 1, MAX_FAST_SIZE = 80 * SIZE_SZ / 4
        self.nfast = ((self.request2size(80 * ps // 4)) >> (4 if ps == 8 else 3)) - 2 + 1
        self.fb_off = 16 if ps == 8 else 12      # after mutex, flags, have_fastchunks
        self.top_off = self.fb_off + self.nfast * ps
        self.bins_off = self.top_off + 2 * ps
        self.binmap_off = self.bins_off + (2 * NBINS - 2) * ps
        self.next_off = self.binmap_off + 16
        self.next_free_off = self.next_off + ps
        self.attached_off = self.next_off + 2 * ps
        self.sysmem_off = self.next_off + 3 * ps
        self.state_size = self.next_off + 5 * ps
        # heap_info {ar_ptr, prev, size, mprotect_size, pagesize; pad}: chunk2mem of what follows is aligned
        self.heap_info_size = self.up(5 * ps + self.hdr) - self.hdr
        # tcache_perthread_struct {uint16_t counts[64]; tcache_entry *entries[64]} as a chunk
        # (glibc < 2.30 had char counts: both sizes are accepted)
        self.tcache_layouts = {self.request2size(2 * TCACHE_BINS + ps * TCACHE_BINS): 2,
                               self.request2size(TCACHE_BINS + ps * TCACHE_BINS): 1}

    def up(self, n: int) -> int:
        return (n + self.align - 1) & ~(self.align - 1)

    def request2size(self, req: int) -> int:
        return max(self.minsize, (req + self.ps + self.align - 1) & ~(self.align - 1))

    def aligned_chunk(self, addr: int) -> int:
        """The first chunk position >= addr whose user pointer is MALLOC_ALIGNMENT-aligned."""
        return addr + ((-(addr + self.hdr)) % self.align)

    def tcache_bin_size(self, b: int) -> int:
        return self.minsize + b * self.align

    def fastbin_size(self, b: int) -> int:
        return (b + 2) * (16 if self.ps == 8 else 8)

    def words(self, data) -> np.ndarray:
        n = len(data) // self.ps
        return np.frombuffer(data, dtype=self.dt, count=n)


@dataclass
class HeapInfo:
    address: int
    ar_ptr: int
    prev: int
    size: int
    mprotect_size: int
    first: int = 0                 # first chunk
    current: bool = False          # holds the arena's top

    @property
    def end(self) -> int:
        return self.address + self.size


@dataclass
class Arena:
    address: int
    main: bool
    top: int
    top_size: int
    system_mem: int
    next: int
    flags: int
    attached_threads: int
    fastbins: Tuple[int, ...] = ()
    heaps: List[HeapInfo] = field(default_factory=list)     # oldest first (thread arenas)

    def to_json(self) -> dict:
        return {"address": hex(self.address), "main": self.main, "top": hex(self.top),
                "top_size": self.top_size, "system_mem": self.system_mem,
                "attached_threads": self.attached_threads,
                "heaps": [{"start": hex(h.address), "end": hex(h.end), "size": h.size,
                           "first_chunk": hex(h.first)} for h in self.heaps]}


@dataclass
class MallocPar:
    address: int
    sbrk_base: int
    n_mmaps: int
    mmapped_mem: int
    max_n_mmaps: int
    tcache_bins: int
    tcache_count: int

    def to_json(self) -> dict:
        return {"address": hex(self.address), "sbrk_base": hex(self.sbrk_base), "n_mmaps": self.n_mmaps,
                "mmapped_mem": self.mmapped_mem, "tcache_bins": self.tcache_bins,
                "tcache_count": self.tcache_count}


@dataclass
class Tcache:
    lwp: int
    thread_pointer: int
    table: int                     # tcache_perthread_struct (user address), 0 when none
    counts_width: int = 2


@dataclass
class GlibcModel:
    layout: Layout
    main_arena: Optional[int] = None
    arenas: List[Arena] = field(default_factory=list)
    mp: Optional[MallocPar] = None
    tcaches: List[Tcache] = field(default_factory=list)
    tls_offset: Optional[int] = None      # of `tcache` from the thread pointer
    how: str = "none"                     # arena ring | fallback: ...
    findings: Findings = field(default_factory=Findings)

    def heaps(self) -> List[Tuple[Arena, HeapInfo]]:
        return [(a, h) for a in self.arenas for h in a.heaps]

    @property
    def main(self) -> Optional[Arena]:
        return next((a for a in self.arenas if a.main), None)


# -- main_arena ---------------------------------------------------------------------------------

def _writable_ranges(target: Target, maps):
    return [(m.start, m.end) for m in maps if "w" in m.perms[:3]]


def _in_ranges(ranges, addr: int) -> bool:
    return any(a <= addr < b for a, b in ranges)


def _candidate_segments(target: Target):
    """Writable PT_LOAD segments where main_arena can be: libc's, else (static) the executable's,
    else every module's."""
    mods = target.modules()
    libc = [m for m in mods if m.name.startswith("libc.so") or m.name.startswith("libc-")]
    order = libc + [m for m in mods if m.is_main] + [m for m in mods if m not in libc and not m.is_main]
    seen = set()
    for mod in order:
        for a, b, flags in mod.segments:
            if flags & 2 and (a, b) not in seen:
                seen.add((a, b))
                yield mod, a, b


def _segment_data(target: Target, lay: Layout):
    """(start, bytes) of each candidate segment, read once per target (main_arena and mp_ are
    both looked for there)."""
    cached = getattr(target, "_glibc_segments", None)
    if cached is None:
        cached = []
        for _mod, a, b in _candidate_segments(target):
            a -= a % lay.ps
            data = target.try_read(a, b - a - (b - a) % lay.ps)
            if data is not None:
                cached.append((a, bytes(data)))
        target._glibc_segments = cached
    return cached


def find_main_arena(target: Target, lay: Layout, writable) -> Optional[int]:
    ps = lay.ps
    for a, data in _segment_data(target, lay):
        w = lay.words(data)
        n = len(w)
        if n < lay.state_size // ps:
            continue
        addrs = np.uint64(a) + np.arange(n, dtype=np.uint64) * np.uint64(ps)
        own = (addrs - np.uint64(2 * ps)).astype(lay.dt)
        empty = np.flatnonzero((w[:-1] == own[:-1]) & (w[1:] == own[:-1]))
        if not len(empty):
            continue
        # every empty bin's fd slot k gives candidates base = slot - bins_off - 2*ps*j
        tried = set()
        for k in empty.tolist():
            slot = a + k * ps
            for j in range(NBINS - 1):
                base = slot - lay.bins_off - 2 * ps * j
                if base < a or base in tried:
                    continue
                tried.add(base)
                if _arena_shape(lay, w, (base - a) // ps, base, writable):
                    return base
            if len(tried) > 20000:
                break
    return None


def _arena_shape(lay: Layout, w: np.ndarray, i: int, base: int, writable) -> bool:
    """Does the malloc_state at word index ``i`` of ``w`` (address ``base``) look like one?"""
    ps = lay.ps
    if i + lay.state_size // ps > len(w):
        return False
    mutex, flags, have_fast = struct.unpack_from(lay.e + "iii", w[i:i + 3].tobytes(), 0)
    if not (0 <= mutex <= 2 and 0 <= flags <= 7 and have_fast in (0, 1)):
        return False
    top = int(w[i + lay.top_off // ps])
    if not top or top % ps or not _in_ranges(writable, top):
        return False
    bins = w[i + lay.bins_off // ps:i + lay.binmap_off // ps].astype(np.uint64)
    fd, bk = bins[0::2], bins[1::2]
    own = np.uint64(base + lay.bins_off - 2 * ps) + np.arange(len(fd), dtype=np.uint64) * np.uint64(2 * ps)
    is_empty = (fd == own) & (bk == own)
    if not is_empty.any():
        return False
    used = ~is_empty
    if ((fd[used] == own[used]) | (bk[used] == own[used])).any():
        return False
    if (fd[used] == 0).any() or (bk[used] == 0).any() or (fd[used] % np.uint64(ps)).any():
        return False
    nxt = int(w[i + lay.next_off // ps])
    return nxt == base or (nxt and nxt % ps == 0 and _in_ranges(writable, nxt))


# -- arenas and heaps ---------------------------------------------------------------------------

def read_arena(target: Target, lay: Layout, address: int, main: bool) -> Arena:
    ps = lay.ps
    raw = bytes(target.read(address, lay.state_size))
    w = lay.words(raw)
    _mutex, flags = struct.unpack_from(lay.e + "ii", raw, 0)
    top = int(w[lay.top_off // ps])
    top_size = 0
    if top:
        try:
            top_size = target.read_word(top + ps) & ~7
        except MemoryReadError:
            top_size = 0
    return Arena(address, main, top, top_size, int(w[lay.sysmem_off // ps]), int(w[lay.next_off // ps]),
                 flags, int(w[lay.attached_off // ps]),
                 tuple(int(x) for x in w[lay.fb_off // ps:lay.fb_off // ps + lay.nfast]))


def read_heap_info(target: Target, lay: Layout, h: int) -> HeapInfo:
    ar_ptr, prev, size, mprot = target.read_words(h, 4)
    return HeapInfo(h, ar_ptr, prev, size, mprot)


def _heap_info_ok(lay: Layout, hi: HeapInfo) -> bool:
    return (hi.address % lay.heap_max == 0 and 0 < hi.size <= lay.heap_max
            and hi.size <= hi.mprotect_size <= lay.heap_max and hi.prev % lay.heap_max == 0)


def thread_arena_heaps(target: Target, lay: Layout, arena: Arena, findings: Findings) -> List[HeapInfo]:
    """The heaps of a thread arena, oldest first, from the heap holding its top along ``prev``."""
    out: List[HeapInfo] = []
    h = arena.top & ~(lay.heap_max - 1)
    seen = set()
    while h:
        if h in seen:
            findings.add("heap-info-loop", "heap_info chain of an arena loops back on itself", h)
            break
        seen.add(h)
        try:
            hi = read_heap_info(target, lay, h)
        except MemoryReadError:
            findings.add("heap-info-unreadable", "heap_info unreadable: heaps before it are not walked", h)
            break
        if hi.ar_ptr != arena.address or not _heap_info_ok(lay, hi):
            findings.add("heap-info-bad", "heap_info does not belong to its arena or is malformed: "
                         "heaps before it are not walked", h)
            break
        out.append(hi)
        if len(out) > MAX_HEAPS:
            break
        h = hi.prev
    out.reverse()
    if out:
        out[-1].current = True
        first = out[0]
        if not (first.address < arena.address < first.address + lay.heap_info_size + 64):
            # the arena's first heap holds its malloc_state right after heap_info
            findings.add("heap-info-chain-short", "an arena's oldest reachable heap does not hold its "
                         "malloc_state: older heaps may be missing", arena.address)
        for hi in out:
            if hi.address < arena.address < hi.address + lay.heap_max:
                hi.first = lay.aligned_chunk(arena.address + lay.state_size)
            else:
                hi.first = hi.address + lay.heap_info_size
    return out


def find_mp(target: Target, lay: Layout, main_heap_lo: int, main_heap_hi: int) -> Optional[MallocPar]:
    """glibc's mp_ from its tail: sbrk_base in [main_heap_lo, main_heap_hi), then tcache_bins <= 64,
    tcache_max_bytes within bin tcache_bins-1, tcache_count <= 65535; before sbrk_base
    mmapped_mem, max_mmapped_mem and four ints n_mmaps, n_mmaps_max, max_n_mmaps,
    no_dyn_threshold (on 64-bit glibc >= 2.35 they follow an int, so a hole may sit before
    mmapped_mem: both positions are tried)."""
    ps = lay.ps
    for a, raw in _segment_data(target, lay):
        w = lay.words(raw).astype(np.uint64)
        if len(w) < 12:
            continue
        cand = np.flatnonzero((w[:-4] >= np.uint64(main_heap_lo)) & (w[:-4] < np.uint64(main_heap_hi))
                              & (w[1:-3] <= np.uint64(TCACHE_BINS)) & (w[3:-1] <= np.uint64(65535)))
        for k in cand.tolist():
            bins, maxb, count = int(w[k + 1]), int(w[k + 2]), int(w[k + 3])
            if bins:
                hi_ = lay.tcache_bin_size(bins - 1) - ps
                lo_ = lay.tcache_bin_size(bins - 2) - ps if bins > 1 else 0
                if not (lo_ < maxb <= hi_):
                    continue
            elif maxb:
                continue
            if k < 6:
                continue
            mmapped_mem, max_mmapped = int(w[k - 2]), int(w[k - 1])
            if mmapped_mem % 4096 or mmapped_mem > max_mmapped:
                continue
            for hole in ((4, 0) if ps == 8 else (0,)):
                ints = (k - 2) * ps - hole - 16
                if ints < 0:
                    continue
                n_mmaps, n_max, max_n, no_dyn = struct.unpack_from(lay.e + "iiii", raw, ints)
                if (0 <= n_mmaps <= max_n and n_max >= 0 and no_dyn in (0, 1)
                        and (n_mmaps == 0) == (mmapped_mem == 0)):
                    return MallocPar(a + ints, int(w[k]), n_mmaps, mmapped_mem, max_n, bins, count)
    return None


# -- tcache through TLS ---------------------------------------------------------------------------

def _tcache_chunk_width(target: Target, lay: Layout, user: int) -> Optional[int]:
    """counts width (1 or 2) when ``user`` is the user pointer of an in-use chunk of a
    tcache_perthread_struct's size, else None."""
    if not user or user % lay.align:
        return None
    try:
        sz = target.read_word(user - lay.ps)
    except MemoryReadError:
        return None
    if sz & IS_MMAPPED:
        return None
    return lay.tcache_layouts.get(sz & ~7)


def find_tcaches(target: Target, lay: Layout, tps: Dict[int, int], model: GlibcModel, maps,
                 heap_ranges: List[Tuple[int, int]], variant2: bool = True) -> None:
    """Each live thread's tcache: glibc's TLS variable ``tcache`` sits at one offset from every
    thread's thread pointer.  That offset is the one at which, for the most threads, a word
    points at the user area of a tcache_perthread_struct-sized chunk inside a heap (ties: the
    offset closest to the thread pointer).  x86 keeps static TLS below the thread pointer
    (TLS variant II); other architectures above it."""
    from .maps import mapping_at
    if not tps or not heap_ranges:
        return
    ps = lay.ps
    lo_arr = np.array([a for a, _ in heap_ranges], dtype=np.uint64)
    hi_arr = np.array([b for _, b in heap_ranges], dtype=np.uint64)
    hits: Counter = Counter()
    sizes: Dict[int, Optional[int]] = {}
    for n, (lwp, tp) in enumerate(sorted(tps.items())):
        if n >= 16 and hits:
            break               # the offset is settled; the rest only read that word
        m = mapping_at(maps, tp)
        if m is None:
            continue
        lo = max(m.start, tp - TLS_WINDOW)
        hi = tp if variant2 else min(m.end, tp + TLS_WINDOW)
        if hi <= lo:
            continue
        data = target.try_read(lo, hi - lo)
        if data is None:
            continue
        w = lay.words(bytes(data)).astype(np.uint64)
        k = np.searchsorted(lo_arr, w, side="right") - 1
        kk = np.clip(k, 0, None)
        ok = (k >= 0) & (w < hi_arr[kk]) & (w % np.uint64(lay.align) == 0)
        for idx in np.flatnonzero(ok).tolist():
            v = int(w[idx])
            if v not in sizes:
                sizes[v] = _tcache_chunk_width(target, lay, v)
            if sizes[v]:
                hits[lo + idx * ps - tp] += 1
    if not hits:
        return
    # a real tcache's table is one: counts within mp_.tcache_count, an entry exactly where the
    # count is not 0, entries pointing into the heaps (a freed table-sized chunk, or a program's
    # own pointer to one, is not); then the most threads; then the nearest
    cands = sorted(hits.items(), key=lambda kv: (-kv[1], abs(kv[0])))[:8]
    limit = model.mp.tcache_count if model.mp is not None else 0xFFFF

    def plausible(off):
        n = 0
        for lwp, tp in tps.items():
            try:
                table = target.read_word(tp + off)
            except MemoryReadError:
                continue
            if table and _table_plausible(target, lay, table, lo_arr, hi_arr, limit):
                n += 1
        return n
    off = max(cands, key=lambda kv: (plausible(kv[0]), kv[1], -abs(kv[0])))[0]
    model.tls_offset = off
    for lwp, tp in sorted(tps.items()):
        try:
            table = target.read_word(tp + off)
        except MemoryReadError:
            model.findings.add("tcache-pointer-unreadable", "a thread's tcache pointer is unreadable "
                               "(its free chunks count as in use)", tp + off)
            continue
        width = _tcache_chunk_width(target, lay, table) if table else None
        if table and width is None:
            model.findings.add("tcache-pointer-bad", "a thread's tcache pointer does not point at a tcache "
                               "(its free chunks count as in use)", tp + off)
            continue
        model.tcaches.append(Tcache(lwp, tp, table, width or 2))


def _table_plausible(target: Target, lay: Layout, table: int, lo_arr, hi_arr, count_limit: int) -> bool:
    width = _tcache_chunk_width(target, lay, table)
    if not width:
        return False
    try:
        raw = bytes(target.read(table, width * TCACHE_BINS + lay.ps * TCACHE_BINS))
    except MemoryReadError:
        return False
    counts = np.frombuffer(raw, dtype=lay.e + ("u2" if width == 2 else "u1"), count=TCACHE_BINS).astype(np.int64)
    entries = np.frombuffer(raw, dtype=lay.dt, count=TCACHE_BINS, offset=width * TCACHE_BINS).astype(np.uint64)
    if (counts > count_limit).any() or ((counts != 0) != (entries != 0)).any():
        return False
    e = entries[entries != 0]
    if (e % np.uint64(lay.align)).any():
        return False
    k = np.searchsorted(lo_arr, e, side="right") - 1
    return bool(((k >= 0) & (e < hi_arr[np.clip(k, 0, None)])).all())


# -- the whole model ----------------------------------------------------------------------------

def discover(target: Target, maps, thread_pointers: Dict[int, int], main_heap=None) -> GlibcModel:
    """Arenas, heaps, mp_ and tcaches of the target's glibc malloc.  ``maps`` are the mappings
    as far as classified so far (names, auxv); ``thread_pointers`` maps LWP to thread pointer;
    ``main_heap(model)`` returns the main heap's mapping (called once the arenas are known)."""
    lay = Layout(target.pointer_size, target.byteorder, target.arch)
    model = GlibcModel(lay)
    writable = _writable_ranges(target, maps)
    main = find_main_arena(target, lay, writable)
    if main is None:
        model.how = "fallback: [heap] by its chunk chain, arena heaps by heap_info at HEAP_MAX-aligned addresses (main_arena not found)"
        _fallback_heaps(target, lay, maps, model)
    else:
        _ring(target, lay, model, main, writable)
        if model.how.startswith("fallback"):
            _fallback_heaps(target, lay, maps, model)
    ranges = [(h.address, h.end) for _a, h in model.heaps()]
    mh = main_heap(model) if main_heap else None
    if mh is not None:
        ranges.append((mh.start, mh.end))
        model.mp = find_mp(target, lay, mh.start, mh.end)
    find_tcaches(target, lay, thread_pointers, model, maps, sorted(ranges), target.arch in ("x86-64", "i386"))
    return model


def _ring(target: Target, lay: Layout, model: GlibcModel, main: int, writable) -> None:
    """Every arena on main_arena's ``next`` ring, with its heaps."""
    model.main_arena = main
    model.how = "arena ring"
    addr, seen = main, set()
    while True:
        seen.add(addr)
        try:
            ar = read_arena(target, lay, addr, addr == main)
        except MemoryReadError:
            model.findings.add("arena-unreadable", "malloc_state unreadable: the arena ring is cut "
                               "(the heaps are looked for by shape instead)", addr)
            model.how = "fallback: heap_info at HEAP_MAX-aligned addresses (arena ring cut)"
            return
        model.arenas.append(ar)
        if not ar.main:
            ar.heaps = thread_arena_heaps(target, lay, ar, model.findings)
        nxt = ar.next
        if nxt == main:
            return
        if nxt in seen or not nxt or nxt % lay.ps or not _in_ranges(writable, nxt) or len(seen) > MAX_ARENAS:
            model.findings.add("arena-ring-broken", "the arena ring (malloc_state.next) does not come back "
                               "to main_arena (the heaps are also looked for by shape)", addr)
            model.how = "fallback: heap_info at HEAP_MAX-aligned addresses (arena ring broken)"
            return
        addr = nxt


def _fallback_heaps(target: Target, lay: Layout, maps, model: GlibcModel) -> None:
    """heap_info at every HEAP_MAX-aligned address of writable anonymous memory, for arenas the
    ring did not reach."""
    known = {h.address for _a, h in model.heaps()}
    by_arena: Dict[int, List[HeapInfo]] = defaultdict(list)
    for m in maps:
        if m.path or "w" not in m.perms[:3]:
            continue
        h = m.start + (-m.start) % lay.heap_max
        while h + lay.heap_info_size <= m.end:
            if h not in known:
                try:
                    hi = read_heap_info(target, lay, h)
                except MemoryReadError:
                    hi = None
                if hi is not None and _heap_info_ok(lay, hi) and hi.ar_ptr and hi.ar_ptr % lay.ps == 0:
                    by_arena[hi.ar_ptr].append(hi)
            h += lay.heap_max
    arenas = {a.address: a for a in model.arenas}
    for ar_ptr, heaps in sorted(by_arena.items()):
        ar = arenas.get(ar_ptr)
        if ar is None:
            try:
                ar = read_arena(target, lay, ar_ptr, False)
            except MemoryReadError:
                model.findings.add("arena-unreadable", "heaps whose malloc_state is unreadable", ar_ptr)
                continue
            model.arenas.append(ar)
            arenas[ar_ptr] = ar
        if not ar.heaps:
            ar.heaps = thread_arena_heaps(target, lay, ar, model.findings)
        have = {h.address for h in ar.heaps}
        extra = [h for h in heaps if h.address not in have]
        for h in extra:
            h.first = (lay.aligned_chunk(ar_ptr + lay.state_size) if h.address < ar_ptr < h.address + lay.heap_max
                       else h.address + lay.heap_info_size)
        ar.heaps = sorted(ar.heaps + extra, key=lambda h: h.address)
