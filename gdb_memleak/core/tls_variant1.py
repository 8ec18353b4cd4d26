"""Threads' struct pthread and thread pointers on TLS variant I architectures (AArch64, ARM),
from glibc's own lists, without debug info and without a thread-pointer register in the core.

On x86 (TLS variant II) a thread's struct pthread starts with tcbhead_t {tcb, dtv, self}: tcb ==
self == its address, and the thread pointer (%fs/%gs) is that address.  On AArch64 and ARM
(variant I) nothing in struct pthread points at itself: it starts with a 24-pointer union
(``header`` / ``__padding[24]``), then ``list_t list`` and ``pid_t tid``; the thread pointer
(TPIDR_EL0 / TPIDRURO) points just past it, at tcbhead_t {dtv, private}, and static TLS follows
(``THREAD_SELF == (struct pthread *) tp - 1``).  qemu-user's cores hold no NT_ARM_TLS note, and
no core holds TPIDRURO, so the thread pointer is found in memory:

1. glibc links every struct pthread into one of three lists whose heads sit together in ld.so's
   ``_rtld_global`` (in the executable's data when static): ``_dl_stack_used`` (threads made by
   pthread_create, until joined), ``_dl_stack_user`` (the main thread) and ``_dl_stack_cache``.
   A list head is a (next, prev) pair in a module's writable data whose ring comes back to it;
   the ring holding live threads' ``tid`` (node + 2 words) is one of them.  That gives each live
   LWP its struct pthread (node - 24 pointers), and the orphan stacks their list.
2. The thread pointer is the first address above ``list`` where a tcbhead_t starts: its ``dtv``
   points at a dtv array (``dtv[-1]`` its length, ``dtv[m].pointer.val`` the static TLS block of
   module m: just above the thread pointer), at the same distance in every live thread.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from .errors import MemoryReadError
from .memory.target import Target

VARIANT1_ARCHS = ("aarch64", "arm")
LIST_WORDS = 24              # struct pthread: union {header; void *__padding[24]}, then list_t list
MAX_RING = 100000
TCB_SEARCH = 16384           # sizeof(struct pthread) is ~1.8 KiB (ARM) to ~2 KiB (AArch64) on glibc 2.36
STATIC_TLS_MAX = 1 << 20
HEADS = ("used", "user", "cache")


@dataclass
class StackLists:
    """glibc's three thread lists: head address -> its nodes (list_t addresses), in order."""
    heads: Dict[str, int] = field(default_factory=dict)           # used/user/cache -> head address
    rings: Dict[int, Tuple[int, ...]] = field(default_factory=dict)
    node_by_lwp: Dict[int, int] = field(default_factory=dict)      # live LWP -> its list node
    list_of_node: Dict[int, str] = field(default_factory=dict)     # node -> used/user/cache
    tid_of_node: Dict[int, int] = field(default_factory=dict)
    tcb_offset: Optional[int] = None                               # thread pointer - node

    def pthread(self, node: int, ps: int) -> int:
        return node - LIST_WORDS * ps


def is_variant1(target: Target) -> bool:
    return target.arch in VARIANT1_ARCHS


def _signed32(v: int) -> int:
    return v - (1 << 32) if v >= 1 << 31 else v


def _tid(target: Target, node: int) -> Optional[int]:
    try:
        raw = bytes(target.read(node + 2 * target.pointer_size, 4))
    except MemoryReadError:
        return None
    return _signed32(int.from_bytes(raw, target.byteorder))


def _ring(target: Target, head: int) -> Optional[Tuple[int, ...]]:
    """The nodes of the doubly-linked ring at ``head`` (head excluded), or None when it is no ring:
    every node's prev must be the node before it, and the walk must come back to ``head``."""
    ps = target.pointer_size
    out: List[int] = []
    cur = head
    seen = {head}
    for _ in range(MAX_RING):
        try:
            nxt, = target.read_words(cur, 1)
            back = target.read_word(nxt + ps) if nxt else None
        except MemoryReadError:
            return None
        if not nxt or nxt % ps or back != cur:
            return None
        if nxt == head:
            return tuple(out)
        if nxt in seen:
            return None
        seen.add(nxt)
        out.append(nxt)
        cur = nxt
    return None


def _segments(target: Target):
    """Writable PT_LOADs of ld.so first (``_rtld_global``), then of the executable (static), then
    of every other module."""
    mods = target.modules()
    rtld = [m for m in mods if m.name.startswith(("ld-linux", "ld.so", "ld-"))]
    order = rtld + [m for m in mods if m.is_main and m not in rtld] + [m for m in mods if m not in rtld
                                                                         and not m.is_main]
    for mod in order:
        for a, b, flags in mod.segments:
            if flags & 2:
                yield a, b


