"""glibc-truth: an independent oracle of glibc malloc's own bookkeeping, for tests.

Source this file inside gdb (``source tests/oracle/glibc_truth.py``); it defines

    glibc-truth FILE [--mallinfo] [--tls=auto|gdb|manual]

which writes a JSON description of glibc's own view of the heap to FILE (mode 0600).
It works on a live process stopped in gdb and on a core file (``gdb EXE CORE``), for
x86-64 and i386 inferiors, provided libc's debug info is available (Debian:
``libc6-dbg`` / ``libc6-dbg:i386``).  It deliberately shares no assumption with the tool
under test (gdb_memleak): every structure is read through libc's DWARF types
(``main_arena``, ``mp_``, ``narenas``, ``tcache``, ``struct malloc_state``,
``struct malloc_chunk``, ``heap_info``, ``tcache_perthread_struct``); field offsets and
sizes come from ``gdb.Type`` (``Field.bitpos`` / ``Type.sizeof``), never from constants.
Only these glibc *code* constants, which have no debug-info representation, are used:

* SIZE_BITS = PREV_INUSE|IS_MMAPPED|NON_MAIN_ARENA = 7 and PREV_INUSE = 1;
* MALLOC_ALIGNMENT: 16 on i386 (sysdeps/i386/malloc-alignment.h), otherwise
  max(2*SIZE_SZ, alignof(long double)) (sysdeps/generic/malloc-alignment.h); checked
  against the padding glibc puts in heap_info (sizeof(heap_info)+2*SIZE_SZ must be a
  multiple of it);
* HEAP_MAX_SIZE = 2*DEFAULT_MMAP_THRESHOLD_MAX = 2*(4 MiB*sizeof(long)) on 64-bit
  (64 MiB) and 2*512 KiB on 32-bit (1 MiB), or 4*mp_.hp_pagesize when
  glibc.malloc.hugetlb gave a huge page size (arena.c heap_max_size());
* safe-linking: PROTECT_PTR(pos, ptr) = (pos >> 12) ^ ptr (glibc >= 2.32).

Bulk reads: each heap is read with ``inferior.read_memory`` in windows of at most
WINDOW bytes and chunk headers are unpacked with ``struct`` at the offsets gdb's types
give; free lists are followed through a cache of 64 KiB blocks.  A chunk walk over a
256 MiB heap takes a second or two.

``tcache`` is glibc's ``static __thread`` variable.  ``--tls=gdb`` asks gdb for it
(``Symbol.value()`` with each thread selected), which needs libthread_db: gdb 13 loads
the host ``/lib/x86_64-linux-gnu/libthread_db.so.1`` both for live processes and for
cores, and that library also serves i386 inferiors.  ``--tls=manual`` computes it
without libthread_db, from ld.so's own debug info: the struct pthread of each thread
(found on ``_rtld_global._dl_stack_user`` / ``_dl_stack_used``, matched by ``tid`` to the
LWP) is the thread pointer on x86 (TLS_TCB_AT_TP), libc's static TLS block lies at
``tp - link_map.l_tls_offset`` and ``tcache`` at the offset ``info address tcache``
reports inside it.  ``--tls=auto`` (the default) uses gdb and falls back to manual.
Either way ``tcache[i]["tls"]`` says which one produced the value.

``--mallinfo`` additionally calls ``mallinfo2()`` in the inferior (live processes only;
on a core the field stays null and a note is added to "notes").  The call is made
AFTER everything else has been read, because it takes every arena lock and runs code
in the inferior; take a gcore first if the state must be preserved.  Beware: if the
selected thread is stopped at a syscall entry (e.g. stopped by ``catch syscall``), an
inferior call makes that syscall fail (gdb resets the syscall number, the call returns
an error such as -EINTR to the program when it resumes).  Stop the program at a
breakpoint in ordinary code (tests/oracle/oracle_prog.c stops in ``oracle_ready()``).
The call runs with ``scheduler-locking on`` (only the selected thread runs; otherwise
gdb tends to abandon the call with "The program received a signal in another thread"
after attaching to a SIGSTOPped process) and ``unwindonsignal on``, retried up to 3
times (a SIGSTOP still pending for the selected thread interrupts the first call) and is refused, with an entry in "errors",
when an arena mutex is held (it would never return).  A failed call leaves
"mallinfo2" null and adds to "errors"; the rest of the JSON is still written.

JSON written (all addresses and sizes are plain ints; ``null`` where noted):

{
 "pointer_size": 8 | 4,
 "size_sz": sizeof(INTERNAL_SIZE_T), "malloc_alignment": 16, "minsize": MINSIZE,
 "chunk_hdr_sz": offsetof(struct malloc_chunk, fd), "heap_max_size": int,
 "heap_info_size": sizeof(heap_info), "malloc_state_size": sizeof(struct malloc_state),
 "arenas": [ {                       # ring order from &main_arena following ->next
    "address", "main": bool, "top", "top_size": chunksize(top),
    "system_mem", "max_system_mem", "attached_threads", "flags",
    "heaps": [ {"start", "size", "mprotect_size", "first_chunk", "end"} ],
        # thread arenas: heap_info chain from top & ~(HEAP_MAX_SIZE-1) along ->prev,
        #   listed oldest first; start = &heap_info, size/mprotect_size = its fields,
        #   end = start + size, first_chunk = start + sizeof(heap_info) (+ the
        #   malloc_state and alignment in the arena's first heap).
        # main arena: one entry, start = mp_.sbrk_base, first_chunk = sbrk_base
        #   aligned as sysmalloc aligns it (chunk2mem(p) % MALLOC_ALIGNMENT == 0),
        #   end = top + top_size, size = end - start, mprotect_size = null.
    "fastbins": {"chunks", "bytes", "per_bin": [NFASTBINS ints]},
    "bins": {"chunks", "bytes", "per_bin": [NBINS ints, index 0 unused, 1 = unsorted]},
    "walk": {"in_use_chunks", "in_use_bytes", "free_chunks", "free_bytes",
             "fencepost_chunks", "fencepost_bytes", "header_bytes",
             "complete": bool},
        # typed walk of every heap from first_chunk to top (top excluded) or to the
        # fenceposts closing an older heap.  A chunk is free iff the next chunk's
        # PREV_INUSE is clear (so tcache and fastbin chunks count as in use here).
        # Fenceposts (see README.md) are the artificial chunks sysmalloc writes at
        # the end of an older heap: the CHUNK_HDR_SZ-sized one, the size-0 one, or,
        # when the old top was too small to free, the short "in use" chunk right
        # before the size-0 one.  fencepost_bytes runs to the heap's end.
        # header_bytes = sum(first_chunk - start) over the heaps.
    "tcache_held": {"chunks", "bytes"},   # entries of any thread's tcache whose
                                          # chunk lies in this arena's heaps
    "tcache_structs": {"chunks", "bytes"} # tcache_perthread_struct chunks in it
 } ],
 "tcache": [ {"lwp", "thread_num", "address": int|null, "chunks", "bytes",
              "counts": [TCACHE_MAX_BINS ints], "list_lengths": [...], "tls": "gdb"|"manual"} ],
 "mp": { every field of glibc's mp_ (struct malloc_par) as an int },
 "narenas": int | null,
 "mallinfo2": null | {"arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                      "fsmblks", "uordblks", "fordblks", "keepcost"},
 "errors": [str],        # inconsistencies found while reading (empty when all is well)
 "notes": [str]
}
"""

