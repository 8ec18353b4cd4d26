"""Classify every mapping of a target: main-heap, arena-heap, anon, stack, thread-stack, tls, guard, shm, file,
vdso/vvar/vsyscall.  Works from names when the target has them (live) and from shape,
adjacency, auxv and glibc's own structures when it does not (cores)."""
from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass
from typing import Dict, List, Optional

from .errors import MemoryReadError
from .memory.target import AT_EXECFN, AT_RANDOM, AT_SYSINFO_EHDR, Region, Target

KINDS = ("main-heap", "arena-heap", "anon", "stack", "thread-stack", "tls", "guard", "shm", "file",
         "vdso", "vvar", "vsyscall")
ANON_KINDS = ("main-heap", "arena-heap", "anon")
HEAP_KINDS = ("main-heap", "arena-heap")   # "heap" is both: all memory malloc owns
GUARD_MAX = 1 << 20           # a guard larger than this is not a stack guard
MERGED = "part of a merged mapping"
VSYSCALL = 0xffffffffff600000


@dataclass
class Mapping:
    start: int
    end: int
    perms: str
    kind: str
    path: Optional[str] = None
    owner_lwp: Optional[int] = None
    rss: Optional[int] = None
    private_dirty: Optional[int] = None
    offset: int = 0
    note: Optional[str] = None
    readable_end: Optional[int] = None   # bytes above this are not in the core

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def name(self) -> Optional[str]:
        """What the owner/path column shows."""
        if self.owner_lwp is not None:
            return "LWP %d" % self.owner_lwp
        if self.path:
            return self.path
        return self.note

    def to_json(self) -> dict:
        return {"start": hex(self.start), "end": hex(self.end), "size": self.size, "perms": self.perms,
                "kind": self.kind, "path": self.path or None, "owner_lwp": self.owner_lwp,
                "rss": self.rss, "private_dirty": self.private_dirty, "note": self.note}


def heap_max_size(pointer_size: int) -> int:
    """glibc HEAP_MAX_SIZE: 2 * DEFAULT_MMAP_THRESHOLD_MAX."""
    return 64 << 20 if pointer_size == 8 else 1 << 20


def _is_anonymous(r: Region) -> bool:
    return not r.path


def _writable(r: Region) -> bool:
    return "w" in r.perms[:3]


def _name_kind(r: Region) -> Optional[str]:
    p = r.path or ""
    if not p:
        return None
    if p == "[heap]":
        return "main-heap"
    if p == "[stack]" or p.startswith("[stack:"):
        return "stack" if p == "[stack]" else "thread-stack"
    if p == "[vdso]":
        return "vdso"
    if p.startswith("[vvar"):
        return "vvar"
    if p == "[vsyscall]":
        return "vsyscall"
    shared = r.perms.endswith("s")
    if p.startswith("/SYSV") or p.startswith("/dev/shm/") or p.startswith("[anon_shmem") or (
            shared and ("(deleted)" in p or p.startswith("/memfd:") or p.startswith("/dev/zero"))):
        return "shm"
    if p.startswith("[anon:"):
        return "anon"
    return "file"


def looks_like_arena(target: Target, r: Region) -> bool:
    """A glibc non-main heap: HEAP_MAX-aligned, heap_info{ar_ptr, prev, size, mprotect_size} consistent."""
    hmax = heap_max_size(target.pointer_size)
    if r.start % hmax or not _writable(r) or r.size > hmax:
        return False
    try:
        ar_ptr, prev, size, mprotect_size = target.read_words(r.start, 4)
    except MemoryReadError:
        return False
    ps = target.pointer_size
    if not (0 < size <= mprotect_size <= hmax and size <= r.size + 4096):
        return False
    if prev != 0 and prev % hmax:
        return False
    if ar_ptr % ps or ar_ptr == 0:
        return False
    # first heap of an arena holds its malloc_state right after heap_info
    return prev != 0 or r.start < ar_ptr < r.start + 128


MAIN_HEAP_PREFIX = 64 << 10    # how far into the brk area the first chunk is looked for
_CHAIN = 32                    # chunks that must follow each other sanely from a candidate


