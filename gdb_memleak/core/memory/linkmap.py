"""Name the file-backed mappings of a core that has no NT_FILE note, from the dynamic linker's
own list of loaded objects.

qemu-user's cores (``qemu-arm``, ``qemu-aarch64`` …) carry NT_PRSTATUS, NT_PRPSINFO and NT_AUXV
but no NT_FILE, and leave out the pages of executable mappings that start with an ELF header:
nothing in the core says which file a mapping is.  The process itself knows:

- the executable: ``AT_ENTRY - e_entry`` is its load bias, checked against ``AT_PHDR`` (and
  ``AT_PHNUM``) — so the file given with ``--exe`` is the one the core ran, or an error says so;
- its ``PT_DYNAMIC`` holds ``DT_DEBUG`` = ``&_r_debug``; ``r_debug.r_map`` is the ``link_map``
  chain ``{l_addr, l_name, l_ld, l_next, l_prev}`` of every loaded object: load bias and path
  (ld.so's own entry included); each library file, found like gdb's ``set sysroot`` does, gives
  its ``PT_LOAD`` headers, checked by ``l_ld == l_addr + PT_DYNAMIC.p_vaddr``.

Each object yields what the kernel's NT_FILE would list: one mapping per ``PT_LOAD`` (page-
rounded, its file part only: ``.bss`` past it is anonymous memory), and the ``PROT_NONE`` holes
ld.so leaves between segments (64 KiB-aligned objects on AArch64), all named by the file.
"""
from __future__ import annotations

import mmap
import struct
from typing import Callable, List, Optional, Tuple

from ..errors import MemoryReadError, TargetError
from .modules import open_regular, parse_elf_header

AT_PHDR, AT_PHNUM, AT_PAGESZ, AT_ENTRY = 3, 5, 6, 9
PT_LOAD, PT_DYNAMIC = 1, 2
DT_NULL, DT_DEBUG = 0, 21
MAX_OBJECTS = 4096
MAX_DYNAMIC = 4096


class _ElfFile:
    """Program headers and entry point of an ELF file on this machine."""

    def __init__(self, path: str):
        fh, size = open_regular(path, "file")
        try:
            self.data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        finally:
            fh.close()
        hdr = parse_elf_header(self._read, 0)
        if not hdr:
            raise TargetError("%s is not an ELF file" % path)
        self.cls, self.e, self.e_type, self.phdrs = hdr
        self.entry, = struct.unpack_from(self.e + ("Q" if self.cls == 8 else "I"), self.data, 24)
        self.phoff, = struct.unpack_from(self.e + ("Q" if self.cls == 8 else "I"), self.data,
                                         32 if self.cls == 8 else 28)

    def _read(self, addr, n):
        if addr < 0 or addr + n > len(self.data):
            raise MemoryReadError(addr, n, "past the end of the file")
        return self.data[addr:addr + n]

    def read_loaded(self, vaddr: int, n: int):
        """Bytes at ``vaddr`` of the file's address space from its read-only PT_LOADs' file data
        (what the process cannot have changed), or None."""
        for p_type, off, pv, filesz, _m, flags in self.phdrs:
            if p_type == PT_LOAD and not flags & 2 and pv <= vaddr and vaddr + n <= pv + filesz \
                    and off + filesz <= len(self.data):
                return self.data[off + vaddr - pv:off + vaddr - pv + n]
        return None

    def loads(self):
        return [p for p in self.phdrs if p[0] == PT_LOAD]

    def dynamic(self):
        return next((p for p in self.phdrs if p[0] == PT_DYNAMIC), None)

    def phdr_vaddr(self) -> Optional[int]:
        """Where the program headers are in the file's address space (PT_PHDR, else inside the
        PT_LOAD that maps file offset e_phoff)."""
        for p in self.phdrs:
            if p[0] == 6:       # PT_PHDR
                return p[2]
        for p_type, off, vaddr, filesz, _m, _f in self.phdrs:
            if p_type == PT_LOAD and off <= self.phoff < off + filesz:
                return vaddr + self.phoff - off
        return None

    def close(self):
        if isinstance(self.data, mmap.mmap):
            self.data.close()


def object_mappings(elf: _ElfFile, bias: int, path: str, page: int) -> List[Tuple[int, int, int, str]]:
    """(start, end, file offset, path) of an object loaded at ``bias``: each PT_LOAD's file part,
    and the holes between them (mapped from the file PROT_NONE by ld.so)."""
    out = []
    loads = sorted(elf.loads(), key=lambda p: p[2])
    if not loads:
        return out
    first_start = bias + (loads[0][2] & ~(page - 1))
    first_off = loads[0][1] & ~(page - 1)
    prev_end = None
    for _t, off, vaddr, filesz, memsz, _f in loads:
        start = bias + (vaddr & ~(page - 1))
        end = (bias + vaddr + max(filesz, 1) + page - 1) & ~(page - 1)
        if prev_end is not None and start > prev_end:
            out.append((prev_end, start, first_off + (prev_end - first_start), path))
        if prev_end is not None and start < prev_end:
            start = prev_end          # two segments sharing a page: the page is the earlier one's
        if end > start:
            out.append((start, end, (off & ~(page - 1)) + (start - bias - (vaddr & ~(page - 1))), path))
            prev_end = end
    return out


