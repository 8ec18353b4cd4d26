"""Who owns every stack: each thread's stack mapping and use, glibc's struct pthread found in
stack memory, and the stacks no live thread owns (exited without join, or in glibc's cache).

glibc facts used (measured on 2.36, x86-64 and i386; nothing hard-coded that is not validated):
- a thread's struct pthread (its TCB) sits near the top of its stack block and starts with
  tcbhead_t {tcb, dtv, self, ...} where tcb == self == the struct's own address;
- it holds `list_t list` {next, prev}, linking it into GL(dl_stack_used) while the thread
  exists or is unjoined, or GL(dl_stack_cache) once joined/detached-and-exited; the three list
  heads sit together in ld.so's _rtld_global: used, user (the main thread), cache;
- `pid_t tid` follows `list`: the kernel clears it when the thread exits; join sets it to -1.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from . import tls_variant1
from .errors import MemoryReadError
from .maps import Mapping, mapping_at
from .memory.target import Target, ThreadInfo

TOP_SCAN = 64 << 10          # struct pthread lies within this much of a stack block's top
MAX_RING = 100000
REASONS = ("exited-unjoined", "cached", "unowned", "no-registers")


@dataclass
class PthreadInfo:
    address: int
    list_off: Optional[int] = None
    tid: Optional[int] = None
    ring_head: Optional[int] = None
    ring: Tuple[int, ...] = ()


@dataclass
class ThreadStack:
    thread: ThreadInfo
    mapping: Optional[Mapping]
    guard: bool
    pthread: Optional[PthreadInfo] = None

    @property
    def used(self) -> Optional[int]:
        return self.mapping.end - self.thread.sp if self.mapping else None


@dataclass
class OrphanStack:
    mapping: Mapping
    reason: str
    guard: bool
    pthread: Optional[PthreadInfo] = None


@dataclass
class ThreadsReport:
    threads: List[ThreadStack]
    orphans: List[OrphanStack]
    rlimit_stack: Optional[int]
    rlimit_source: str
    pointer_size: int
    findings: List[str] = field(default_factory=list)

    def totals(self) -> dict:
        stacks = [t.mapping for t in self.threads if t.mapping is not None]
        uniq = {m.start: m for m in stacks}
        by_size = collections.Counter(m.size for m in uniq.values())
        return {"threads": len(self.threads), "stacks": len(uniq),
                "stack_bytes": sum(m.size for m in uniq.values()),
                "orphan_stacks": len(self.orphans),
                "orphan_bytes": sum(o.mapping.size for o in self.orphans),
                "by_size": [{"size": s, "stacks": n} for s, n in sorted(by_size.items(), key=lambda kv: -kv[1])],
                "rlimit_stack": self.rlimit_stack, "rlimit_source": self.rlimit_source}


def _dtype(target: Target):
    return np.dtype(("<" if target.byteorder == "little" else ">") + ("u8" if target.pointer_size == 8 else "u4"))


def find_pthreads(target: Target, start: int, end: int) -> List[int]:
    """Addresses in [start, end) where a tcbhead_t starts (tcb == self == its own address),
    looking at the top TOP_SCAN bytes first, then at the whole range."""
    ps = target.pointer_size
    dt = _dtype(target)
    for lo in (max(start, end - TOP_SCAN), start):
        found = []
        a = lo
        while a < end:
            n = min(4 << 20, end - a)
            try:
                w = np.frombuffer(bytes(target.read(a, n)), dtype=dt)
            except MemoryReadError:
                a += n
                continue
            addrs = np.uint64(a) + np.arange(len(w), dtype=np.uint64) * np.uint64(ps)
            wv = w.astype(np.uint64)
            hit = np.flatnonzero((wv[:-2] == addrs[:-2]) & (wv[2:] == addrs[:-2]))
            found.extend(int(addrs[h]) for h in hit)
            a += n
        if found or lo == start:
            return found
    return []


def _list_offset(target: Target, pd: int) -> Optional[int]:
    """Offset of `list` in struct pthread: the first (next, prev) pair after the TCB header whose
    neighbours point back at it."""
    ps = target.pointer_size
    try:
        words = target.read_words(pd, 1024 // ps)
    except MemoryReadError:
        return None
    for k in range(3, len(words) - 1):
        nxt, prv = words[k], words[k + 1]
        me = pd + k * ps
        if not nxt or not prv or nxt % ps or prv % ps or nxt == me:
            continue
        try:
            if target.read_word(nxt + ps) == me and target.read_word(prv) == me:
                return k * ps
        except MemoryReadError:
            continue
    return None


def _ring(target: Target, start: int) -> List[int]:
    out = [start]
    cur = start
    for _ in range(MAX_RING):
        try:
            cur = target.read_word(cur)
        except MemoryReadError:
            return out
        if cur == start or not cur:
            break
        out.append(cur)
    return out


def _signed32(v: int) -> int:
    return v - (1 << 32) if v >= 1 << 31 else v


def describe_pthread(target: Target, pd: int, list_off: Optional[int]) -> PthreadInfo:
    info = PthreadInfo(pd, list_off)
    if list_off is None:
        return info
    try:
        raw = bytes(target.read(pd + list_off + 2 * target.pointer_size, 4))
        info.tid = _signed32(int.from_bytes(raw, target.byteorder))
    except MemoryReadError:
        pass
    info.ring = tuple(_ring(target, pd + list_off))
    return info


def _is_list_head_of_pthreads(target: Target, head: int, list_off: int) -> bool:
    """Is ``head`` a non-empty list whose first element is a struct pthread (tcb == self)?"""
    try:
        first = target.read_word(head)
        if not first or first == head:
            return False
    except MemoryReadError:
        return False
    return _looks_like_pthread(target, first - list_off)


def _ring_head(target: Target, info: PthreadInfo, live_pds: Dict[int, int]) -> Optional[int]:
    """The one node of a struct pthread's list ring that is no struct pthread: the list head."""
    heads = [a for a in info.ring if a - info.list_off not in live_pds
             and not _looks_like_pthread(target, a - info.list_off)]
    return heads[0] if len(heads) == 1 else None