def main_heap_first_chunk(target: Target, start: int, end: int) -> Optional[int]:
    """Address of the first malloc chunk of a brk heap [start, end), or None when there is none.

    Usually the heap starts with it.  A static executable's glibc takes its initial TLS block
    (and the main thread's struct pthread) from brk before malloc runs, so there the first chunk
    follows that block: it is looked for in the first MAIN_HEAP_PREFIX bytes, at every offset
    where the chunk's user pointer is MALLOC_ALIGNMENT-aligned, and accepted when it has
    PREV_INUSE and _CHAIN chunks (or all chunks up to the end) follow it with sane sizes."""
    ps = target.pointer_size
    from .glibc import malloc_alignment
    align = malloc_alignment(target.arch, ps)
    try:
        head = bytes(target.read(start, min(MAIN_HEAP_PREFIX, end - start)))
    except MemoryReadError:
        return None
    fmt = ("<" if target.byteorder == "little" else ">") + ("Q" if ps == 8 else "I")

    def word(addr):
        off = addr - start
        if off + ps <= len(head):
            return struct.unpack_from(fmt, head, off)[0]
        return target.read_word(addr)

    def sane(csize, at):      # i386: the top chunk's size is 8 mod MALLOC_ALIGNMENT
        return 4 * ps <= csize <= end - at and csize % (2 * ps) == 0

    first = start + ((-(start + 2 * ps)) % align)      # user pointer (chunk + 2*SIZE_SZ) aligned
    cands = [start] + ([start + 8] if align > 2 * ps else []) + list(range(first, start + len(head) - 2 * ps, align))
    for c in dict.fromkeys(cands):
        size = word(c + ps)
        if not size & 1 or not sane(size & ~7, c):
            continue
        try:
            at, ok = c, True
            for _ in range(_CHAIN):
                at += word(at + ps) & ~7
                if at == end:
                    break
                size = word(at + ps)
                if not sane(size & ~7, at):
                    ok = False
                    break
        except MemoryReadError:
            ok = False
        if ok:
            return c
    return None


def looks_like_main_heap(target: Target, r: Region) -> bool:
    """The brk heap holds a chain of malloc chunks from its start (or from the end of a static
    executable's TLS block)."""
    return main_heap_first_chunk(target, r.start, r.end) is not None


def glibc_model(target: Target, maps: Optional[List[Mapping]] = None):
    """glibc's malloc structures (glibc.GlibcModel), found while classifying the mappings."""
    if getattr(target, "_glibc", None) is None:
        classify(target)
    return target._glibc


def mapping_at(maps: List[Mapping], addr: int) -> Optional[Mapping]:
    """The mapping holding ``addr`` (``maps`` sorted by start, as classify returns them)."""
    i = bisect.bisect_right([m.start for m in maps], addr) - 1
    if i >= 0 and addr < maps[i].end:
        return maps[i]
    return None


def classify(target: Target) -> List[Mapping]:
    """Every mapping classified (cached on the target: one classification per command)."""
    cached = getattr(target, "_maps", None)
    if cached is None:
        cached = target._maps = _classify(target)
    return cached


def _classify(target: Target) -> List[Mapping]:
    regions = target.regions()
    threads = target.threads()
    auxv = target.auxv()
    out = [Mapping(r.start, r.end, r.perms, _name_kind(r) or "anon", r.path or None, rss=r.rss,
                   private_dirty=r.private_dirty, offset=r.offset,
                   readable_end=r.data_end) for r in regions]
    by_end = {m.end: m for m in out}

    def containing(addr):
        return mapping_at(out, addr)

    # Cores carry no names for the special mappings: recover them.
    vd = auxv.get(AT_SYSINFO_EHDR)
    if vd:
        m = containing(vd)
        if m and not m.path:
            m.kind, m.path = "vdso", "[vdso]"
    m = containing(VSYSCALL) if target.pointer_size == 8 else None
    if m and not m.path:
        m.kind, m.path = "vsyscall", "[vsyscall]"
    if not any(m.kind == "stack" for m in out):
        for key in (AT_RANDOM, AT_EXECFN):
            m = containing(auxv[key]) if key in auxv else None
            if m and not m.path:
                m.kind, m.path = "stack", "[stack]"
                break

    # glibc's heap, found the way glibc finds it (main_arena, the arena ring, heap_info chains);
    # by shape only when that fails
    from .glibc import discover
    from .threads import thread_pointers
    tps = thread_pointers(target, out)

    def main_heap(model):
        m = containing(model.main.top) if model.main and model.main.top else None
        if m is not None and not m.path:
            m.path = "[heap]"
        if m is not None:
            m.kind = "main-heap"
            return m
        return _main_heap_by_shape(target, out)
    model = discover(target, out, tps, main_heap)
    target._glibc = model
    target._thread_pointers = tps
    out = _split_heaps(out, model)
    if getattr(target, "merged_anon", False):
        out = _split_merged(target, out)
    by_end = {m.end: m for m in out}

    def containing(addr):       # noqa: F811 (the list changed)
        return mapping_at(out, addr)

    # stacks owned by a thread's SP
    for t in threads:
        m = containing(t.sp)
        if m is None:
            continue
        if m.kind in ("stack", "thread-stack", "anon"):
            if m.kind == "anon":
                m.kind = "thread-stack"
            if m.owner_lwp is None:
                m.owner_lwp = t.lwp
    # a live thread's static TLS and struct pthread in a mapping of their own (not its stack)
    for lwp, tp in sorted(tps.items()):
        m = containing(tp)
        if m is not None and m.kind == "anon" and m.owner_lwp is None:
            m.kind, m.note = "tls", "static TLS of LWP %d" % lwp
    # guards below stacks, and stack-shaped anonymous memory nobody owns
    for m in out:
        below = by_end.get(m.start)
        guard_like = (below is not None and below.kind == "anon" and not below.path
                      and not _writable(below) and below.size <= GUARD_MAX)
        if m.kind == "thread-stack" and guard_like:
            below.kind = "guard"
        elif m.kind == "anon" and _writable(m) and guard_like and m.size >= 16384 and m.owner_lwp is None \
                and m.note in (None, MERGED):
            m.kind, m.note = "thread-stack", "orphan stack"
            below.kind = "guard"
    return out


