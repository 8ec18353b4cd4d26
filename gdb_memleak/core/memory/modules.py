"""Loaded modules (executable + shared libraries) found from the mappings and the ELF headers
in the target's own memory: load bias and build-id without gdb or debug info.  Also the checks
every file we are given goes through before we read it (``open_regular``, ``elf_ident``)."""
from __future__ import annotations

import errno
import mmap
import os
import stat
import struct
from typing import Dict, List, Optional, Tuple

from ..errors import MemoryReadError, TargetError
from .target import AT_PHDR, Module, Target

PT_LOAD, PT_NOTE = 1, 4
NT_GNU_BUILD_ID = 3
ET_REL, ET_EXEC, ET_DYN, ET_CORE = 1, 2, 3, 4
ET_NAMES = {0: "an ELF file of no type (ET_NONE)", ET_REL: "a relocatable object (ET_REL)",
            ET_EXEC: "an executable (ET_EXEC)", ET_DYN: "a shared object or PIE executable (ET_DYN)",
            ET_CORE: "a core file (ET_CORE)"}
EM_NAMES = {3: "i386", 62: "x86-64", 183: "aarch64", 40: "arm", 8: "mips", 20: "ppc", 21: "ppc64",
            22: "s390", 243: "riscv", 2: "sparc", 43: "sparcv9", 258: "loongarch"}
ELF_MAGIC = b"\x7fELF"


