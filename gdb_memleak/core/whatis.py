"""What any address is: its mapping and kind, and then per kind the owning thread and frame
(stacks), the malloc chunk and its class (heap), the symbol (module data), a disassembly
around it (code)."""
from __future__ import annotations

from typing import List, Optional

import numpy as np

from .errors import MemoryReadError
from .vocabulary import article
from .heap import FREE_BITS, FREE_FAST, FREE_TCACHE, FREE_UNKNOWN, STATE_TEXT, walk_heap
from .maps import Mapping, classify, mapping_at
from .memory.modules import format_symbol, module_at, symbolize
from .memory.target import Target
from .textparse import human_size

FREE_TEXT = {FREE_BITS: "free (in a bin: next chunk's PREV_INUSE is clear)", FREE_TCACHE: "free (tcache)",
             FREE_FAST: "free (fastbin)", FREE_UNKNOWN: STATE_TEXT[FREE_UNKNOWN]}
PF_X = 1


def disassemble(target: Target, addr: int, before: int = 4, after: int = 4) -> Optional[List[dict]]:
    """Instructions around ``addr`` with capstone, decoded from the enclosing symbol's start when
    known (so that boundaries are right), else from ``addr``.  None when capstone is missing."""
    try:
        import capstone
    except ImportError:
        return None
    modes = {"x86-64": (capstone.CS_ARCH_X86, capstone.CS_MODE_64), "i386": (capstone.CS_ARCH_X86, capstone.CS_MODE_32),
             "aarch64": (capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM), "arm": (capstone.CS_ARCH_ARM, capstone.CS_MODE_ARM)}
    if target.arch not in modes:
        return None
    md = capstone.Cs(*modes[target.arch])
    sym = symbolize(target, addr)
    start = addr
    if sym and sym["symbol"] and sym["symbol_offset"] is not None and sym["symbol_offset"] <= 65536:
        start = addr - sym["symbol_offset"]
    end = addr + 16 * (after + 1)
    code = None
    while code is None and end > addr:
        try:
            code = bytes(target.read(start, end - start))
        except MemoryReadError:
            end -= 16
    if code is None:
        return None
    insns = [{"address": i.address, "bytes": i.bytes.hex(), "text": ("%s %s" % (i.mnemonic, i.op_str)).strip()}
             for i in md.disasm(code, start)]
    at = next((k for k, i in enumerate(insns) if i["address"] <= addr < i["address"] + len(i["bytes"]) // 2), None)
    if at is None:
        return insns[:after + 1]
    for i in insns:
        i["here"] = i["address"] <= addr < i["address"] + len(i["bytes"]) // 2
    return insns[max(0, at - before):at + after + 1]


def whatis(target: Target, addr: int, maps: Optional[List[Mapping]] = None) -> dict:
    maps = maps if maps is not None else classify(target)
    ps = target.pointer_size
    out: dict = {"address": hex(addr)}
    m = mapping_at(maps, addr)
    if m is None:
        below = max((x for x in maps if x.end <= addr), key=lambda x: x.end, default=None)
        above = min((x for x in maps if x.start > addr), key=lambda x: x.start, default=None)
        out["kind"] = "unmapped"
        out["lines"] = ["not mapped" + (" (below the lowest mapping 0x%x)" % above.start if above and not below
                                         else "") + (
            " (%s above the end of %s 0x%x-0x%x; %s below %s 0x%x-0x%x)" % (
                human_size(addr - below.end), below.kind, below.start, below.end,
                human_size(above.start - addr) if above else "-", above.kind if above else "-",
                above.start if above else 0, above.end if above else 0) if below and above else "")]
        return out
    out["mapping"] = m.to_json()
    out["kind"] = m.kind
    lines = ["%s mapping 0x%x-0x%x (%s, %s)%s, offset 0x%x" % (
        m.kind, m.start, m.end, human_size(m.size), m.perms,
        " " + m.name if m.name else "", addr - m.start)]

    if m.kind in ("stack", "thread-stack"):
        _stack(target, maps, m, addr, out, lines)
    elif m.kind in ("main-heap", "arena-heap", "anon"):
        _heap(target, maps, m, addr, out, lines)
    sym = symbolize(target, addr)
    if sym is not None:
        out["symbol"] = sym
        mod = module_at(target, addr)
        lines.append("symbol: %s (%s+0x%x)" % (format_symbol(sym), sym["module"], sym["module_offset"]))
        seg_flags = next((f for a, b, f in (mod.segments if mod else []) if a <= addr < b), 0)
        is_code = bool(seg_flags & PF_X or "x" in m.perms[:3])
        out["code"] = is_code
        if is_code:
            insns = disassemble(target, addr)
            if insns:
                out["disassembly"] = insns
                for i in insns:
                    lines.append("%s 0x%x: %-24s %s" % ("=>" if i.get("here") else "  ", i["address"],
                                                         i["bytes"], i["text"]))
            elif insns is None:
                lines.append("(no disassembly: capstone is not importable or the bytes are unreadable)")
    # the word stored there, and what it points to
    try:
        if addr % ps == 0 and not out.get("code"):
            val = target.read_word(addr)
            out["value"] = hex(val)
            vm = mapping_at(maps, val)
            vs = symbolize(target, val) if vm is not None else None
            what = format_symbol(vs) if vs else (vm.kind if vm else "not an address")
            from .vtables import build_index
            idx = build_index(target)
            k = idx.lookup(val)
            if k is not None:
                c = idx.classes[int(idx.point_class[k])]
                what = "vtable for %s%s" % (c.name, "" if idx.point_primary[k] else " (secondary)")
            lines.append("holds 0x%x (%s)" % (val, what))
            out["value_points_to"] = what
    except MemoryReadError:
        lines.append("unreadable here")
        out["readable"] = False
    out["lines"] = lines
    return out


def _stack(target, maps, m, addr, out, lines):
    from .threads import analyze_threads
    rep = analyze_threads(target, maps)
    owner = [ts for ts in rep.threads if ts.mapping is not None and ts.mapping.start == m.start]
    if owner:
        ts = owner[0]
        th = ts.thread
        out["thread"] = {"num": th.num, "lwp": th.lwp, "sp": hex(th.sp)}
        if ts.pthread and m.start <= ts.pthread.address <= addr:   # the main thread's is elsewhere
            lines.append("glibc's struct pthread / TLS of thread %d (LWP %d) (at 0x%x)" % (
                th.num, th.lwp, ts.pthread.address))
        elif addr < th.sp:
            lines.append("stack of thread %d (LWP %d), %s below its SP 0x%x: not in use (dead frames)" % (
                th.num, th.lwp, human_size(th.sp - addr), th.sp))
        else:
            frames = target.frames(th.num)
            where = None
            if frames:
                for k, (level, sp, pc, fn) in enumerate(frames):
                    nxt = frames[k + 1][1] if k + 1 < len(frames) else m.end
                    if sp <= addr < nxt:
                        where = (level, fn, len(frames))
                        break
            if where:
                out["frame"] = {"level": where[0], "function": where[1], "depth": where[2]}
                lines.append("stack of thread %d (LWP %d): frame #%d %s (of %d frames), %s above SP" % (
                    th.num, th.lwp, where[0], where[1] or "??", where[2], human_size(addr - th.sp)))
            else:
                lines.append("stack of thread %d (LWP %d), %s above its SP 0x%x%s" % (
                    th.num, th.lwp, human_size(addr - th.sp), th.sp,
                    "" if frames else " (frames need gdb's unwinder: run inside gdb)"))
        return
    orphan = [o for o in rep.orphans if o.mapping.start == m.start]
    if orphan:
        o = orphan[0]
        out["orphan"] = o.reason
        from .vocabulary import ORPHAN, ORPHAN_REASONS
        lines.append("an %s: %s" % (ORPHAN, ORPHAN_REASONS[o.reason]))


def _heap(target, maps, m, addr, out, lines):
    heap = walk_heap(target, maps)
    i = heap.chunk_index(addr)
    ps = target.pointer_size
    # the first word of a chunk (or of top) is the previous chunk's last usable word while that
    # one is in use (malloc_usable_size = chunksize - SIZE_SZ)
    k = heap.chunk_index(addr - ps)
    if k is not None and k != i and heap.free[k] == 0 and not (heap.mmapped is not None and heap.mmapped[k]) \
            and addr < int(heap.addr[k]) + int(heap.size[k]) + ps:
        i = k
    if i is None:
        for seg in heap.segments:
            if seg.top is not None and seg.top <= addr < seg.top + seg.top_size:
                out["chunk"] = {"start": hex(seg.top), "size": seg.top_size, "state": "top"}
                lines.append("inside the top chunk 0x%x (%s, free) of the %s heap" % (
                    seg.top, human_size(seg.top_size), seg.kind))
                return
            if seg.start <= addr < seg.first:
                lines.append("%s heap metadata (heap_info / malloc_state) before the first chunk 0x%x" % (
                    seg.kind, seg.first))
                return
        return
    c, size, free = int(heap.addr[i]), int(heap.size[i]), int(heap.free[i])
    user = c + 2 * ps
    state = "in use" if free == 0 else FREE_TEXT.get(free, "free")
    chunk = {"start": hex(c), "user": hex(user), "size": size, "state": state, "offset": addr - user}
    cls = None
    if free == 0:
        try:
            from .vtables import build_index
            idx = build_index(target)
            k = idx.primary_class_of(np.array([target.read_word(user)], dtype=np.uint64))[0]
            cls = idx.classes[int(k)].name if k >= 0 else None
        except MemoryReadError:
            pass
    chunk["class"] = cls
    out["chunk"] = chunk
    where = "at the start of" if addr == user else (
        "in the header of" if addr < user else "%d bytes into" % (addr - user))
    if addr >= c + size:
        where += " (its last usable word, the next chunk's prev_size field)"
    lines.append("%s malloc chunk 0x%x (user 0x%x, chunk size %d, %s)%s" % (
        where, c, user, size, state, ", %s %s object" % (article(cls), cls) if cls else ""))