def stack_lists(target: Target) -> Optional[StackLists]:
    """glibc's _dl_stack_used/_dl_stack_user/_dl_stack_cache and what hangs on them (cached on
    the target); None when no list holding a live thread is found."""
    if "_stack_lists" in target.__dict__:
        return target.__dict__["_stack_lists"]
    res = _find_stack_lists(target)
    target.__dict__["_stack_lists"] = res
    return res


def _find_stack_lists(target: Target) -> Optional[StackLists]:
    ps = target.pointer_size
    threads = target.threads()
    live = {t.lwp for t in threads}
    if not live:
        return None
    main_lwp = target.pid if target.pid in live else threads[0].lwp
    for a, b in _segments(target):
        a -= a % ps
        data = target.try_read(a, b - a - (b - a) % ps)
        if data is None:
            continue
        data = bytes(data)
        e = "little" if target.byteorder == "little" else "big"
        n = len(data) // ps
        words = [int.from_bytes(data[i * ps:(i + 1) * ps], e) for i in range(n)]
        for k in range(2, n - 3):
            head = a + k * ps
            nxt, prv = words[k], words[k + 1]
            if not nxt or not prv or nxt % ps or prv % ps or nxt == head:
                continue
            ring = _ring(target, head)
            if not ring:
                continue
            tids = {node: _tid(target, node) for node in ring}
            if main_lwp not in tids.values():
                continue
            # the main thread's list is _dl_stack_user; _dl_stack_used is before it, the cache after
            used, user, cache = head - 2 * ps, head, head + 2 * ps
            out = StackLists(heads={"used": used, "user": user, "cache": cache})
            for name, h in out.heads.items():
                r = ring if h == head else _ring(target, h)
                if r is None:
                    r = ()
                out.rings[h] = r
                for node in r:
                    out.list_of_node[node] = name
                    t = tids.get(node) if h == head else _tid(target, node)
                    if t is not None:
                        out.tid_of_node[node] = t
                        if t in live and name != "cache":
                            out.node_by_lwp.setdefault(t, node)
            return out
    return None


def _dtv_ok(target: Target, q: int) -> bool:
    """Is there a tcbhead_t {dtv, private} at ``q``: dtv points at a dtv array (dtv[-1].counter =
    its length) one of whose first module slots points at a static TLS block just above ``q``?"""
    ps = target.pointer_size
    try:
        dtv = target.read_word(q)
        if not dtv or dtv % ps:
            return False
        length = target.read_word(dtv - 2 * ps)
        if not 1 <= length <= 1 << 16:
            return False
        vals = target.read_words(dtv, 2 * min(length + 1, 64))
    except MemoryReadError:
        return False
    if vals[0] > 1 << 24:          # dtv[0]: the generation counter
        return False
    return any(q + 2 * ps <= v < q + STATIC_TLS_MAX for v in vals[2::2])


def thread_pointers(target: Target) -> Dict[int, int]:
    """LWP -> thread pointer of every live thread whose struct pthread is on glibc's lists; the
    distance from ``list`` to the thread pointer is the one every such thread agrees on."""
    sl = stack_lists(target)
    if sl is None or not sl.node_by_lwp:
        return {}
    ps = target.pointer_size
    votes: Counter = Counter()
    nodes = sorted(sl.node_by_lwp.items())
    for _lwp, node in nodes[:8]:
        for j in range(3 * ps, TCB_SEARCH, ps):
            if _dtv_ok(target, node + j):
                votes[j] += 1
                break
    if not votes:
        return {}
    off, _n = max(votes.items(), key=lambda kv: (kv[1], -kv[0]))
    sl.tcb_offset = off
    return {lwp: node + off for lwp, node in nodes if _dtv_ok(target, node + off)}


def pthread_of_lwp(target: Target, lwp: int) -> Optional[int]:
    """The struct pthread of a live thread, from glibc's lists (None when not on them)."""
    sl = stack_lists(target)
    node = sl.node_by_lwp.get(lwp) if sl is not None else None
    return sl.pthread(node, target.pointer_size) if node is not None else None


def orphan_reason(list_name: str) -> str:
    """An orphan stack's reason from the list its struct pthread hangs on."""
    return {"used": "exited-unjoined", "cache": "cached"}.get(list_name, "unowned")


def pthread_in(target: Target, start: int, end: int) -> Optional[Tuple[int, str, Optional[int]]]:
    """(struct pthread address, list name, tid) of the struct pthread on glibc's lists whose
    ``list`` node lies in [start, end) (the highest one), or None."""
    sl = stack_lists(target)
    if sl is None:
        return None
    inside = [n for n in sl.list_of_node if start <= n < end]
    if not inside:
        return None
    node = max(inside)
    return sl.pthread(node, target.pointer_size), sl.list_of_node[node], sl.tid_of_node.get(node)