import json
import os
import re
import struct

import gdb  # pylint: disable=import-error

WINDOW = 32 << 20          # bytes read per bulk window of a heap walk
CACHE_BLOCK = 64 << 10     # scattered reads are served from 64 KiB blocks
SIZE_BITS = 7              # PREV_INUSE | IS_MMAPPED | NON_MAIN_ARENA
PREV_INUSE = 1
MAX_LIST = 1 << 22         # loop guard for free lists


class TruthError(gdb.GdbError):
    pass


# ----------------------------------------------------------------------------- types

def _offsetof(typ, name):
    typ = typ.strip_typedefs()
    for f in typ.fields():
        if f.name == name:
            return f.bitpos // 8
    raise TruthError("type %s has no field %s" % (typ, name))


def _field_type(typ, name):
    typ = typ.strip_typedefs()
    for f in typ.fields():
        if f.name == name:
            return f.type
    raise TruthError("type %s has no field %s" % (typ, name))


def _libc_static(name, want_type=None):
    """A static symbol of libc (prefer one whose type name matches WANT_TYPE)."""
    cands = list(gdb.lookup_static_symbols(name))
    try:
        g = gdb.lookup_global_symbol(name)
    except gdb.error:
        g = None
    if g is not None:
        cands.append(g)
    if not cands:
        return None
    if want_type:
        for s in cands:
            if want_type in str(s.type.strip_typedefs()):
                return s
    for s in cands:
        fn = s.symtab.objfile.filename if s.symtab else ""
        if "libc" in fn or "/debug/" in fn:
            return s
    return cands[0]