def machine_name(e_machine: int) -> str:
    return EM_NAMES.get(e_machine, "e_machine %d" % e_machine)


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _why(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "too many levels of symbolic links (a symlink loop?)"
    if e.errno == errno.ENOTDIR:
        return "a component of the path is not a directory"
    return e.strerror or str(e)


def open_regular(path: str, what: str):
    """(binary file object, size) of the regular file ``path``.  Never blocks: a FIFO, a device,
    a directory or a socket is refused from its stat before anything reads it, and the open
    itself is non-blocking (a FIFO swapped in meanwhile is caught by fstat).  TargetError names
    the problem, e.g. "core file /x is a FIFO (named pipe), not a regular file"."""
    try:
        st = os.stat(path)
    except (OSError, ValueError) as e:
        raise TargetError("cannot open %s %s: %s" % (what, path, _why(e) if isinstance(e, OSError) else e))
    if not stat.S_ISREG(st.st_mode):
        raise TargetError("%s %s is %s, not a regular file" % (what, path, _file_kind(st.st_mode)))
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise TargetError("cannot open %s %s: %s" % (what, path, _why(e)))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TargetError("%s %s is %s, not a regular file" % (what, path, _file_kind(st.st_mode)))
        return os.fdopen(fd, "rb", buffering=0), st.st_size
    except BaseException:
        os.close(fd)
        raise


def is_regular_file(path: Optional[str]) -> bool:
    """True for an existing regular file (symlinks followed): the only kind we ever open."""
    try:
        return bool(path) and stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def elf_ident(head: bytes, size: int, what: str) -> Tuple[int, str, int, int]:
    """(pointer size, struct endian, e_type, e_machine) from a file's first bytes ``head``
    (``size``: the file's size); TargetError saying what is wrong, prefixed by ``what``."""
    if size == 0:
        raise TargetError("%s is empty (0 bytes)" % what)
    if head[:4] != ELF_MAGIC[:len(head[:4])]:
        raise TargetError("%s is not an ELF file (it starts with %r)" % (what, bytes(head[:4])))
    if size < 6:
        raise TargetError("%s is truncated: %d bytes, an ELF header needs 52 (32-bit) or 64 (64-bit)" % (what, size))
    if head[4] not in (1, 2):
        raise TargetError("%s has an invalid ELF class %d (byte 4: 1 is 32-bit, 2 is 64-bit): corrupt ELF header"
                          % (what, head[4]))
    if head[5] not in (1, 2):
        raise TargetError("%s has an invalid ELF data encoding %d (byte 5: 1 little-, 2 big-endian): corrupt "
                          "ELF header" % (what, head[5]))
    cls = 8 if head[4] == 2 else 4
    need = 64 if cls == 8 else 52
    if size < need:
        raise TargetError("%s is truncated: %d bytes, its %d-bit ELF header needs %d" % (what, size, 8 * cls, need))
    e = "<" if head[5] == 1 else ">"
    e_type, e_machine = struct.unpack_from(e + "HH", head, 16)
    return cls, e, e_type, e_machine


def _parse_notes_for_build_id(data: bytes, e: str) -> Optional[str]:
    pos = 0
    while pos + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from(e + "III", data, pos)
        pos += 12
        name = data[pos:pos + namesz]
        pos += (namesz + 3) & ~3
        desc = data[pos:pos + descsz]
        pos += (descsz + 3) & ~3
        if pos > len(data) + 3 or len(name) < namesz or len(desc) < descsz:
            return None    # runs past the note data: corrupt
        if ntype == NT_GNU_BUILD_ID and name.rstrip(b"\0") == b"GNU":
            # a build-id is a hash: 8 to 64 bytes (sha1: 20, md5/uuid: 16)
            return bytes(desc).hex() if 8 <= descsz <= 64 else None
    return None


def parse_elf_header(read, base: int, max_phdrs: int = 256, machine: bool = False):
    """(elfclass, endian, e_type, phdrs[(type, offset, vaddr, filesz, memsz, flags)]) from
    ``read(addr, n)``; with ``machine`` e_machine is appended.  None when it is not ELF.  A
    header whose program-header table is implausible (entry size, count) yields no phdrs;
    ``read`` raising (MemoryReadError, struct.error) is the caller's to catch."""
    ident = bytes(read(base, 52))
    if ident[:4] != ELF_MAGIC or ident[4] not in (1, 2) or ident[5] not in (1, 2):
        return None
    cls = 8 if ident[4] == 2 else 4
    if cls == 8:
        ident = bytes(read(base, 64))
    e = "<" if ident[5] == 1 else ">"
    e_type, e_machine = struct.unpack_from(e + "HH", ident, 16)
    if cls == 8:
        e_phoff, = struct.unpack_from(e + "Q", ident, 32)
        e_shoff, = struct.unpack_from(e + "Q", ident, 40)
        e_phentsize, e_phnum = struct.unpack_from(e + "HH", ident, 54)
    else:
        e_phoff, e_shoff = struct.unpack_from(e + "II", ident, 28)
        e_phentsize, e_phnum = struct.unpack_from(e + "HH", ident, 42)
    if e_phnum == 0xFFFF and e_shoff:     # PN_XNUM: the real count is section 0's sh_info
        sh0 = bytes(read(base + e_shoff, 64 if cls == 8 else 40))
        e_phnum, = struct.unpack_from(e + "I", sh0, 44 if cls == 8 else 28)
    tail = (e_machine,) if machine else ()
    min_ent = 56 if cls == 8 else 32
    if e_phnum == 0 or e_phnum > max_phdrs or not min_ent <= e_phentsize <= 4 * min_ent:
        return (cls, e, e_type, []) + tail
    raw = bytes(read(base + e_phoff, e_phentsize * e_phnum))
    if len(raw) < e_phentsize * e_phnum:
        raise struct.error("program headers cut short")
    phdrs = []
    for i in range(e_phnum):
        o = i * e_phentsize
        if cls == 8:
            p_type, p_flags, p_offset, p_vaddr, _paddr, p_filesz, p_memsz = struct.unpack_from(e + "IIQQQQQ", raw, o)
        else:
            p_type, p_offset, p_vaddr, _paddr, p_filesz, p_memsz, p_flags = struct.unpack_from(e + "IIIIIII", raw, o)
        phdrs.append((p_type, p_offset, p_vaddr, p_filesz, p_memsz, p_flags))
    return (cls, e, e_type, phdrs) + tail


def file_build_id(path: str) -> Optional[str]:
    """Build-id of an ELF file on disk (None when it has none, is not ELF or not a regular file:
    a FIFO or a device is never opened for reading)."""
    try:
        fh, size = open_regular(path, "file")
    except TargetError:
        return None
    try:
        if size == 0:
            return None
        try:
            data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError, OverflowError):
            return None
    finally:
        fh.close()
    try:
        def read(addr, n):
            if addr < 0 or n < 0 or addr + n > len(data):
                raise MemoryReadError(max(addr, 0), max(n, 0), "past the end of %s" % path)
            return data[addr:addr + n]
        try:
            hdr = parse_elf_header(read, 0)
        except (MemoryReadError, struct.error):
            return None
        if not hdr:
            return None
        _cls, e, _t, phdrs = hdr
        for p_type, p_offset, _v, p_filesz, _m, _f in phdrs:
            if p_type == PT_NOTE and p_offset + p_filesz <= len(data):
                bid = _parse_notes_for_build_id(data[p_offset:p_offset + p_filesz], e)
                if bid:
                    return bid
        return None
    finally:
        data.close()