def classify_orphan(target: Target, orphan: PthreadInfo, live_pds: Dict[int, int],
                    used_head: Optional[int]) -> str:
    """exited-unjoined (still on GL(dl_stack_used)), cached (GL(dl_stack_cache)) or unowned."""
    if orphan.list_off is None or not orphan.ring:
        return "unowned"
    lo = orphan.list_off
    members = {a - lo for a in orphan.ring}
    if members & set(live_pds):
        return "exited-unjoined"
    head = _ring_head(target, orphan, live_pds)
    ps = target.pointer_size
    if head is not None:
        if used_head is not None:
            return "exited-unjoined" if head == used_head else "cached"
        # _rtld_global: dl_stack_used, dl_stack_user (holds the main thread), dl_stack_cache
        if _is_list_head_of_pthreads(target, head + 2 * ps, lo):
            return "exited-unjoined"
        if _is_list_head_of_pthreads(target, head - 2 * ps, lo):
            return "cached"
    if orphan.tid == -1:
        return "cached"
    return "unowned"


def _looks_like_pthread(target: Target, pd: int) -> bool:
    try:
        tcb, _dtv, self_ = target.read_words(pd, 3)
    except MemoryReadError:
        return False
    return tcb == pd == self_


SMALL_MAPPING = 1 << 20