class Layout:
    """Everything derived from libc's debug info that the readers need."""

    def __init__(self):
        self.main_arena_sym = _libc_static("main_arena", "malloc_state")
        self.mp_sym = _libc_static("mp_", "malloc_par")
        if self.main_arena_sym is None or self.mp_sym is None:
            raise TruthError("glibc-truth: main_arena/mp_ not found: libc debug info "
                             "(libc6-dbg) is not loaded for this inferior")
        self.main_arena = self.main_arena_sym.value()
        self.mp = self.mp_sym.value()
        self.mstate_t = self.main_arena.type.strip_typedefs()
        self.chunk_t = _field_type(self.mstate_t, "top").strip_typedefs().target().strip_typedefs()
        self.heap_info_t = gdb.lookup_type("heap_info").strip_typedefs()
        self.ptr_size = gdb.lookup_type("void").pointer().sizeof
        self.size_sz = _field_type(self.chunk_t, "mchunk_size").sizeof
        self.off_size = _offsetof(self.chunk_t, "mchunk_size")
        self.off_fd = _offsetof(self.chunk_t, "fd")
        self.off_bk = _offsetof(self.chunk_t, "bk")
        self.chunk_hdr_sz = self.off_fd
        arch = gdb.selected_inferior().architecture().name()
        if arch == "i386" or (arch.startswith("i386") and self.ptr_size == 4):
            self.malloc_alignment = 16
        else:
            ld = gdb.lookup_type("long double")
            self.malloc_alignment = max(2 * self.size_sz, ld.alignof)
        self.align_mask = self.malloc_alignment - 1
        if (self.heap_info_t.sizeof + 2 * self.size_sz) % self.malloc_alignment:
            raise TruthError("MALLOC_ALIGNMENT %d inconsistent with sizeof(heap_info)=%d"
                             % (self.malloc_alignment, self.heap_info_t.sizeof))
        min_chunk = _offsetof(self.chunk_t, "fd_nextsize")
        self.minsize = (min_chunk + self.align_mask) & ~self.align_mask
        # HEAP_MAX_SIZE as arena.c heap_max_size() computes it
        hp = 0
        try:
            hp = int(self.mp["hp_pagesize"])
        except gdb.error:
            hp = 0
        if hp:
            self.heap_max_size = hp * 4
        elif self.ptr_size == 4:
            self.heap_max_size = 2 * (512 * 1024)
        else:
            self.heap_max_size = 2 * (4 * 1024 * 1024 * gdb.lookup_type("long").sizeof)
        self.bins_off = _offsetof(self.mstate_t, "bins")
        bins_t = _field_type(self.mstate_t, "bins").strip_typedefs()
        lo, hi = bins_t.range()
        self.nbins = (hi - lo + 1 + 2) // 2          # bins[NBINS * 2 - 2]
        fb_t = _field_type(self.mstate_t, "fastbinsY").strip_typedefs()
        lo, hi = fb_t.range()
        self.nfastbins = hi - lo + 1
        self.fastbins_off = _offsetof(self.mstate_t, "fastbinsY")
        self.tcache_sym = _libc_static("tcache", "tcache_perthread_struct")
        self.tcache_t = None
        if self.tcache_sym is not None:
            self.tcache_t = self.tcache_sym.type.strip_typedefs().target().strip_typedefs()
            entries_t = _field_type(self.tcache_t, "entries").strip_typedefs()
            lo, hi = entries_t.range()
            self.tcache_max_bins = hi - lo + 1
            self.tc_counts_off = _offsetof(self.tcache_t, "counts")
            self.tc_count_sz = _field_type(self.tcache_t, "counts").strip_typedefs().target().sizeof
            self.tc_entries_off = _offsetof(self.tcache_t, "entries")
            entry_t = entries_t.target().strip_typedefs().target().strip_typedefs()
            self.tc_next_off = _offsetof(entry_t, "next")
        little = "little" in gdb.execute("show endian", to_string=True)
        e = "<" if little else ">"
        fmt = {1: "B", 2: "H", 4: "I", 8: "Q"}
        self.fmt_size = e + fmt[self.size_sz]
        self.fmt_ptr = e + fmt[self.ptr_size]
        self.fmt_count = e + fmt[self.tc_count_sz] if self.tcache_t is not None else None
        self.st_size = struct.Struct(self.fmt_size)
        self.st_ptr = struct.Struct(self.fmt_ptr)

    def first_chunk_aligned(self, addr):
        """Advance ADDR so that chunk2mem(ADDR) is MALLOC_ALIGNMENT-aligned."""
        mis = (addr + self.chunk_hdr_sz) & self.align_mask
        return addr + (self.malloc_alignment - mis if mis else 0)


