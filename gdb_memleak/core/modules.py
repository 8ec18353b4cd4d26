"""Loaded modules (executable + shared libraries) found from the mappings and the ELF headers
in the target's own memory: load bias and build-id without gdb or debug info."""
from __future__ import annotations

import mmap
import struct
from typing import Dict, List, Optional

from .errors import MemoryReadError
from .target import AT_PHDR, Module, Target

PT_LOAD, PT_NOTE = 1, 4
NT_GNU_BUILD_ID = 3


def _parse_notes_for_build_id(data: bytes, e: str) -> Optional[str]:
    pos = 0
    while pos + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from(e + "III", data, pos)
        pos += 12
        name = data[pos:pos + namesz]
        pos += (namesz + 3) & ~3
        desc = data[pos:pos + descsz]
        pos += (descsz + 3) & ~3
        if ntype == NT_GNU_BUILD_ID and name.rstrip(b"\0") == b"GNU":
            return desc.hex()
    return None


def parse_elf_header(read, base: int, max_phdrs: int = 256, machine: bool = False):
    """(elfclass, endian, e_type, phdrs[(type, offset, vaddr, filesz, memsz, flags)]) from
    ``read(addr, n)``; with ``machine`` e_machine is appended.  None when it is not ELF."""
    ident = bytes(read(base, 64))
    if ident[:4] != b"\x7fELF" or ident[4] not in (1, 2) or ident[5] not in (1, 2):
        return None
    cls = 8 if ident[4] == 2 else 4
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
    if e_phnum == 0 or e_phnum > max_phdrs or e_phentsize < (56 if cls == 8 else 32):
        return (cls, e, e_type, []) + tail
    raw = bytes(read(base + e_phoff, e_phentsize * e_phnum))
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
    """Build-id of an ELF file on disk (None when it has none or is not ELF)."""
    try:
        with open(path, "rb") as fh:
            data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None

    def read(addr, n):
        if addr + n > len(data):
            raise MemoryReadError(addr, n)
        return data[addr:addr + n]
    try:
        hdr = parse_elf_header(read, 0)
    except (MemoryReadError, struct.error):
        return None
    if not hdr:
        return None
    _cls, e, _t, phdrs = hdr
    for p_type, p_offset, _v, p_filesz, _m, _f in phdrs:
        if p_type == PT_NOTE:
            bid = _parse_notes_for_build_id(data[p_offset:p_offset + p_filesz], e)
            if bid:
                return bid
    return None


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