def thread_pointers(target: Target, maps: List[Mapping]) -> Dict[int, int]:
    """LWP -> thread pointer (the address of its struct pthread on x86) of every live thread:
    from fs_base where the target has it (x86-64), else from the struct pthreads found in
    memory (tcb == self) whose ``tid`` is a live thread's LWP: near the top of the mappings that
    hold a thread's SP, in small writable mappings (the main thread's, from ld.so) and at the
    start of [heap] (a static executable's)."""
    ps = target.pointer_size
    threads = target.threads()
    out: Dict[int, int] = {}
    for t in threads:
        tp = t.regs.get("fs_base") if target.arch == "x86-64" else None
        if tp and _looks_like_pthread(target, tp):
            out[t.lwp] = tp
    missing = {t.lwp for t in threads if t.lwp not in out}
    if missing and tls_variant1.is_variant1(target):
        out.update((k, v) for k, v in tls_variant1.thread_pointers(target).items() if k in missing)
        return out
    if not missing or target.arch not in ("i386", "x86-64"):
        return out
    ranges = []
    for t in threads:
        m = mapping_at(maps, t.sp)
        if m is not None:
            ranges.append((max(m.start, m.end - TOP_SCAN), m.end))
    for m in maps:
        if "w" in m.perms[:3] and (m.size <= SMALL_MAPPING or m.kind == "main-heap") and not m.perms.endswith("s"):
            ranges.append((m.start, min(m.end, m.start + SMALL_MAPPING)))
        elif "w" in m.perms[:3] and not m.path and not m.perms.endswith("s"):
            # ld.so's mmap of the main thread's TLS, merged by the kernel with mmaps made after it
            # (below it: malloc's mmapped chunks) into one big mapping: at its top
            ranges.append((max(m.start, m.end - TOP_SCAN), m.end))
    list_off = None
    for a, b in sorted(set(ranges)):
        for pd in find_pthreads(target, a, b):
            if list_off is None:
                list_off = _list_offset(target, pd)
                if list_off is None:
                    continue
            try:
                raw = bytes(target.read(pd + list_off + 2 * ps, 4))
            except MemoryReadError:
                continue
            tid = _signed32(int.from_bytes(raw, target.byteorder))
            if tid in missing:
                out[tid] = pd
                missing.discard(tid)
        if not missing:
            break
    return out


def rlimit_stack(target: Target, sizes: List[int]) -> Tuple[Optional[int], str]:
    """RLIMIT_STACK's soft value: /proc/PID/limits when the process is on this machine, else the
    most common thread stack size (glibc's default stack size is RLIMIT_STACK)."""
    if target.kind in ("live", "remote") and target.pid:
        try:
            with open("/proc/%d/limits" % target.pid) as fh:
                for line in fh:
                    if line.startswith("Max stack size"):
                        soft = line[len("Max stack size"):].split()[0]
                        return (None if soft == "unlimited" else int(soft)), "/proc/%d/limits" % target.pid
        except (OSError, ValueError, IndexError):
            pass
    if sizes:
        size, _n = collections.Counter(sizes).most_common(1)[0]
        return size, "inferred from the most common thread stack size"
    return None, "unknown"


def analyze_threads(target: Target, maps: List[Mapping]) -> ThreadsReport:
    ps = target.pointer_size
    by_end = {m.end: m for m in maps}

    def has_guard(m):
        below = by_end.get(m.start)
        return below is not None and below.kind == "guard"

    threads: List[ThreadStack] = []
    live_pds: Dict[int, int] = {}
    list_off = None
    for t in target.threads():
        m = mapping_at(maps, t.sp)
        ts = ThreadStack(t, m, bool(m and has_guard(m)))
        pd = None
        fs = t.regs.get("fs_base") if ps == 8 else None
        if fs and _looks_like_pthread(target, fs):
            pd = fs
        elif tls_variant1.is_variant1(target):     # found through glibc's thread lists
            pd = tls_variant1.pthread_of_lwp(target, t.lwp)
            list_off = tls_variant1.LIST_WORDS * ps
        elif m is not None and m.kind == "thread-stack":
            cands = find_pthreads(target, m.start, m.end)
            pd = cands[-1] if cands else None
        if pd is not None:
            if list_off is None:
                list_off = _list_offset(target, pd)
            ts.pthread = describe_pthread(target, pd, list_off)
            live_pds[pd] = t.lwp
        threads.append(ts)

    # GL(dl_stack_used): the ring holding a live non-main thread
    used_head = None
    for ts in threads:
        p = ts.pthread
        if p and p.ring and ts.mapping is not None and ts.mapping.kind == "thread-stack":
            used_head = _ring_head(target, p, live_pds)
            if used_head is not None:
                break

    owned = {ts.mapping.start for ts in threads if ts.mapping is not None}
    orphans: List[OrphanStack] = []
    for m in maps:
        if m.kind != "thread-stack" or m.start in owned:
            continue
        cands = [] if tls_variant1.is_variant1(target) else find_pthreads(target, m.start, m.end)
        info = None
        reason = "unowned"
        got = tls_variant1.pthread_in(target, m.start, m.end) if tls_variant1.is_variant1(target) else None
        if got is not None:
            info = describe_pthread(target, got[0], tls_variant1.LIST_WORDS * ps)
            reason = tls_variant1.orphan_reason(got[1])
            if info.tid in getattr(target, "threads_without_registers", ()):
                reason = "no-registers"
        if cands:
            pd = cands[-1]
            lo = list_off if list_off is not None else _list_offset(target, pd)
            list_off = list_off if list_off is not None else lo
            info = describe_pthread(target, pd, lo)
            reason = classify_orphan(target, info, live_pds, used_head)
            if info.tid is not None and info.tid in getattr(target, "threads_without_registers", ()):
                reason = "no-registers"       # a live thread gdb could not read: its stack is live
        orphans.append(OrphanStack(m, reason, has_guard(m), info))

    sizes = [ts.mapping.size for ts in threads if ts.mapping is not None and ts.mapping.kind == "thread-stack"]
    sizes += [o.mapping.size for o in orphans]
    rl, src = rlimit_stack(target, sizes)
    rep = ThreadsReport(threads, orphans, rl, src, ps)
    rep.findings = findings(rep, maps)
    return rep


