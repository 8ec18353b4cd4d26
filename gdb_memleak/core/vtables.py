"""Every vtable address point of every loaded module, with its class.

From symbols: each ``_ZTV`` group is read from target memory (relocated) and every address point
inside it is found — the primary one and the secondary ones of multiple/virtual inheritance —
as a slot preceded by the class's typeinfo pointer and a plausible offset-to-top.
From RTTI (stripped modules): type_info objects are found in the modules' data by their vptr
(one of libstdc++'s __class_type_info/__si_class_type_info/__vmi_class_type_info vtables),
then vtables as slots that point to one of those type_infos, named from the type_info's name.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from .errors import MemoryReadError
from .memory.symbols import demangle_type, symbols_with_prefix
from .memory.target import Target

TI_VTABLES = ("_ZTVN10__cxxabiv117__class_type_infoE", "_ZTVN10__cxxabiv120__si_class_type_infoE",
              "_ZTVN10__cxxabiv121__vmi_class_type_infoE")
_MANGLED_RE = re.compile(rb"^[A-Za-z0-9_$.]{1,4096}$")
MAX_OFFSET_TO_TOP = 1 << 24
PF_X = 1


@dataclass
class VClass:
    mangled: str
    module: str
    source: str                 # "symbol" | "rtti"
    vtable: int                 # address of the vtable group
    typeinfo: Optional[int] = None

    @property
    def name(self) -> str:
        """Demangled on first use: most classes of a program never show up in a result."""
        return demangle_type(self.mangled)


@dataclass
class VtableIndex:
    classes: List[VClass]
    points: np.ndarray          # sorted address points (uint64)
    point_class: np.ndarray     # index into classes
    point_primary: np.ndarray   # bool: offset-to-top == 0
    point_offset: np.ndarray    # byte offset of the point inside its vtable group
    windows: List[Tuple[int, int]] = field(default_factory=list)  # [lo, hi] clusters for prefiltering
    warnings: List[str] = field(default_factory=list)

    def lookup(self, value: int) -> Optional[int]:
        """Index of the address point equal to ``value`` (None when it is not one)."""
        i = int(np.searchsorted(self.points, value))
        if i < len(self.points) and int(self.points[i]) == value:
            return i
        return None


    def primary_class_of(self, values: np.ndarray) -> np.ndarray:
        """Class index for each value that is a primary address point (a most-derived object's
        vptr), -1 for the others."""
        values = np.asarray(values, dtype=np.uint64)
        out = np.full(len(values), -1, dtype=np.int64)
        if not len(self.points) or not len(values):
            return out
        i = np.searchsorted(self.points, values)
        i[i >= len(self.points)] = len(self.points) - 1
        ok = (self.points[i] == values) & self.point_primary[i]
        out[ok] = self.point_class[i[ok]]
        return out


def _words(target: Target, addr: int, count: int) -> Optional[np.ndarray]:
    dt = np.dtype(("<" if target.byteorder == "little" else ">") + ("u8" if target.pointer_size == 8 else "u4"))
    try:
        return np.frombuffer(bytes(target.read(addr, count * target.pointer_size)), dtype=dt)
    except MemoryReadError:
        return None


def _members(words: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Indices of the words equal to one of the sorted ``values`` (a range test first, then
    searchsorted on the few that pass: np.isin sorts every word)."""
    if not len(values) or not len(words):
        return np.zeros(0, dtype=np.int64)
    lo, hi = values[0], values[-1]
    idx = np.flatnonzero((words - words.dtype.type(lo)) <= words.dtype.type(hi - lo))
    if not len(idx):
        return idx
    cand = words[idx].astype(np.uint64)
    j = np.searchsorted(values, cand)
    j[j >= len(values)] = len(values) - 1
    return idx[values[j] == cand]


def _signed(v: int, ps: int) -> int:
    bits = 8 * ps
    return v - (1 << bits) if v >> (bits - 1) else v


def _plausible_offset(v: int, ps: int) -> bool:
    s = _signed(v, ps)
    return -MAX_OFFSET_TO_TOP < s <= 0 and s % ps == 0


