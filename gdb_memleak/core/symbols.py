"""ELF symbol tables read as numpy structured arrays (milliseconds per file, where pyelftools'
iter_symbols manages ~25k symbols/s), and C++ demangling through libstdc++'s __cxa_demangle."""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
from typing import Dict, List, Optional, Tuple

import numpy as np

from .elfcore import ELFError, ELFFile, _require_elftools

_SYM64 = [("st_name", "u4"), ("st_info", "u1"), ("st_other", "u1"), ("st_shndx", "u2"),
          ("st_value", "u8"), ("st_size", "u8")]
_SYM32 = [("st_name", "u4"), ("st_value", "u4"), ("st_size", "u4"), ("st_info", "u1"),
          ("st_other", "u1"), ("st_shndx", "u2")]

_CACHE: Dict[Tuple[str, Tuple[bytes, ...]], List[Tuple[str, int, int]]] = {}


def symbols_with_prefix(path: str, prefixes=(b"_ZTV", b"_ZTI")) -> List[Tuple[str, int, int]]:
    """(name, st_value, st_size) of the defined symbols of ``path`` whose names start with one of
    ``prefixes`` (.symtab and .dynsym, deduplicated).  Empty when the file is not ELF."""
    key = (path, tuple(prefixes))
    if key in _CACHE:
        return _CACHE[key]
    _require_elftools()
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
            elf = ELFFile(fh)
            e = "<" if elf.little_endian else ">"
            dt = np.dtype([(n, e + t) for n, t in (_SYM64 if elf.elfclass == 64 else _SYM32)])
            for secname in (".symtab", ".dynsym"):
                sec = elf.get_section_by_name(secname)
                if sec is None or sec["sh_type"] == "SHT_NOBITS":
                    continue
                strsec = elf.get_section(sec["sh_link"])
                count = sec["sh_size"] // dt.itemsize
                if count == 0 or sec["sh_offset"] + count * dt.itemsize > len(mm):
                    continue
                syms = np.frombuffer(mm, dtype=dt, count=count, offset=sec["sh_offset"])
                strs = np.frombuffer(mm, dtype=np.uint8, count=strsec["sh_size"], offset=strsec["sh_offset"])
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
        except (ELFError, ValueError, KeyError):
            pass
        finally:
            try:
                mm.close()
            except BufferError:
                pass
    res = [(n, v, s) for (n, v), s in out.items()]
    _CACHE[key] = res
    return res


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
