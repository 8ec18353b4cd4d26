"""ELF symbol tables read as numpy structured arrays (milliseconds per file, where pyelftools'
iter_symbols manages ~25k symbols/s), and C++ demangling through libstdc++'s __cxa_demangle."""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import struct
from typing import Dict, List, Optional, Tuple

import numpy as np


_SYM64 = [("st_name", "u4"), ("st_info", "u1"), ("st_other", "u1"), ("st_shndx", "u2"),
          ("st_value", "u8"), ("st_size", "u8")]
_SYM32 = [("st_name", "u4"), ("st_value", "u4"), ("st_size", "u4"), ("st_info", "u1"),
          ("st_other", "u1"), ("st_shndx", "u2")]

_CACHE: Dict[Tuple[str, Tuple[bytes, ...]], List[Tuple[str, int, int]]] = {}


SHT_SYMTAB, SHT_DYNSYM = 2, 11


def _section_headers(mm):
    """(is64, endian, [(sh_name, sh_type, sh_offset, sh_size, sh_link)], e_shstrndx) straight from
    the section header table (pyelftools parses every header through construct: far slower)."""
    if len(mm) < 64 or mm[:4] != b"\x7fELF":
        return None
    is64 = mm[4] == 2
    e = "<" if mm[5] == 1 else ">"
    if is64:
        shoff, = struct.unpack_from(e + "Q", mm, 40)
        shentsize, shnum, shstrndx = struct.unpack_from(e + "HHH", mm, 58)
        shfmt = e + "IIQQQQIIQQ"
    else:
        shoff, = struct.unpack_from(e + "I", mm, 32)
        shentsize, shnum, shstrndx = struct.unpack_from(e + "HHH", mm, 46)
        shfmt = e + "IIIIIIIIII"
    if not shoff or shoff + shentsize * shnum > len(mm):
        return None
    hdrs = []
    for i in range(shnum):
        f = struct.unpack_from(shfmt, mm, shoff + i * shentsize)
        # name, type, flags, addr, offset, size, link, info, addralign, entsize
        hdrs.append((f[0], f[1], f[4], f[5], f[6]))
    return is64, e, hdrs, shstrndx


def _symbol_tables(mm):
    """(sym offset, count, strtab offset, strtab size, dtype) of .symtab and .dynsym."""
    sh = _section_headers(mm)
    if sh is None:
        return []
    is64, e, hdrs, _ = sh
    dt = np.dtype([(n, e + t) for n, t in (_SYM64 if is64 else _SYM32)])
    out = []
    for typ in (SHT_SYMTAB, SHT_DYNSYM):
        for _n, sh_type, off, size, link in hdrs:
            if sh_type != typ or link >= len(hdrs):
                continue
            _n2, _t, soff, ssize, _l = hdrs[link]
            count = size // dt.itemsize
            if count and off + count * dt.itemsize <= len(mm) and soff + ssize <= len(mm):
                out.append((off, count, soff, ssize, dt))
    return out


_DEBUG_INFO: Dict[str, bool] = {}


def has_debug_info(path: str) -> bool:
    """Whether the ELF file at ``path`` carries a .debug_info section (DWARF)."""
    if path not in _DEBUG_INFO:
        found = False
        try:
            with open(path, "rb") as fh:
                mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
                try:
                    sh = _section_headers(mm)
                    if sh is not None and sh[3] < len(sh[2]):
                        _n, _t, stroff, strsize, _l = sh[2][sh[3]]
                        names = mm[stroff:stroff + strsize]
                        found = any(names[n:names.find(b"\0", n)] in (b".debug_info", b".zdebug_info")
                                    for n, *_ in sh[2])
                finally:
                    mm.close()
        except (OSError, ValueError, struct.error):
            found = False
        _DEBUG_INFO[path] = found
    return _DEBUG_INFO[path]


def symbols_with_prefix(path: str, prefixes=(b"_ZTV", b"_ZTI")) -> List[Tuple[str, int, int]]:
    """(name, st_value, st_size) of the defined symbols of ``path`` whose names start with one of
    ``prefixes`` (.symtab and .dynsym, deduplicated).  Empty when the file is not ELF."""
    key = (path, tuple(prefixes))
    if key in _CACHE:
        return _CACHE[key]
    out: Dict[Tuple[str, int], int] = {}
    try:
        fh = open(path, "rb")
    except OSError:
        _CACHE[key] = []
        return []
    with fh:
        try:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:
            _CACHE[key] = []
            return []
        try:
            for sym_off, count, str_off, str_size, dt in _symbol_tables(mm):
                syms = np.frombuffer(mm, dtype=dt, count=count, offset=sym_off)
                strs = np.frombuffer(mm, dtype=np.uint8, count=str_size, offset=str_off)
                names = syms["st_name"].astype(np.int64)
                ok = (syms["st_shndx"] != 0) & (syms["st_value"] != 0) & (names + 5 < len(strs))
                sel = np.nonzero(ok)[0]
                n = names[sel]
                hit = np.zeros(len(sel), dtype=bool)
                for pfx in prefixes:
                    m = np.ones(len(sel), dtype=bool)
                    for i, ch in enumerate(pfx):
                        m &= strs[n + i] == ch
                    hit |= m
                raw = bytes(strs.data) if hit.any() else b""
                for j in sel[hit]:
                    start = int(names[j])
                    name = raw[start:raw.index(b"\0", start)].decode("ascii", "replace")
                    out[(name, int(syms["st_value"][j]))] = int(syms["st_size"][j])
                del syms, strs
        except (ValueError, KeyError, struct.error):
            pass
        finally:
            try:
                mm.close()
            except BufferError:
                pass
    res = [(n, v, s) for (n, v), s in out.items()]
    _CACHE[key] = res
    return res


