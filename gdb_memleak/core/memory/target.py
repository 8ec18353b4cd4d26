"""The Target interface every analysis takes first, its data types, and a bytes-backed fake.

A target exposes the address space of one process: pointer size, byte order,
``read(addr, n)``, the raw regions (mappings), threads with registers, auxv and
the loaded modules.  Implementations: ``GdbTarget`` (gdbext), ``CoreTarget``
(elfcore) and ``FakeTarget`` (here, for unit tests).
"""
from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ..errors import MemoryReadError

PAGE = 4096


@dataclass
class Region:
    """One mapping as the target reports it (before classification)."""
    start: int
    end: int
    perms: str = "rw-p"
    offset: int = 0
    path: Optional[str] = None
    rss: Optional[int] = None            # bytes, live only (smaps)
    private_dirty: Optional[int] = None  # bytes, live only (smaps)
    # Core files: [start, start+filesz) holds bytes; the rest of the region is not in the core.
    data_end: Optional[int] = None

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def readable_end(self) -> int:
        return self.end if self.data_end is None else self.data_end

    def __contains__(self, addr: int) -> bool:
        return self.start <= addr < self.end


@dataclass
class ThreadInfo:
    num: int                  # gdb's thread number (1-based; note order offline)
    lwp: int
    sp: int
    pc: int
    name: Optional[str] = None
    function: Optional[str] = None
    regs: Dict[str, int] = field(default_factory=dict)


@dataclass
class Module:
    path: str
    start: int
    end: int
    load_bias: int
    build_id: Optional[str] = None
    is_main: bool = False
    segments: List[Tuple[int, int, int]] = field(default_factory=list)  # (start, end, PF_* flags) at run time

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


# auxv keys we use
AT_PHDR, AT_PAGESZ, AT_BASE, AT_ENTRY, AT_SYSINFO_EHDR, AT_RANDOM, AT_EXECFN = 3, 6, 7, 9, 33, 25, 31


VGDB_HINT = ("not connected to valgrind's gdbserver: run the program as 'valgrind --vgdb=yes --vgdb-error=0 PROG', "
             "then in gdb 'target remote | vgdb --pid=N' (or offline: python -m gdb_memleak --vgdb-pid N vgdb ...)")