# ----------------------------------------------------------------------------- memory

class Memory:
    """Scattered reads through a cache of CACHE_BLOCK-sized blocks."""

    def __init__(self, layout):
        self.inf = gdb.selected_inferior()
        self.lay = layout
        self.cache = {}

    def _block(self, base):
        b = self.cache.get(base)
        if b is None:
            try:
                b = bytes(self.inf.read_memory(base, CACHE_BLOCK))
            except gdb.MemoryError:
                b = b""
            self.cache[base] = b
        return b

    def read(self, addr, n):
        base = addr & ~(CACHE_BLOCK - 1)
        off = addr - base
        if off + n <= CACHE_BLOCK:
            b = self._block(base)
            if len(b) == CACHE_BLOCK:
                return b[off:off + n]
        return bytes(self.inf.read_memory(addr, n))

    def ptr(self, addr):
        return self.lay.st_ptr.unpack(self.read(addr, self.lay.ptr_size))[0]

    def size(self, addr):
        return self.lay.st_size.unpack(self.read(addr, self.lay.size_sz))[0]


# ----------------------------------------------------------------------------- arenas

def _read_heaps(lay, arena_addr, top, top_size, is_main, errors):
    mp = lay.mp
    if is_main:
        start = int(mp["sbrk_base"])
        end = top + top_size
        if start == 0:              # malloc never initialised
            return []
        first = lay.first_chunk_aligned(start)
        return [{"start": start, "size": end - start, "mprotect_size": None,
                 "first_chunk": first, "end": end}]
    hptr_t = lay.heap_info_t.pointer()
    h = top & ~(lay.heap_max_size - 1)
    heaps = []
    seen = set()
    while h:
        if h in seen:
            errors.append("arena %#x: heap_info prev loop at %#x" % (arena_addr, h))
            break
        seen.add(h)
        hv = gdb.Value(h).cast(hptr_t).dereference()
        ar = int(hv["ar_ptr"])
        if ar != arena_addr:
            errors.append("heap %#x: ar_ptr %#x != arena %#x" % (h, ar, arena_addr))
        size = int(hv["size"])
        heaps.append({"start": h, "size": size, "mprotect_size": int(hv["mprotect_size"]),
                      "first_chunk": h + lay.heap_info_t.sizeof, "end": h + size,
                      "_prev": int(hv["prev"])})
        h = int(hv["prev"])
    heaps.reverse()
    for hp in heaps:
        del hp["_prev"]
    if heaps:
        oldest = heaps[0]
        if arena_addr == oldest["start"] + lay.heap_info_t.sizeof:
            oldest["first_chunk"] = lay.first_chunk_aligned(arena_addr + lay.mstate_t.sizeof)
        else:
            errors.append("arena %#x does not follow its first heap_info %#x"
                          % (arena_addr, oldest["start"]))
        if top + top_size != heaps[-1]["end"]:
            errors.append("arena %#x: top end %#x != newest heap end %#x"
                          % (arena_addr, top + top_size, heaps[-1]["end"]))
    return heaps