def files_from_link_map(read: Callable[[int, int], bytes], auxv: dict, pointer_size: int, byteorder: str,
                        exe: str, exe_name: str, locate: Callable[[str], Optional[str]]):
    """([(start, end, offset, path)], [warnings]) of the executable ``exe`` (a local file, named
    ``exe_name`` in the result) and every object on the dynamic linker's list.  ``read`` reads
    target memory (a core's own bytes are enough: .dynamic, r_debug, link_map and the names are
    writable or RELRO data); ``locate(path)`` finds an object's file on this machine.  A
    TargetError when ``exe`` is not the core's executable."""
    ps = pointer_size
    e = "<" if byteorder == "little" else ">"
    w = e + ("Q" if ps == 8 else "I")
    page = auxv.get(AT_PAGESZ) or 4096
    if page & (page - 1) or not 1024 <= page <= 1 << 20:
        page = 4096
    warnings: List[str] = []

    def word(addr):
        return struct.unpack(w, bytes(read(addr, ps)))[0]

    out: List[Tuple[int, int, int, str]] = []
    try:
        elf = _ElfFile(exe)
    except (TargetError, MemoryReadError, struct.error, OSError) as err:
        raise TargetError("cannot read --exe %s: %s" % (exe, err))
    try:
        if AT_ENTRY not in auxv or AT_PHDR not in auxv:
            raise TargetError("the core names no mapped files (no NT_FILE note) and has no auxiliary vector "
                              "(AT_ENTRY, AT_PHDR): the executable cannot be placed")
        bias = (auxv[AT_ENTRY] - elf.entry) % (1 << (8 * ps))
        pv = elf.phdr_vaddr()
        if pv is None or (bias + pv) % (1 << (8 * ps)) != auxv[AT_PHDR] or \
                (AT_PHNUM in auxv and auxv[AT_PHNUM] != len(elf.phdrs)):
            raise TargetError("--exe %s is not the core's executable: its entry point and program headers are not "
                              "where the core's auxiliary vector puts them (AT_ENTRY 0x%x, AT_PHDR 0x%x)"
                              % (exe, auxv[AT_ENTRY], auxv[AT_PHDR]))
        out = object_mappings(elf, bias, exe_name, page)
        core_read = read

        def read(addr, n):            # the core, else the executable's own file (.interp, ld.so's l_name)
            try:
                return core_read(addr, n)
            except MemoryReadError:
                got = elf.read_loaded(addr - bias, n)
                if got is None:
                    raise
                return got

        dyn = elf.dynamic()
        r_debug = 0
        if dyn is not None:
            try:
                raw = bytes(read(bias + dyn[2], min(dyn[4], MAX_DYNAMIC * 2 * ps)))
            except MemoryReadError:
                raw = b""
                warnings.append("the executable's dynamic section (0x%x) is not in the core: its shared libraries "
                                "are not named" % (bias + dyn[2]))
            for i in range(0, len(raw) - 2 * ps + 1, 2 * ps):
                tag, val = struct.unpack_from(e + ("qQ" if ps == 8 else "iI"), raw, i)
                if tag == DT_NULL:
                    break
                if tag == DT_DEBUG:
                    r_debug = val
        if dyn is None or not r_debug:
            if dyn is not None and raw:
                warnings.append("the executable's DT_DEBUG is 0 (the dynamic linker never ran?): its shared "
                                "libraries are not named")
            return out, warnings
        lm = word(r_debug + ps)          # r_debug {int r_version; struct link_map *r_map; ...}
        seen = set()
        missing = []
        while lm and lm not in seen and len(seen) < MAX_OBJECTS:
            seen.add(lm)
            l_addr, l_name, l_ld, l_next = struct.unpack(e + (w[1] * 4), bytes(read(lm, 4 * ps)))
            lm = l_next
            name = _cstring(read, l_name) if l_name else b""
            if not name.startswith(b"/"):
                continue             # the executable (""), the vDSO ("linux-vdso.so.1")
            path = name.decode("utf-8", "surrogateescape")
            local = locate(path)
            if local is None:
                missing.append(path)
                continue
            try:
                lib = _ElfFile(local)
            except (TargetError, MemoryReadError, struct.error, OSError):
                missing.append(path)
                continue
            if lib.cls != ps:
                lib.close()
                missing.append(path)
                continue
            try:
                d = lib.dynamic()
                if d is not None and (l_addr + d[2]) % (1 << (8 * ps)) != l_ld:
                    warnings.append("%s (for %s) is not the library the core loaded: its dynamic section is not "
                                    "where the core's link_map puts it; wrong --sysroot?" % (local, path))
                    continue
                out += object_mappings(lib, l_addr, path, page)
            finally:
                lib.close()
        if missing:
            warnings.append("%d of the core's shared libraries not found on this machine (%s%s): pass --sysroot "
                            "DIR where they are" % (len(missing), ", ".join(missing[:3]),
                                                    " …" if len(missing) > 3 else ""))
    except MemoryReadError as err:
        warnings.append("the dynamic linker's list of loaded objects is unreadable in the core (%s): shared "
                        "libraries are not named" % err)
    finally:
        elf.close()
    out.sort()
    kept = []
    for m in out:                     # two objects never overlap; of a corrupt pair keep the first
        if kept and m[0] < kept[-1][1]:
            continue
        kept.append(m)
    return kept, warnings


def _cstring(read, addr: int, limit: int = 4096) -> bytes:
    out = b""
    while len(out) < limit:
        a = addr + len(out)
        try:
            chunk = bytes(read(a, min(256, 4096 - a % 4096)))    # never across a page: it may be absent
        except MemoryReadError:
            return out
        z = chunk.find(b"\0")
        if z >= 0:
            return out + chunk[:z]
        out += chunk
    return out