def _mib(n: int) -> str:
    v = n / float(1 << 20)
    return ("%.0f" % v) if abs(v - round(v)) < 0.05 else ("%.1f" % v)


def _gib(n: int) -> str:
    return "%.1f" % (n / float(1 << 30))


def findings(rep: ThreadsReport, maps: List[Mapping]) -> List[str]:
    out = []
    unjoined = [o for o in rep.orphans if o.reason == "exited-unjoined"]
    cached = [o for o in rep.orphans if o.reason == "cached"]
    unowned = [o for o in rep.orphans if o.reason == "unowned"]
    if unjoined:
        out.append("%d exited thread%s never joined: %s MiB of stack (call pthread_join or detach them)" % (
            len(unjoined), "s were" if len(unjoined) > 1 else " was", _mib(sum(o.mapping.size for o in unjoined))))
    if cached:
        out.append("%d stack%s cached by glibc after join/detach: %s MiB (reused by the next threads)" % (
            len(cached), "s" if len(cached) > 1 else "", _mib(sum(o.mapping.size for o in cached))))
    if unowned:
        out.append("%d stack-shaped mapping%s with no owning thread: %s MiB" % (
            len(unowned), "s" if len(unowned) > 1 else "", _mib(sum(o.mapping.size for o in unowned))))
    tot = rep.totals()
    if rep.pointer_size == 4:
        space = 3 << 30
        stack_all = tot["stack_bytes"] + tot["orphan_bytes"]
        if stack_all >= space // 4:
            common = tot["by_size"][0]["size"] if tot["by_size"] else 0
            out.append("%d threads x %s MiB stacks = %s GiB of a 3 GiB address space (32-bit target)" % (
                tot["stacks"] + tot["orphan_stacks"], _mib(common), _gib(stack_all)))
    if rep.rlimit_stack and rep.rlimit_stack > (8 << 20):
        out.append("RLIMIT_STACK is %s MiB (%s): every new thread reserves that much" % (
            _mib(rep.rlimit_stack), rep.rlimit_source))
    for ts in rep.threads:
        m = ts.mapping
        if m is None:
            out.append("thread %d (LWP %d): SP 0x%x is in no mapping (stack overflow or corrupt SP)" % (
                ts.thread.num, ts.thread.lwp, ts.thread.sp))
            continue
        if m.kind == "thread-stack" and ts.used is not None and ts.used >= 0.75 * m.size:
            if m.size >= 1 << 20:
                use = "%s of %s MiB" % (_mib(ts.used), _mib(m.size))
            else:
                use = "%d of %d KiB" % (ts.used >> 10, m.size >> 10)
            out.append("thread %d (LWP %d) uses %s of its stack (%.0f%%)" % (
                ts.thread.num, ts.thread.lwp, use, 100.0 * ts.used / m.size))
    return out