def _walk_heap(lay, inf, heap, top, is_last, errors, visit=None):
    """Walk one heap; return counters.  VISIT(addr, size, inuse) is called per chunk."""
    st = lay.st_size
    off_size = lay.off_size
    szsz = lay.size_sz
    hdr = lay.chunk_hdr_sz
    end = heap["end"]
    p = heap["first_chunk"]
    res = {"in_use_chunks": 0, "in_use_bytes": 0, "free_chunks": 0, "free_bytes": 0,
           "fencepost_chunks": 0, "fencepost_bytes": 0, "complete": False}
    wstart = wend = 0
    buf = b""

    def sizefield(addr):
        nonlocal wstart, wend, buf
        a = addr + off_size
        if a < wstart or a + szsz > wend:
            wstart = addr & ~0xfff
            wend = min(end, wstart + WINDOW)
            if a + szsz > wend:
                raise TruthError("chunk header %#x beyond heap end %#x" % (addr, end))
            buf = inf.read_memory(wstart, wend - wstart)
        return st.unpack_from(buf, a - wstart)[0]

    in_use_c = in_use_b = free_c = free_b = 0
    try:
        raw = sizefield(p)
        while True:
            if is_last and p == top:
                res["complete"] = True
                break
            sz = raw & ~SIZE_BITS
            if not is_last and sz == 0:               # size-0 fencepost: heap closed
                res["fencepost_chunks"] += 1
                res["fencepost_bytes"] += end - p
                res["complete"] = True
                break
            # fenceposts are CHUNK_HDR_SZ-sized, which is not a multiple of
            # MALLOC_ALIGNMENT on i386 (8 vs 16)
            if sz < hdr or (sz & lay.align_mask and sz != hdr) or p + sz + hdr > end:
                errors.append("bad chunk %#x size %#x in heap %#x" % (p, raw, heap["start"]))
                break
            nxt = p + sz
            nraw = sizefield(nxt)
            if not is_last and (sz == hdr or (nraw & ~SIZE_BITS) == 0):
                # CHUNK_HDR_SZ fencepost, or the too-small old top glibc marks in use
                # just before the size-0 fencepost
                res["fencepost_chunks"] += 1
                res["fencepost_bytes"] += sz
            elif is_last and sz == hdr and (nraw & ~SIZE_BITS) == hdr:
                errors.append("double fencepost at %#x (foreign sbrk / non-contiguous "
                              "main arena): walk stopped" % p)
                break
            elif nraw & PREV_INUSE:
                in_use_c += 1
                in_use_b += sz
                if visit:
                    visit(p, sz, True)
            else:
                free_c += 1
                free_b += sz
                if visit:
                    visit(p, sz, False)
            p = nxt
            raw = nraw
            if p > end:
                errors.append("walk overran heap %#x" % heap["start"])
                break
    except (gdb.MemoryError, TruthError) as exc:
        errors.append("walk of heap %#x stopped at %#x: %s" % (heap["start"], p, exc))
    if is_last and not res["complete"] and not any("walk" in e for e in errors[-1:]):
        errors.append("walk of heap %#x did not reach top %#x" % (heap["start"], top))
    res.update(in_use_chunks=in_use_c, in_use_bytes=in_use_b,
               free_chunks=free_c, free_bytes=free_b)
    return res


def _fastbins(lay, mem, arena_addr, errors):
    per = []
    total_c = total_b = 0
    for i in range(lay.nfastbins):
        p = mem.ptr(arena_addr + lay.fastbins_off + i * lay.ptr_size)
        n = 0
        while p:
            n += 1
            total_b += mem.size(p + lay.off_size) & ~SIZE_BITS
            pos = p + lay.off_fd
            p = mem.ptr(pos) ^ (pos >> 12)
            if n > MAX_LIST:
                errors.append("fastbin %d of arena %#x: loop" % (i, arena_addr))
                break
        per.append(n)
        total_c += n
    return {"chunks": total_c, "bytes": total_b, "per_bin": per}


def _bins(lay, mem, arena_addr, errors, heap_ranges):
    per = [0]
    total_c = total_b = 0
    for i in range(1, lay.nbins):
        head = arena_addr + lay.bins_off + (i - 1) * 2 * lay.ptr_size - lay.off_fd
        p = mem.ptr(head + lay.off_fd)
        n = 0
        while p != head:
            if not any(s <= p < e for s, e in heap_ranges):
                errors.append("bin %d of arena %#x: chunk %#x outside the arena's heaps"
                              % (i, arena_addr, p))
                break
            n += 1
            total_b += mem.size(p + lay.off_size) & ~SIZE_BITS
            p = mem.ptr(p + lay.off_fd)
            if n > MAX_LIST:
                errors.append("bin %d of arena %#x: loop" % (i, arena_addr))
                break
        per.append(n)
        total_c += n
    return {"chunks": total_c, "bytes": total_b, "per_bin": per}