def find_modules(target: Target) -> List[Module]:
    by_path: Dict[str, List] = {}
    for r in target.regions():
        if r.path and r.path.startswith("/") and not r.path.startswith(("/SYSV", "/dev/")):
            by_path.setdefault(r.path, []).append(r)
    phdr_addr = target.auxv().get(AT_PHDR)
    exe = getattr(target, "executable", None)
    out: List[Module] = []
    for path, regs in by_path.items():
        start = min(r.start for r in regs)
        end = max(r.end for r in regs)
        base_regs = [r for r in regs if r.offset == 0] or regs
        base = min(r.start for r in base_regs)
        bias, build_id = base, None
        try:
            hdr = parse_elf_header(target.read, base)
        except (MemoryReadError, struct.error):
            hdr = None
        if hdr is None:
            continue  # a mapped data file, not a module
        _cls, e, e_type, phdrs = hdr
        loads = [p for p in phdrs if p[0] == PT_LOAD]
        if loads:
            first_vaddr = min(p[2] for p in loads) & ~0xFFF
            bias = base - first_vaddr
        segments = [(bias + p[2], bias + p[2] + p[4], p[5]) for p in loads]
        for p_type, _off, vaddr, filesz, _memsz, _flags in phdrs:
            if p_type == PT_NOTE and filesz < 65536:
                try:
                    build_id = _parse_notes_for_build_id(bytes(target.read(bias + vaddr, filesz)), e)
                except MemoryReadError:
                    build_id = None
                if build_id:
                    break
        if build_id is None and hasattr(target, "local_path"):
            local = target.local_path(path)
            build_id = file_build_id(local) if local else None
        elif build_id is None:
            build_id = file_build_id(path)
        is_main = (phdr_addr is not None and start <= phdr_addr < end) or (
            phdr_addr is None and exe is not None and path == exe)
        out.append(Module(path, start, end, bias, build_id, is_main, segments))
    out.sort(key=lambda m: m.start)
    if out and not any(m.is_main for m in out):
        # no auxv: the lowest ET_EXEC/ET_DYN that is not a shared library by name
        for m in out:
            if ".so" not in m.name:
                m.is_main = True
                break
    return out


def module_at(target: Target, addr: int) -> Optional[Module]:
    for m in target.modules():
        if m.start <= addr < m.end:
            return m
    return None


def symbolize(target: Target, addr: int) -> Optional[dict]:
    """{module, module_offset, symbol, symbol_offset, symbol_size} for an address inside a
    loaded module (symbol None when the module has no symbol there: stripped); None elsewhere."""
    from .symbols import nearest_symbol
    mod = module_at(target, addr)
    if mod is None:
        return None
    local = target.local_path(mod.path) if hasattr(target, "local_path") else mod.path
    sym = nearest_symbol(local, addr - mod.load_bias) if local else None
    if sym is None:
        got = target.symbol_at(addr)     # gdb knows more (debug info, separate debug files)
        if got:
            sym = (got[0], got[1], None)
    return {"module": mod.name, "path": mod.path, "module_offset": addr - mod.start,
            "symbol": sym[0] if sym else None, "symbol_offset": sym[1] if sym else None,
            "symbol_size": sym[2] if sym else None}


def format_symbol(info: Optional[dict]) -> Optional[str]:
    if info is None:
        return None
    if info["symbol"]:
        return "%s+%d in %s" % (info["symbol"], info["symbol_offset"], info["module"]) if info["symbol_offset"] \
            else "%s in %s" % (info["symbol"], info["module"])
    return "%s+0x%x" % (info["module"], info["module_offset"])