class Target:
    """Abstract target.  Subclasses set the attributes and implement the ``_load_*`` hooks."""

    kind = "offline"          # live | core | remote | offline
    pid: Optional[int] = None
    pointer_size = 8
    byteorder = "little"
    arch = "x86-64"
    executable: Optional[str] = None
    core_path: Optional[str] = None

    def __init__(self):
        self._regions: Optional[List[Region]] = None
        self._threads: Optional[List[ThreadInfo]] = None
        self._modules: Optional[List[Module]] = None
        self._auxv: Optional[Dict[int, int]] = None
        self.warnings: List[str] = []

    # -- memory -----------------------------------------------------------
    def read(self, addr: int, n: int):
        """Return ``n`` bytes (a bytes-like object) at ``addr`` or raise MemoryReadError."""
        raise NotImplementedError

    def read_into(self, addr: int, buf) -> None:
        """Fill the writable buffer ``buf`` with the bytes at ``addr`` or raise MemoryReadError."""
        if not self.fast_read_into(addr, buf):
            buf[:] = self.read(addr, len(buf))

    def fast_read_into(self, addr: int, buf) -> bool:
        """Fill ``buf`` straight from a file (core data, /proc/PID/mem) with ``preadv``: no
        allocation, the GIL released, safe in a worker thread.  False when this target or range
        has no such path (or it failed): then use ``read``/``read_into`` from the main thread."""
        return False

    def read_word(self, addr: int) -> int:
        return int.from_bytes(bytes(self.read(addr, self.pointer_size)), self.byteorder)

    def read_words(self, addr: int, count: int) -> Tuple[int, ...]:
        fmt = ("<" if self.byteorder == "little" else ">") + ("Q" if self.pointer_size == 8 else "I") * count
        return struct.unpack(fmt, bytes(self.read(addr, self.pointer_size * count)))

    def try_read(self, addr: int, n: int):
        try:
            return self.read(addr, n)
        except MemoryReadError:
            return None

    def read_cstring(self, addr: int, limit: int = 4096) -> Optional[bytes]:
        """Bytes up to the NUL at ``addr``; None when unreadable or unterminated within ``limit``."""
        out = b""
        while len(out) < limit:
            step = min(256, limit - len(out), PAGE - ((addr + len(out)) % PAGE))
            chunk = self.try_read(addr + len(out), step)
            if chunk is None:
                return None
            chunk = bytes(chunk)
            nul = chunk.find(b"\0")
            if nul >= 0:
                return out + chunk[:nul]
            out += chunk
        return None

    # -- layout -----------------------------------------------------------
    def regions(self) -> List[Region]:
        if self._regions is None:
            self._regions = sorted(self._load_regions(), key=lambda r: r.start)
        return self._regions

    def threads(self) -> List[ThreadInfo]:
        if self._threads is None:
            self._threads = self._load_threads()
        return self._threads

    def auxv(self) -> Dict[int, int]:
        if self._auxv is None:
            self._auxv = self._load_auxv()
        return self._auxv

    def modules(self) -> List[Module]:
        if self._modules is None:
            from .modules import find_modules
            self._modules = find_modules(self)
        return self._modules

    def region_at(self, addr: int) -> Optional[Region]:
        regs = self.regions()
        i = bisect.bisect_right([r.start for r in regs], addr) - 1
        if i >= 0 and addr < regs[i].end:
            return regs[i]
        return None

    def symbol_at(self, addr: int) -> Optional[Tuple[str, int]]:
        """(function or variable name, offset) from the debugger's own symbols (gdb: its minimal
        and debug symbols, separate debug files included); None when the target has none."""
        return None

    def type_size(self, name: str, module: Optional[str] = None) -> Optional[int]:
        """sizeof(name) from debug info when the target has it (gdb); None otherwise.  ``module``
        (a file name) lets a target skip the lookup when that module has no DWARF at all."""
        return None

    def monitor(self, command: str) -> str:
        """Run a valgrind gdbserver monitor command and return its text output."""
        from ..errors import TargetError
        raise TargetError(VGDB_HINT)

    def continue_to(self, location: str) -> bool:
        """Resume until LOCATION is reached (a breakpoint); False when the program ended."""
        from ..errors import UsageError
        raise UsageError("--breakpoint needs gdb connected to the process (inside gdb)")

    def on_stop(self, callback):
        """Call ``callback(target)`` at every stop of the program (gdb only)."""
        from ..errors import UsageError
        raise UsageError("--every-stop needs gdb connected to the process (inside gdb)")

    def frames(self, thread_num: int, limit: int = 256) -> Optional[List[Tuple[int, int, int, Optional[str]]]]:
        """(level, sp, pc, function) of a thread's frames, innermost first, when the target can
        unwind (gdb); None otherwise."""
        return None

    def describe(self) -> dict:
        return {"kind": self.kind, "pid": self.pid, "pointer_size": self.pointer_size,
                "arch": self.arch, "byteorder": self.byteorder,
                "executable": self.executable, "core": self.core_path}

    def _load_regions(self) -> List[Region]:
        raise NotImplementedError

    def _load_threads(self) -> List[ThreadInfo]:
        return []

    def _load_auxv(self) -> Dict[int, int]:
        return {}


class FakeTarget(Target):
    """A bytes-backed target for unit tests: ``segments`` maps start address to bytes."""

    def __init__(self, segments: Dict[int, bytes], regions: List[Region] = (), threads=(),
                 pointer_size=8, auxv=None, kind="offline"):
        super().__init__()
        self.kind = kind
        self.pointer_size = pointer_size
        self.arch = "x86-64" if pointer_size == 8 else "i386"
        self._segs = sorted((s, bytes(b)) for s, b in segments.items())
        self._starts = [s for s, _ in self._segs]
        self._fake_regions = list(regions) or [Region(s, s + len(b)) for s, b in self._segs]
        self._fake_threads = list(threads)
        self._fake_auxv = dict(auxv or {})

    def read(self, addr, n):
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0:
            start, data = self._segs[i]
            if addr + n <= start + len(data):
                return memoryview(data)[addr - start:addr - start + n]
        raise MemoryReadError(addr, n)

    def _load_regions(self):
        return list(self._fake_regions)

    def _load_threads(self):
        return list(self._fake_threads)

    def _load_auxv(self):
        return dict(self._fake_auxv)