def read_arenas(lay, mem, errors):
    inf = gdb.selected_inferior()
    main_addr = int(lay.main_arena.address)
    mptr_t = lay.mstate_t.pointer()
    arenas = []
    a = main_addr
    seen = set()
    while True:
        if a in seen or len(arenas) > 4096:
            errors.append("arena ring does not return to main_arena")
            break
        seen.add(a)
        av = gdb.Value(a).cast(mptr_t).dereference()
        top = int(av["top"])
        top_size = (mem.size(top + lay.off_size) & ~SIZE_BITS) if top else 0
        is_main = a == main_addr
        heaps = _read_heaps(lay, a, top, top_size, is_main, errors)
        ranges = [(h["start"], h["end"]) for h in heaps]
        walk = {"in_use_chunks": 0, "in_use_bytes": 0, "free_chunks": 0, "free_bytes": 0,
                "fencepost_chunks": 0, "fencepost_bytes": 0,
                "header_bytes": sum(h["first_chunk"] - h["start"] for h in heaps),
                "complete": True}
        for k, h in enumerate(heaps):
            r = _walk_heap(lay, inf, h, top, k == len(heaps) - 1, errors)
            for key in ("in_use_chunks", "in_use_bytes", "free_chunks", "free_bytes",
                        "fencepost_chunks", "fencepost_bytes"):
                walk[key] += r[key]
            walk["complete"] = walk["complete"] and r["complete"]
        arenas.append({
            "address": a, "main": is_main, "top": top, "top_size": top_size,
            "system_mem": int(av["system_mem"]), "max_system_mem": int(av["max_system_mem"]),
            "attached_threads": int(av["attached_threads"]), "flags": int(av["flags"]),
            "heaps": heaps,
            "fastbins": _fastbins(lay, mem, a, errors),
            "bins": _bins(lay, mem, a, errors, ranges),
            "walk": walk,
            "tcache_held": {"chunks": 0, "bytes": 0},
            "tcache_structs": {"chunks": 0, "bytes": 0},
        })
        a = int(av["next"])
        if a == main_addr:
            break
    return arenas


# ----------------------------------------------------------------------------- tcache

def _tls_offset_of(sym_name):
    out = gdb.execute("info address %s" % sym_name, to_string=True)
    m = re.search(r"at offset (0x[0-9a-fA-F]+|\d+) in the thread-local storage", out)
    if not m:
        raise TruthError("cannot find TLS offset of %s: %s" % (sym_name, out.strip()))
    return int(m.group(1), 0)


class ManualTLS:
    """tcache without libthread_db: struct pthread lists + libc's l_tls_offset."""

    def __init__(self, lay, mem):
        self.lay = lay
        self.mem = mem
        rg = gdb.parse_and_eval("_rtld_global")
        self.sym_off = _tls_offset_of("tcache")
        lm = rg["_dl_ns"][0]["_ns_loaded"]
        libc_lm = None
        while int(lm) != 0:
            name = lm["l_name"].string() if int(lm["l_name"]) else ""
            base = os.path.basename(name)
            if base.startswith("libc.so") or re.match(r"libc-[\d.]+\.so$", base):
                libc_lm = lm
                break
            lm = lm["l_next"]
        if libc_lm is None:
            raise TruthError("libc's link_map not found in _rtld_global._dl_ns[0]")
        self.tls_offset = int(libc_lm["l_tls_offset"])
        pthread_t = gdb.lookup_type("struct pthread")
        list_off = _offsetof(pthread_t, "list")
        tid_off = _offsetof(pthread_t, "tid")
        tid_t = _field_type(pthread_t, "tid")
        self.by_tid = {}
        for lname in ("_dl_stack_user", "_dl_stack_used"):
            head = int(rg[lname].address)
            node = mem.ptr(head)
            n = 0
            while node != head and node and n < 100000:
                pd = node - list_off
                tid = int.from_bytes(mem.read(pd + tid_off, tid_t.sizeof), "little", signed=True)
                self.by_tid[tid] = pd
                node = mem.ptr(node)
                n += 1

    def tcache_of(self, lwp):
        pd = self.by_tid.get(lwp)
        if pd is None:
            return None
        return self.mem.ptr(pd - self.tls_offset + self.sym_off)