_TABLES: Dict[str, Optional[tuple]] = {}
STT_OBJECT, STT_FUNC, STT_TLS = 1, 2, 6


def _address_table(path: str):
    """(values, sizes, name offsets, raw strtab) of the function/object symbols of ``path``,
    sorted by value; None when the file has none (cached)."""
    if path in _TABLES:
        return _TABLES[path]
    res = None
    try:
        with open(path, "rb") as fh:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        _TABLES[path] = None
        return None
    try:
        parts = []
        for sym_off, count, str_off, str_size, dt in _symbol_tables(mm):
            syms = np.frombuffer(mm, dtype=dt, count=count, offset=sym_off)
            typ = syms["st_info"] & 0xF
            ok = ((typ == STT_FUNC) | (typ == STT_OBJECT)) & (syms["st_shndx"] != 0) & (syms["st_value"] != 0)
            sel = syms[ok]
            raw = bytes(mm[str_off:str_off + str_size])
            parts.append((sel["st_value"].astype(np.uint64), sel["st_size"].astype(np.uint64),
                          sel["st_name"].astype(np.int64), raw))
            del syms
        if parts:
            # one string table per part: keep the part index with each entry
            vals = np.concatenate([p[0] for p in parts])
            sizes = np.concatenate([p[1] for p in parts])
            names = np.concatenate([p[2] for p in parts])
            which = np.concatenate([np.full(len(p[0]), i, dtype=np.int64) for i, p in enumerate(parts)])
            order = np.argsort(vals, kind="stable")
            res = (vals[order], sizes[order], names[order], which[order], [p[3] for p in parts])
    except (ValueError, struct.error):
        res = None
    finally:
        try:
            mm.close()
        except BufferError:
            pass
    _TABLES[path] = res
    return res


def nearest_symbol(path: str, vaddr: int) -> Optional[Tuple[str, int, int]]:
    """(name, offset, size) of the function/object symbol of ``path`` holding file address
    ``vaddr`` (the closest one below it when sizes are 0); None when there is none."""
    tab = _address_table(path)
    if tab is None or not len(tab[0]):
        return None
    vals, sizes, names, which, strtabs = tab
    i = int(np.searchsorted(vals, np.uint64(vaddr), side="right")) - 1
    if i < 0:
        return None
    # prefer a sized symbol that holds the address among those starting at the same value
    j = i
    while j >= 0 and vals[j] == vals[i]:
        if int(sizes[j]) and vaddr < int(vals[j]) + int(sizes[j]):
            i = j
            break
        j -= 1
    start, size = int(vals[i]), int(sizes[i])
    if size and vaddr >= start + size:
        return None
    if not size and vaddr - start > 4096:
        return None
    raw = strtabs[int(which[i])]
    off = int(names[i])
    end = raw.find(b"\0", off)
    name = raw[off:end if end >= 0 else len(raw)].decode("utf-8", "replace")
    return demangle(name), vaddr - start, size


_demangler = None


def _load_demangler():
    global _demangler
    if _demangler is None:
        _demangler = False
        for name in ("libstdc++.so.6", ctypes.util.find_library("stdc++")):
            if not name:
                continue
            try:
                lib = ctypes.CDLL(name)
                libc = ctypes.CDLL(None)
                f = lib.__cxa_demangle
                f.restype = ctypes.c_void_p
                f.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
                libc.free.argtypes = [ctypes.c_void_p]
                _demangler = (f, libc.free)
                break
            except (OSError, AttributeError):
                continue
    return _demangler


_DEMANGLED: Dict[str, str] = {}


def demangle(symbol: str) -> str:
    """A symbol name demangled ('_ZN3net4Conn4sendEv' -> 'net::Conn::send()'); others as given."""
    return demangle_type(symbol) if symbol.startswith("_Z") else symbol


def demangle_type(mangled: str) -> str:
    """'N3net10ConnectionE' -> 'net::Connection' (a type's mangled name, no _Z/_ZTS prefix)."""
    if mangled in _DEMANGLED:
        return _DEMANGLED[mangled]
    d = _load_demangler()
    res = mangled
    if d:
        f, free = d
        status = ctypes.c_int(0)
        p = f(mangled.encode(), None, None, ctypes.byref(status))
        if p and status.value == 0:
            res = ctypes.string_at(p).decode("utf-8", "replace")
        if p:
            free(p)
    _DEMANGLED[mangled] = res
    return res