def _split_merged(target: Target, out: List[Mapping]) -> List[Mapping]:
    """qemu-user's cores have one PT_LOAD per run of pages with the same protection: a thread's
    stack, the mmapped chunks above it and a thread's static TLS can be one segment.  Cut the
    anonymous writable mappings at the mmapped chunks inside them (heap.find_mmapped_chunks'
    rule), so that stacks, TLS blocks and chunks are each a mapping of their own."""
    from .heap import find_mmapped_chunks
    res: List[Mapping] = []
    for m in out:
        if m.kind != "anon" or m.path or not _writable(m) or m.perms.endswith("s"):
            res.append(m)
            continue
        cuts = {m.start, m.end}
        for c, size, start in find_mmapped_chunks(target, [m], cache=False):
            cuts.update(x for x in (start, c + size) if m.start < x < m.end)
        pts = sorted(cuts)
        if len(pts) == 2:
            res.append(m)
            continue
        for a, b in zip(pts, pts[1:]):
            res.append(Mapping(a, b, m.perms, m.kind, None, offset=m.offset, note=MERGED,
                               readable_end=m.readable_end if m.readable_end is None
                               else min(max(m.readable_end, a), b)))
    return res


def _main_heap_by_shape(target: Target, out: List[Mapping]) -> Optional[Mapping]:
    """Fallback when main_arena is unknown: [heap] by name, else the anonymous mapping nearest
    after the executable's lowest mapping that holds a chunk chain (brk starts after the
    executable, randomised by up to 1 GiB; a static-pie's brk is elsewhere)."""
    named = [m for m in out if m.kind == "main-heap"]
    if named:
        return named[0]
    exe = [mod for mod in target.modules() if mod.is_main]
    exe_end = min((mod.end for mod in exe), default=None)
    if exe_end is None:
        return None
    cands = sorted((m for m in out if m.kind == "anon" and _writable(m) and m.start >= exe_end),
                   key=lambda x: (x.start >= exe_end + (1 << 30), x.start))
    for m in cands:
        if looks_like_main_heap(target, m):
            m.kind, m.path = "main-heap", "[heap]"
            return m
    return None


def _split_heaps(out: List[Mapping], model) -> List[Mapping]:
    """Label every arena heap, splitting mappings the kernel merged: a heap is [h, h+HEAP_MAX)
    (its rw part, then the PROT_NONE reserve); the parts of a mapping outside every heap keep
    their kind."""
    hmax = model.layout.heap_max
    heaps = sorted((h.address, ar.address) for ar, h in model.heaps())
    if not heaps:
        return out
    starts = [h for h, _ in heaps]
    res: List[Mapping] = []
    for m in out:
        if m.path and m.path != "[heap]" or m.kind not in ("anon", "main-heap"):
            res.append(m)
            continue
        i = max(bisect.bisect_right(starts, m.start) - 1, 0)
        cuts = {m.start, m.end}
        hit = False
        while i < len(heaps) and heaps[i][0] < m.end:
            h = heaps[i][0]
            if h + hmax > m.start:
                hit = True
                cuts.update(c for c in (h, h + hmax) if m.start < c < m.end)
            i += 1
        if not hit:
            res.append(m)
            continue
        pts = sorted(cuts)
        whole = len(pts) == 2
        for a, b in zip(pts, pts[1:]):
            k = bisect.bisect_right(starts, a) - 1
            piece = Mapping(a, b, m.perms, m.kind, m.path, rss=m.rss if whole else None,
                            private_dirty=m.private_dirty if whole else None, offset=m.offset,
                            readable_end=m.readable_end if m.readable_end is None else min(max(m.readable_end, a), b))
            if k >= 0 and heaps[k][0] <= a < heaps[k][0] + hmax:
                piece.kind = "arena-heap"
                piece.note = ("reserved" if not _writable(m) else "arena 0x%x" % heaps[k][1])
            elif not whole:
                piece.note = MERGED
            res.append(piece)
    return res


def totals(mappings: List[Mapping]) -> Dict[str, dict]:
    out: Dict[str, dict] = {}
    for m in mappings:
        t = out.setdefault(m.kind, {"count": 0, "size": 0, "rss": None})
        t["count"] += 1
        t["size"] += m.size
        if m.rss is not None:
            t["rss"] = (t["rss"] or 0) + m.rss
    return out


def select(mappings: List[Mapping], kinds=None, min_size: int = 0) -> List[Mapping]:
    return [m for m in mappings if (not kinds or m.kind in kinds) and m.size >= min_size]