def read_tcaches(lay, mem, mode, errors, notes):
    out = []
    if lay.tcache_sym is None:
        notes.append("libc has no tcache symbol (glibc built without tcache?)")
        return out
    inf = gdb.selected_inferior()
    try:
        orig_thread = gdb.selected_thread()
    except gdb.error:
        orig_thread = None
    manual = None
    threads = sorted(inf.threads(), key=lambda t: t.num)
    for t in threads:
        lwp = t.ptid[1] or t.ptid[0]
        addr = None
        how = None
        if mode in ("auto", "gdb"):
            try:
                t.switch()
                addr = int(lay.tcache_sym.value())
                how = "gdb"
            except gdb.error as exc:
                if mode == "gdb":
                    errors.append("tcache of LWP %d via gdb: %s" % (lwp, exc))
        if how is None and mode in ("auto", "manual"):
            try:
                if manual is None:
                    manual = ManualTLS(lay, mem)
                addr = manual.tcache_of(lwp)
                how = "manual"
                if addr is None:
                    errors.append("LWP %d has no struct pthread on the stack lists" % lwp)
            except (gdb.error, TruthError) as exc:
                errors.append("tcache of LWP %d, manual TLS: %s" % (lwp, exc))
        entry = {"lwp": lwp, "thread_num": t.num, "address": addr or None,
                 "chunks": 0, "bytes": 0, "counts": [0] * lay.tcache_max_bins,
                 "list_lengths": [0] * lay.tcache_max_bins, "tls": how, "_entries": []}
        if addr:
            raw = mem.read(addr + lay.tc_counts_off, lay.tc_count_sz * lay.tcache_max_bins)
            entry["counts"] = list(struct.unpack(lay.fmt_count[0] + lay.fmt_count[1] *
                                                 lay.tcache_max_bins, raw))
            for i in range(lay.tcache_max_bins):
                e = mem.ptr(addr + lay.tc_entries_off + i * lay.ptr_size)
                n = 0
                while e:
                    chunk = e - lay.off_fd
                    sz = mem.size(chunk + lay.off_size) & ~SIZE_BITS
                    entry["_entries"].append((chunk, sz))
                    n += 1
                    entry["bytes"] += sz
                    pos = e + lay.tc_next_off
                    e = mem.ptr(pos) ^ (pos >> 12)
                    if n > MAX_LIST:
                        errors.append("tcache bin %d of LWP %d: loop" % (i, lwp))
                        break
                entry["list_lengths"][i] = n
                entry["chunks"] += n
                if n != entry["counts"][i]:
                    errors.append("tcache bin %d of LWP %d: counts %d != list length %d"
                                  % (i, lwp, entry["counts"][i], n))
        out.append(entry)
    if orig_thread is not None and orig_thread.is_valid():
        orig_thread.switch()
    return out


def _attribute_tcache(lay, mem, arenas, tcaches, errors):
    ranges = []
    for a in arenas:
        for h in a["heaps"]:
            ranges.append((h["start"], h["end"], a))
    def arena_of(p):
        for s, e, a in ranges:
            if s <= p < e:
                return a
        return None
    for t in tcaches:
        for chunk, sz in t.pop("_entries"):
            a = arena_of(chunk)
            if a is None:
                errors.append("tcache chunk %#x of LWP %d in no arena's heap" % (chunk, t["lwp"]))
                continue
            a["tcache_held"]["chunks"] += 1
            a["tcache_held"]["bytes"] += sz
        if t["address"]:
            chunk = t["address"] - lay.off_fd
            a = arena_of(chunk)
            if a is not None:
                a["tcache_structs"]["chunks"] += 1
                a["tcache_structs"]["bytes"] += mem.size(chunk + lay.off_size) & ~SIZE_BITS


# ----------------------------------------------------------------------------- driver

def _is_live():
    inf = gdb.selected_inferior()
    if inf.pid == 0:
        return False
    conn = getattr(inf, "connection", None)
    ctype = getattr(conn, "type", None) if conn is not None else None
    if ctype is not None:
        return ctype != "core"
    return "Local core dump file" not in gdb.execute("info target", to_string=True)