class _Builder:
    def __init__(self, target: Target):
        self.t = target
        self.ps = target.pointer_size
        self.points: Dict[int, Tuple[int, bool, int]] = {}
        self.classes: List[VClass] = []
        self.class_by_key: Dict[Tuple[str, int], int] = {}
        self.warnings: List[str] = []
        self.ti_vtables: set = set()
        self.zti: Dict[str, int] = {}
        self.ti_names: Dict[int, Optional[str]] = {}

    def typeinfo_name(self, ti: int) -> Optional[str]:
        """The mangled type name of a type_info object at ``ti`` (None when it is not one)."""
        if ti in self.ti_names:
            return self.ti_names[ti]
        name = None
        try:
            vptr, nptr = self.t.read_words(ti, 2)
            if vptr in self.ti_vtables:
                raw = self.t.read_cstring(nptr, 4096)
                if raw:
                    raw = raw.lstrip(b"*")   # GCC marks internal-linkage names with '*'
                    if _MANGLED_RE.match(raw):
                        name = raw.decode("ascii")
        except MemoryReadError:
            name = None
        self.ti_names[ti] = name
        return name

    def add_class(self, mangled, module, source, vtable, ti) -> int:
        key = (mangled, vtable)
        if key not in self.class_by_key:
            self.class_by_key[key] = len(self.classes)
            self.classes.append(VClass(mangled, module, source, vtable, ti))
        return self.class_by_key[key]

    def add_group(self, cls: int, start: int, words: np.ndarray, ti: Optional[int]):
        ps = self.ps
        n = len(words)
        found = False
        if ti:
            for i in range(2, n + 1):
                if int(words[i - 1]) == ti and _plausible_offset(int(words[i - 2]), ps):
                    off = _signed(int(words[i - 2]), ps)
                    self.points.setdefault(start + i * ps, (cls, off == 0, i * ps))
                    found = True
        if not found:   # no RTTI (-fno-rtti) or unreadable: the primary point of a plain layout
            self.points.setdefault(start + 2 * ps, (cls, True, 2 * ps))

    def from_symbols(self, modules):
        ps = self.ps
        sym_modules = set()
        per_module = []
        for m in modules:
            local = self.t.local_path(m.path) if hasattr(self.t, "local_path") else m.path
            syms = symbols_with_prefix(local) if local else []
            if local is None:
                self.warnings.append("%s is not available here: its classes are named from RTTI only" % m.path)
            per_module.append((m, syms))
            for name, value, _size in syms:
                if name.startswith("_ZTI"):
                    self.zti.setdefault(name[4:], value + m.load_bias)
                elif name in TI_VTABLES:
                    self.ti_vtables.add(value + m.load_bias + 2 * ps)
        for m, syms in per_module:
            for name, value, size in syms:
                if not name.startswith("_ZTV") or size < 2 * ps:
                    continue
                start = value + m.load_bias
                words = _words(self.t, start, min(size // ps, 4096))
                ti = self.zti.get(name[4:])
                if ti is None and words is not None:
                    for k in range(0, len(words) - 1):
                        if int(words[k]) == 0 and self.typeinfo_name(int(words[k + 1])):
                            ti = int(words[k + 1])
                            break
                cls = self.add_class(name[4:], m.name, "symbol", start, ti)
                if words is None:
                    self.points.setdefault(start + 2 * ps, (cls, True, 2 * ps))
                    continue
                self.add_group(cls, start, words, ti)
                sym_modules.add(m.path)
        return sym_modules

    def from_rtti(self, modules):
        """Discover type_infos and vtables in the modules' non-executable segments."""
        if not self.ti_vtables:
            self.warnings.append("libstdc++'s type_info vtables were not found: no RTTI names for stripped code")
            return
        ps = self.ps
        tiv = np.array(sorted(self.ti_vtables), dtype=np.uint64)
        windows = []
        for m in modules:
            segs = [(a, b) for a, b, f in m.segments if not f & PF_X] if m.segments else []
            for a, b in segs:
                a -= a % ps
                words = _words(self.t, a, (b - a) // ps)
                if words is None:
                    words = self._readable_words(a, b)
                if words is not None:
                    windows.append((m, a, words))
        tis: Dict[int, str] = {}
        for m, a, words in windows:
            for i in _members(words, tiv):
                ti = a + int(i) * ps
                name = self.typeinfo_name(ti)
                if name:
                    tis[ti] = name
        if not tis:
            return
        tia = np.array(sorted(tis), dtype=np.uint64)
        for m, a, words in windows:
            for i in _members(words, tia):
                i = int(i)
                if i < 1 or not _plausible_offset(int(words[i - 1]), ps):
                    continue
                point = a + (i + 1) * ps
                if point in self.points:
                    continue
                ti = int(words[i])
                off = _signed(int(words[i - 1]), ps)
                cls = self.add_class(tis[ti], m.name, "rtti", ti, ti)
                # no symbol: the group start is unknown; record the offset-to-top instead
                self.points[point] = (cls, off == 0, -off)

    def _readable_words(self, a, b):
        """Words of [a, b) where only parts are readable: unreadable pages read as zeros."""
        ps = self.ps
        out = np.zeros((b - a) // ps, dtype=np.uint64)
        page = 4096
        x = a
        any_ok = False
        while x < b:
            n = min(page - x % page, b - x)
            w = _words(self.t, x, n // ps)
            if w is not None:
                out[(x - a) // ps:(x - a) // ps + len(w)] = w
                any_ok = True
            x += n
        return out if any_ok else None

    def build(self) -> VtableIndex:
        mods = self.t.modules()
        self.from_symbols(mods)
        self.from_rtti(mods)
        items = sorted(self.points.items())
        pts = np.array([p for p, _ in items], dtype=np.uint64)
        windows: List[Tuple[int, int]] = []
        for p, _ in items:
            if windows and p - windows[-1][1] <= (1 << 20):
                windows[-1] = (windows[-1][0], p)
            else:
                windows.append((p, p))
        return VtableIndex(self.classes, pts,
                           np.array([v[0] for _, v in items], dtype=np.int64),
                           np.array([v[1] for _, v in items], dtype=bool),
                           np.array([v[2] for _, v in items], dtype=np.int64),
                           windows, self.warnings)


_SESSION_CACHE: "Dict[tuple, VtableIndex]" = {}
_SESSION_CACHE_MAX = 4


def _modules_key(target: Target) -> Optional[tuple]:
    """What the index depends on: the modules, where they are loaded, which files describe them.
    Vtables and type_infos live in read-only (RELRO) data, so the same modules at the same
    addresses give the same index whatever else changed in the process."""
    try:
        mods = target.modules()
    except Exception:   # noqa: BLE001 - no key, no caching
        return None
    if any(not m.build_id for m in mods):
        return None     # without build-ids a rebuilt file at the same path would go unnoticed
    local = getattr(target, "local_path", None)
    ident = (getattr(target, "kind", None), getattr(target, "core_path", None), getattr(target, "pid", None))
    return ident + (target.pointer_size, target.byteorder) + tuple(
        (m.path, m.start, m.load_bias, m.build_id, local(m.path) if local else m.path) for m in mods)


def build_index(target: Target) -> VtableIndex:
    """The target's index; reused across commands of a session (gdb) while the same modules
    are loaded at the same addresses (keyed by their build-ids)."""
    cached = getattr(target, "_vtable_index", None)
    if cached is None:
        key = _modules_key(target)
        cached = _SESSION_CACHE.get(key) if key is not None else None
        if cached is None:
            cached = _Builder(target).build()
            if key is not None:
                if len(_SESSION_CACHE) >= _SESSION_CACHE_MAX:
                    _SESSION_CACHE.pop(next(iter(_SESSION_CACHE)))
                _SESSION_CACHE[key] = cached
        target._vtable_index = cached
    return cached