def _mallinfo2(lay, mem, arenas, errors):
    """Call mallinfo2() in the inferior, with only the selected thread running.

    Refused (None + an error) if any arena mutex is held: mallinfo2 would block on it
    and, with the other threads held by scheduler-locking, never return."""
    for a in arenas:
        av = gdb.Value(a["address"]).cast(lay.mstate_t.pointer()).dereference()
        if int(av["mutex"]) != 0:
            errors.append("mallinfo2 not called: arena %#x mutex is held (%d)"
                          % (a["address"], int(av["mutex"])))
            return None
    old_lock = gdb.parameter("scheduler-locking")
    old_unwind = "on" if gdb.parameter("unwindonsignal") else "off"
    gdb.execute("set scheduler-locking on", to_string=True)
    gdb.execute("set unwindonsignal on", to_string=True)
    try:
        last = None
        # a stop signal still pending for the thread (attach to a SIGSTOPped process)
        # interrupts the first call; unwindonsignal pops the call and we retry
        for _ in range(3):
            try:
                v = gdb.parse_and_eval("mallinfo2()")
                return {f.name: int(v[f.name]) for f in v.type.strip_typedefs().fields()}
            except gdb.error as exc:
                last = exc
                if "signal" not in str(exc):
                    break
        errors.append("mallinfo2() call failed: %s" % str(last).replace("\n", " "))
        return None
    finally:
        gdb.execute("set unwindonsignal %s" % old_unwind, to_string=True)
        gdb.execute("set scheduler-locking %s" % old_lock, to_string=True)


def collect(mallinfo=False, tls="auto"):
    lay = Layout()
    mem = Memory(lay)
    errors, notes = [], []
    arenas = read_arenas(lay, mem, errors)
    tcaches = read_tcaches(lay, mem, tls, errors, notes)
    _attribute_tcache(lay, mem, arenas, tcaches, errors)
    mp = {}
    for f in lay.mp.type.strip_typedefs().fields():
        try:
            mp[f.name] = int(lay.mp[f.name])
        except (gdb.error, TypeError, ValueError):
            pass
    narenas = None
    s = _libc_static("narenas")
    if s is not None:
        try:
            narenas = int(s.value())
        except gdb.error:
            narenas = None
    truth = {
        "pointer_size": lay.ptr_size, "size_sz": lay.size_sz,
        "malloc_alignment": lay.malloc_alignment, "minsize": lay.minsize,
        "chunk_hdr_sz": lay.chunk_hdr_sz, "heap_max_size": lay.heap_max_size,
        "heap_info_size": lay.heap_info_t.sizeof, "malloc_state_size": lay.mstate_t.sizeof,
        "arenas": arenas, "tcache": tcaches, "mp": mp, "narenas": narenas,
        "mallinfo2": None, "errors": errors, "notes": notes,
    }
    if mallinfo:                       # LAST: takes locks and runs inferior code
        if _is_live():
            truth["mallinfo2"] = _mallinfo2(lay, mem, arenas, errors)
        else:
            notes.append("--mallinfo ignored: not a live process")
    return truth


def write_json(path, obj):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=1, sort_keys=True)
        fh.write("\n")


class GlibcTruthCommand(gdb.Command):
    """glibc-truth FILE [--mallinfo] [--tls=auto|gdb|manual]
Write glibc malloc's own view of the heap (read through libc's debug info) to FILE as JSON."""

    def __init__(self):
        super().__init__("glibc-truth", gdb.COMMAND_DATA)

    def invoke(self, arg, from_tty):
        argv = gdb.string_to_argv(arg)
        path, mallinfo, tls = None, False, "auto"
        for a in argv:
            if a == "--mallinfo":
                mallinfo = True
            elif a.startswith("--tls="):
                tls = a.split("=", 1)[1]
                if tls not in ("auto", "gdb", "manual"):
                    raise gdb.GdbError("glibc-truth: bad --tls value %r" % tls)
            elif path is None:
                path = a
            else:
                raise gdb.GdbError("glibc-truth: unexpected argument %r" % a)
        if path is None:
            raise gdb.GdbError("usage: glibc-truth FILE [--mallinfo] [--tls=auto|gdb|manual]")
        truth = collect(mallinfo=mallinfo, tls=tls)
        write_json(path, truth)
        if from_tty:
            print("glibc-truth: %d arenas, %d threads, %d errors -> %s"
                  % (len(truth["arenas"]), len(truth["tcache"]), len(truth["errors"]), path))


GlibcTruthCommand()
