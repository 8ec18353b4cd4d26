"""sizeof(class) from DWARF without gdb: the byte sizes offline ``vtable-census`` shows.

gdb answers ``gdb.lookup_type(name).sizeof``; offline the same DWARF is read here.  pyelftools
opens the ELF file and decompresses sections; a small walker reads the DIEs (pyelftools' own DIE
parser, through construct, manages ~12k DIEs/s and 30 ms per abbreviation table: 5 s to index
libstdc++'s 4 MiB of ``.debug_info``, 10 s for 30 names on a 78 MiB one).  No file is indexed
whole; a name is looked for where its bytes are:

1. its last component (``Connection``, ``Tm<char const*>``) is found in ``.debug_str`` (every
   string starting with the base name, ``Tm<``, compared in canonical form: GCC's DWARF spells
   ``Tm<long unsigned int>``, ``Tm<const Foo*>`` where the demangler prints ``Tm<unsigned long>``,
   ``Tm<Foo const*>``);
2. the ``.debug_info`` offsets holding such a string offset (DW_FORM_strp), or the string
   itself inline (DW_FORM_string: GCC's names of at most 3 characters), are candidates;
3. each candidate's unit is descended from its top DIE to the DIE holding the candidate (one
   level at a time, siblings skipped with DW_AT_sibling), and the DIEs on that path give the
   qualified name: namespaces (``(anonymous namespace)`` when unnamed) and enclosing classes.
   A class, structure or union whose qualified name equals the wanted one (canonically) and that
   has DW_AT_byte_size answers; a declaration is completed by a DIE whose DW_AT_specification
   names it.

Classes local to a function (``f()::Local``) and names holding lambdas (``main::{lambda()#1}``,
DWARF ``main()::<lambda()>``) are never matched: gdb does not find them either.

Debug files: the module's own file when it has ``.debug_info``, else a separate one by
build-id (``DIR/.build-id/xx/yyyy.debug``) or by ``.gnu_debuglink`` (next to the file, in its
``.debug/`` folder, ``DIR/<its folder>/<link>``), for DIR in ``--debug-dir``, then
``SYSROOT/usr/lib/debug`` with ``--sysroot``, then ``/usr/lib/debug``: gdb's search order.  A separate file
must carry the module's build-id (or, without one, the debuglink's CRC).  Results are cached
per debug file (by build-id) for the life of the process.
"""
from __future__ import annotations

import bisect
import mmap
import os
import re
import struct
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

DEFAULT_DEBUG_DIRS = ("/usr/lib/debug",)

# ---------------------------------------------------------------------------------------------
# C++ names in canonical form

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<anon>\(anonymous\ namespace\))
  | (?P<brace>\{[^{}]*\})
  | (?P<chr>'(?:\\.|[^'\\])+')
  | (?P<num>\d[\w.]*)
  | (?P<id>[A-Za-z_$][\w$]*)
  | (?P<op>::|&&|\.\.\.|[^\s\w])
""", re.X)
_ABI_TAG = re.compile(r"\[abi:[^\]]*\]")
_CV = frozenset(("const", "volatile"))
_INT_WORDS = frozenset(("unsigned", "signed", "short", "long", "int", "char", "__int128", "double", "float"))
_OTHER_BUILTINS = frozenset(("bool", "void", "wchar_t", "char8_t", "char16_t", "char32_t", "__int128_t"))
_TYPE_WORDS = _INT_WORDS | _OTHER_BUILTINS
_INT_SUFFIX = re.compile(r"^(\d+)[uUlL]+$")
_CHAR_ESCAPES = {"n": 10, "t": 9, "r": 13, "0": 0, "\\": 92, "'": 39, '"': 34, "a": 7, "b": 8, "f": 12, "v": 11}


class _Tok(str):
    """A token; ``word`` tells whether a space separates it from a neighbouring word."""
    word = False


def _word(s: str) -> _Tok:
    t = _Tok(s)
    t.word = True
    return t


def _tokenize(name: str) -> Optional[List[_Tok]]:
    out: List[_Tok] = []
    pos = 0
    name = _ABI_TAG.sub("", name)
    while pos < len(name):
        m = _TOKEN.match(name, pos)
        if m is None:
            return None
        pos = m.end()
        kind = m.lastgroup
        text = m.group()
        if kind == "ws":
            continue
        if kind == "num":
            s = _INT_SUFFIX.match(text)          # 5u, -5l, 7ul: DWARF prints the bare number
            out.append(_word(s.group(1) if s else text))
        elif kind == "chr":                      # DWARF 'a' = demangled (char)97
            body = text[1:-1]
            if len(body) == 1:
                code = ord(body)
            elif body[0] == "\\" and body[1:] in _CHAR_ESCAPES:
                code = _CHAR_ESCAPES[body[1:]]
            elif body[0] == "\\" and body[1:].isdigit():
                code = int(body[1:], 8)
            else:
                out.append(_word(text))
                continue
            out.extend([_Tok("("), _word("char"), _Tok(")"), _word(str(code))])
        elif kind in ("id", "anon", "brace"):
            out.append(_word(text))
        else:
            out.append(_Tok(text))
    return out


def _builtin(words: List[str]) -> List[str]:
    """Canonical spelling of a builtin type from its specifier words in any order
    (``long unsigned int`` -> ``unsigned long``, ``__int128 unsigned`` -> ``unsigned __int128``)."""
    longs = words.count("long")
    uns = "unsigned" in words
    sig = "signed" in words
    others = [w for w in words if w in _OTHER_BUILTINS]
    if others:
        return others[:1]
    if "char" in words:
        return ["unsigned", "char"] if uns else (["signed", "char"] if sig else ["char"])
    if "__int128" in words:
        return ["unsigned", "__int128"] if uns else ["__int128"]
    if "double" in words:
        return ["long", "double"] if longs else ["double"]
    if "float" in words:
        return ["float"]
    base = ["short"] if "short" in words else (["long"] * longs if longs else ["int"])
    return (["unsigned"] if uns else []) + base


def _name_end(toks: List[_Tok], j: int) -> int:
    """End of the (qualified, templated) name starting at ``toks[j]``; ``j`` when none starts there."""
    k = j
    if k < len(toks) and toks[k] == "::":
        k += 1
    while True:
        t = toks[k] if k < len(toks) else None
        if t is None or not t.word or t in _TYPE_WORDS or t in _CV or t[0].isdigit():
            return j
        k += 1
        if k < len(toks) and toks[k] == "<":
            depth = 0
            while k < len(toks):
                if toks[k] == "<":
                    depth += 1
                elif toks[k] == ">":
                    depth -= 1
                    if depth == 0:
                        break
                k += 1
            k += 1
        if k < len(toks) and toks[k] == "::":
            k += 1
            continue
        return k


def canonical(name: str) -> Optional[str]:
    """A spelling of a C++ type name that the demangler's and GCC's DWARF spellings share:
    builtin types in one order (``unsigned long``), cv-qualifiers after what they qualify
    (``Foo const*``), integer literals without suffixes, char literals as ``(char)N``, ABI tags
    dropped, spaces only between words.  None when the name does not tokenize."""
    toks = _tokenize(name)
    if toks is None:
        return None
    # builtin specifier runs (words in any order, cv mixed in) -> canonical words + cv after
    out: List[_Tok] = []
    i = 0
    while i < len(toks):
        t = toks[i]
        if t.word and (t in _TYPE_WORDS or t in _CV) and not (out and out[-1] == "::"):
            j = i
            while j < len(toks) and toks[j].word and (toks[j] in _TYPE_WORDS or toks[j] in _CV):
                j += 1
            run = [str(x) for x in toks[i:j]]
            types = [w for w in run if w in _TYPE_WORDS]
            cvs = sorted(w for w in run if w in _CV)
            if types:
                out.extend(_word(w) for w in _builtin(types) + cvs)
            else:
                out.extend(_word(w) for w in run)
            i = j
            continue
        out.append(t)
        i += 1
    toks = out
    # a leading cv run before a name moves after the name: "const Foo*" -> "Foo const*"
    for _ in range(len(toks)):
        moved = False
        i = 0
        while i < len(toks):
            if toks[i] in _CV and toks[i].word:
                j = i
                while j < len(toks) and toks[j] in _CV and toks[j].word:
                    j += 1
                end = _name_end(toks, j)
                if end > j:
                    toks = toks[:i] + toks[j:end] + toks[i:j] + toks[end:]
                    moved = True
                    break
                i = j
                continue
            i += 1
        if not moved:
            break
    # sort every cv run, then print
    i = 0
    while i < len(toks):
        if toks[i] in _CV and toks[i].word:
            j = i
            while j < len(toks) and toks[j] in _CV and toks[j].word:
                j += 1
            toks[i:j] = [_word(w) for w in sorted(str(x) for x in toks[i:j])]
            i = j
        else:
            i += 1
    s = []
    prev = None
    for t in toks:
        if prev is not None and prev.word and t.word:
            s.append(" ")
        s.append(str(t))
        prev = t
    return "".join(s)


def split_scopes(name: str) -> Optional[List[str]]:
    """``ns::Outer<a::b>::Inner`` -> ["ns", "Outer<a::b>", "Inner"] (only ``::`` outside <>, ())."""
    parts, depth, cur, i = [], 0, [], 0
    while i < len(name):
        c = name[i]
        if c in "<({[":
            depth += 1
        elif c in ">)}]":
            depth -= 1
        if depth == 0 and name.startswith("::", i):
            parts.append("".join(cur).strip())
            cur = []
            i += 2
            continue
        cur.append(c)
        i += 1
    parts.append("".join(cur).strip())
    if depth != 0 or any(not p for p in parts):
        return None
    return parts


# ---------------------------------------------------------------------------------------------
# ELF helpers (struct over an mmap; pyelftools only once a file's DWARF is read: importing it costs 40 ms)

def _open_map(path: str):
    """A read-only mmap of a regular file (never opens a FIFO or a device); None if impossible."""
    from ..errors import TargetError
    from .modules import open_regular
    try:
        fh, size = open_regular(path, "debug file")
    except TargetError:
        return None
    try:
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else None
    except (OSError, ValueError, OverflowError):
        return None
    finally:
        fh.close()


def _section(path: str, wanted: str) -> Optional[bytes]:
    """The contents of section ``wanted`` of the ELF file at ``path`` (None when absent)."""
    from .symbols import _section_headers
    mm = _open_map(path)
    if mm is None:
        return None
    try:
        sh = _section_headers(mm)
        if sh is None or sh[3] >= len(sh[2]):
            return None
        _n, _t, stroff, strsize, _l = sh[2][sh[3]]
        names = mm[stroff:stroff + strsize]
        key = wanted.encode()
        for n, typ, off, size, _link in sh[2]:
            if names[n:names.find(b"\0", n)] == key and typ != 8 and off + size <= len(mm):   # not NOBITS
                return bytes(mm[off:off + size])
        return None
    except (struct.error, ValueError):
        return None
    finally:
        mm.close()


def debuglink(path: str) -> Optional[Tuple[str, int]]:
    """(file name, CRC32) from the ``.gnu_debuglink`` section of ``path``."""
    data = _section(path, ".gnu_debuglink")
    if not data:
        return None
    nul = data.find(b"\0")
    if nul <= 0:
        return None
    crc_at = (nul + 4) & ~3
    if crc_at + 4 > len(data):
        return None
    mm = _open_map(path)
    little = True
    if mm is not None:
        little = len(mm) > 5 and mm[5] == 1
        mm.close()
    crc, = struct.unpack_from("<I" if little else ">I", data, crc_at)
    return os.fsdecode(data[:nul]), crc


def _file_crc(path: str) -> Optional[int]:
    crc = 0
    try:
        with open(path, "rb") as fh:
            while True:
                block = fh.read(1 << 20)
                if not block:
                    return crc & 0xFFFFFFFF
                crc = zlib.crc32(block, crc)
    except OSError:
        return None


def _build_id_matches(path: str, build_id: Optional[str]) -> Optional[bool]:
    from .modules import file_build_id
    have = file_build_id(path)
    if build_id is None or have is None:
        return None
    return have == build_id


def find_debug_files(path: str, build_id: Optional[str], debug_dirs: Sequence[str] = DEFAULT_DEBUG_DIRS) -> List[str]:
    """The files holding DWARF for the module file ``path``: itself when it has .debug_info, else
    the first separate debug file found by build-id or by .gnu_debuglink (gdb's order)."""
    from .modules import is_regular_file
    from .symbols import has_debug_info
    if has_debug_info(path):
        return [path]
    if build_id and len(build_id) > 2:
        for d in debug_dirs:
            cand = os.path.join(d, ".build-id", build_id[:2], build_id[2:] + ".debug")
            if is_regular_file(cand) and has_debug_info(cand) and _build_id_matches(cand, build_id) is not False:
                return [cand]
    link = debuglink(path)
    if link is None:
        return []
    name, crc = link
    if "/" in name:
        return []
    folder = os.path.dirname(os.path.abspath(path))
    cands = [os.path.join(folder, name), os.path.join(folder, ".debug", name)]
    for d in debug_dirs:
        cands.append(os.path.join(d, folder.lstrip("/"), name))
    for cand in cands:
        if os.path.abspath(cand) == os.path.abspath(path) or not is_regular_file(cand) or not has_debug_info(cand):
            continue
        same = _build_id_matches(cand, build_id)
        if same is False:
            continue
        if same is None and _file_crc(cand) != crc:
            continue
        return [cand]
    return []


# ---------------------------------------------------------------------------------------------
# One file's DWARF

class _Window:
    """One section's bytes: a slice of an mmap (no copy) or a decompressed bytes object."""

    def __init__(self, buf, start: int, size: int):
        self.buf, self.start, self.size = buf, start, size

    def find(self, sub: bytes, start: int = 0, end: Optional[int] = None) -> int:
        end = self.size if end is None else min(end, self.size)
        i = self.buf.find(sub, self.start + start, self.start + end)
        return i - self.start if i >= 0 else -1

    def cstring(self, at: int, limit: int = 1 << 16) -> Optional[bytes]:
        if not 0 <= at < self.size:
            return None
        end = self.find(b"\0", at, at + limit)
        return bytes(self.buf[self.start + at:self.start + end]) if end >= 0 else None


# DWARF constants (DWARF 2-5 and the GNU extensions GCC emits)
_CLASS_TAGS = (0x02, 0x13, 0x17)             # DW_TAG_class_type, structure_type, union_type
_NAMESPACE = 0x39
_SCOPE_TAGS = _CLASS_TAGS + (_NAMESPACE,)
_UNIT_TAGS = (0x11, 0x3C, 0x41)              # DW_TAG_compile_unit, partial_unit, type_unit
AT_SIBLING, AT_NAME, AT_BYTE_SIZE, AT_DECLARATION, AT_SPECIFICATION = 0x01, 0x03, 0x0B, 0x3C, 0x47
AT_STR_OFFSETS_BASE = 0x72
_WANTED = frozenset((AT_SIBLING, AT_NAME, AT_BYTE_SIZE, AT_DECLARATION, AT_SPECIFICATION, AT_STR_OFFSETS_BASE))
# DW_FORM_*: fixed sizes; "offset-sized" ones; ULEB128-valued ones; the rest by hand
_FIXED = {0x0B: 1, 0x0C: 1, 0x05: 2, 0x06: 4, 0x07: 8, 0x11: 1, 0x12: 2, 0x13: 4, 0x14: 8, 0x19: 0, 0x1C: 4,
          0x1E: 16, 0x20: 8, 0x21: 0, 0x24: 8, 0x25: 1, 0x26: 2, 0x27: 3, 0x28: 4, 0x29: 1, 0x2A: 2, 0x2B: 3,
          0x2C: 4}
_OFFSET_FORMS = frozenset((0x0E, 0x17, 0x1D, 0x1F, 0x1F20, 0x1F21))
_ULEB_FORMS = frozenset((0x0F, 0x15, 0x1A, 0x1B, 0x22, 0x23, 0x1F01, 0x1F02))
F_ADDR, F_BLOCK2, F_BLOCK4, F_DATA2, F_DATA4, F_DATA8, F_STRING, F_BLOCK, F_BLOCK1, F_DATA1 = (
    0x01, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B)
F_FLAG, F_SDATA, F_STRP, F_UDATA, F_REF_ADDR, F_INDIRECT, F_EXPRLOC, F_FLAG_PRESENT = (
    0x0C, 0x0D, 0x0E, 0x0F, 0x10, 0x16, 0x18, 0x19)
F_LINE_STRP, F_IMPLICIT_CONST = 0x1F, 0x21
_STRX = {0x1A: 0, 0x25: 1, 0x26: 2, 0x27: 3, 0x28: 4, 0x1F02: 0}
_REFS = {0x11: 1, 0x12: 2, 0x13: 4, 0x14: 8, 0x15: 0}


class DwarfFormatError(Exception):
    """The DWARF does not parse where we looked (damaged, or a form we do not know)."""


def _uleb(buf, p: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[p]
        p += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, p
        shift += 7


def _sleb(buf, p: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[p]
        p += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return (result - (1 << shift) if b & 0x40 else result), p


class _Unit:
    __slots__ = ("offset", "end", "version", "off_size", "addr_size", "abbrev_offset", "first_die", "abbrevs",
                 "str_base")


class _Abbrevs:
    """One abbreviation table, read only as far as the codes asked for: code -> (tag,
    has_children, plan); a plan step is (0, n): skip n bytes, (1, attr, form, const): decode,
    (2, 0, form, 0): skip a variable-sized value."""

    def __init__(self, win: "_Window", offset: int, off_size: int, addr_size: int, version: int):
        self.buf, self.pos, self.end = win.buf, win.start + offset, win.start + win.size
        self.off_size, self.addr_size, self.version = off_size, addr_size, version
        self.table: dict = {}
        self.done = False

    def get(self, code: int):
        t = self.table.get(code)
        while t is None and not self.done:
            self._next()
            t = self.table.get(code)
        return t

    def _next(self):
        buf, p = self.buf, self.pos
        if p >= self.end:
            self.done = True
            return
        code, p = _uleb(buf, p)
        if code == 0:
            self.done = True
            return
        tag, p = _uleb(buf, p)
        children = buf[p] != 0
        p += 1
        plan: list = []
        while True:
            attr, p = _uleb(buf, p)
            form, p = _uleb(buf, p)
            if attr == 0 and form == 0:
                break
            const = 0
            if form == F_IMPLICIT_CONST:
                const, p = _sleb(buf, p)
            size = _FIXED.get(form)
            if size is None:
                if form in _OFFSET_FORMS:
                    size = self.off_size
                elif form == F_ADDR:
                    size = self.addr_size
                elif form == F_REF_ADDR:
                    size = self.off_size if self.version >= 3 else self.addr_size
            if attr in _WANTED:
                plan.append((1, attr, form, const))
            elif size is not None:
                if plan and plan[-1][0] == 0:
                    plan[-1] = (0, plan[-1][1] + size)
                else:
                    plan.append((0, size))
            else:
                plan.append((2, 0, form, 0))
        self.table[code] = (tag, children, plan)
        self.pos = p


class _DIE:
    __slots__ = ("offset", "tag", "children", "end", "attrs", "attr_at")

    def __init__(self, offset, tag, children, end, attrs, attr_at):
        self.offset, self.tag, self.children, self.end, self.attrs, self.attr_at = (
            offset, tag, children, end, attrs, attr_at)


class DwarfFile:
    """The DWARF of one ELF file, asked one class name at a time (answers memoized).

    pyelftools finds and decompresses the sections; the DIEs on the way to a candidate are read
    by the small walker below, which decodes only DW_AT_name/byte_size/declaration/sibling/
    specification and skips every other attribute by its form.  (pyelftools' own DIE parser costs
    ~80 µs a DIE and ~30 ms per abbreviation table through construct: 10 s for 30 names on a
    78 MiB .debug_info, against well under one here.)"""

    def __init__(self, path: str, section: str = ".debug_info"):
        self.path = path
        self.section = section           # or DWARF 4's .debug_types (type units of -fdebug-types-section)
        self._types: Optional["DwarfFile"] = None
        self.error: Optional[str] = None
        self._sizes: Dict[str, Optional[int]] = {}
        self._strings: Dict[str, Optional[tuple]] = {}
        self._canon: Dict[bytes, Optional[str]] = {}
        self._mm = None
        self._info: Optional[_Window] = None
        self._str: Optional[_Window] = None
        self._line_str: Optional[_Window] = None
        self._str_off: Optional[_Window] = None
        self._abbrev: Optional[_Window] = None
        self._loaded = False
        self._unit_offsets: Optional[List[int]] = None
        self._units: Dict[int, _Unit] = {}
        self._abbrev_cache: Dict[tuple, _Abbrevs] = {}
        self._dies: Dict[int, _DIE] = {}
        self._kids: Dict[int, tuple] = {}
        self._unit_test: Dict[tuple, bool] = {}
        self._little = True

    # -- loading --------------------------------------------------------------------------
    def _load(self) -> bool:
        if not self._loaded:
            self._loaded = True
            try:
                self._open()
            except Exception as e:   # pyelftools raises many kinds on a damaged file: no sizes from it
                self.error = "%s: %s" % (type(e).__name__, e)
                self._info = None
        return self._info is not None

    def _open(self):
        from elftools.elf.elffile import ELFFile
        self._mm = _open_map(self.path)
        if self._mm is None:
            raise OSError("cannot map %s" % self.path)
        with open(self.path, "rb") as fh:
            elf = ELFFile(fh)
            self._little = elf.little_endian
            if self.section == ".debug_info" and elf.get_section_by_name(".debug_types") is not None:
                self._types = DwarfFile(self.path, ".debug_types")
            secs: Dict[str, Optional[_Window]] = {}
            for name in (self.section, ".debug_abbrev", ".debug_str", ".debug_str_offsets", ".debug_line_str"):
                sec = elf.get_section_by_name(name)
                if sec is None or sec["sh_type"] == "SHT_NOBITS":
                    secs[name] = None
                elif sec.compressed:
                    data = sec.data()
                    secs[name] = _Window(data, 0, len(data))
                else:
                    off, size = sec["sh_offset"], sec["sh_size"]
                    if off + size > len(self._mm):
                        raise DwarfFormatError("section %s runs past the end of the file" % name)
                    secs[name] = _Window(self._mm, off, size)
        if secs[self.section] is None or secs[".debug_abbrev"] is None:
            raise DwarfFormatError("no %s (or no .debug_abbrev)" % self.section)
        self._abbrev = secs[".debug_abbrev"]
        self._str = secs[".debug_str"]
        self._line_str = secs[".debug_line_str"]
        self._str_off = secs[".debug_str_offsets"]
        self._info = secs[self.section]

    def close(self):
        if self._types is not None:
            self._types.close()
        self._info = self._str = self._abbrev = self._line_str = self._str_off = None
        self._dies.clear()
        self._kids.clear()
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass
            self._mm = None

    # -- units, abbreviations, DIEs ------------------------------------------------------
    def _int(self, p: int, n: int) -> int:
        w = self._info
        return int.from_bytes(w.buf[w.start + p:w.start + p + n], "little" if self._little else "big")

    def _unit_starts(self) -> List[int]:
        if self._unit_offsets is None:
            offs = []
            p, size = 0, self._info.size
            while p + 11 <= size:
                length = self._int(p, 4)
                hdr = 4
                if length == 0xFFFFFFFF:
                    length, hdr = self._int(p + 4, 8), 12
                if length == 0 or p + hdr + length > size:
                    break
                offs.append(p)
                p += hdr + length
            self._unit_offsets = offs
        return self._unit_offsets

    def _unit_at(self, x: int) -> Optional[_Unit]:
        offs = self._unit_starts()
        i = bisect.bisect_right(offs, x) - 1
        if i < 0:
            return None
        off = offs[i]
        u = self._units.get(off)
        if u is None:
            u = self._units[off] = self._parse_unit(off)
        return u if u is not None and u.offset <= x < u.end else None

    def _parse_unit(self, p: int) -> Optional[_Unit]:
        u = _Unit()
        u.offset = p
        length, off_size, q = self._int(p, 4), 4, p + 4
        if length == 0xFFFFFFFF:
            length, off_size, q = self._int(p + 4, 8), 8, p + 12
        u.end = q + length
        u.version = self._int(q, 2)
        q += 2
        if u.version >= 5:
            unit_type = self._int(q, 1)
            u.addr_size = self._int(q + 1, 1)
            u.abbrev_offset = self._int(q + 2, off_size)
            q += 2 + off_size
            if unit_type in (4, 5):          # skeleton, split_compile: dwo_id
                q += 8
            elif unit_type in (2, 6):        # type, split_type: signature, type_offset
                q += 8 + off_size
        elif u.version >= 2:
            u.abbrev_offset = self._int(q, off_size)
            u.addr_size = self._int(q + off_size, 1)
            q += off_size + 1
            if self.section == ".debug_types":   # signature, type_offset
                q += 8 + off_size
        else:
            return None
        u.off_size = off_size
        u.first_die = q
        u.str_base = None
        u.abbrevs = self._abbrevs(u)
        return u

    def _abbrevs(self, u: _Unit) -> "_Abbrevs":
        key = (u.abbrev_offset, u.off_size, u.addr_size, u.version >= 3)
        table = self._abbrev_cache.get(key)
        if table is None:
            table = self._abbrev_cache[key] = _Abbrevs(self._abbrev, u.abbrev_offset, u.off_size,
                                                       u.addr_size, u.version)
        return table

    def _value(self, u: _Unit, form: int, p: int, const: int):
        """(value, next position) of an attribute of ``form`` at absolute buffer position ``p``."""
        w = self._info
        buf, base = w.buf, w.start
        order = "little" if self._little else "big"
        size = _FIXED.get(form)
        if form in (F_STRING,):
            end = buf.find(b"\0", p, base + w.size)
            if end < 0:
                raise DwarfFormatError("unterminated string at 0x%x" % (p - base))
            return bytes(buf[p:end]), end + 1
        if form == F_FLAG_PRESENT:
            return True, p
        if form == F_IMPLICIT_CONST:
            return const, p
        if form == F_SDATA:
            return _sleb(buf, p)
        if form == F_INDIRECT:
            real, p = _uleb(buf, p)
            return self._value(u, real, p, const)
        if form in _REFS:
            if form == 0x15:
                v, p = _uleb(buf, p)
            else:
                n = _REFS[form]
                v, p = int.from_bytes(buf[p:p + n], order), p + n
            return u.offset + v, p
        if form in (F_STRP, F_LINE_STRP):
            off = int.from_bytes(buf[p:p + u.off_size], order)
            sec = self._str if form == F_STRP else self._line_str
            return (sec.cstring(off) if sec is not None else None), p + u.off_size
        if form in _STRX:
            n = _STRX[form]
            if n:
                idx, p = int.from_bytes(buf[p:p + n], order), p + n
            else:
                idx, p = _uleb(buf, p)
            return self._strx(u, idx), p
        if form in _ULEB_FORMS:
            return _uleb(buf, p)
        if form in (F_BLOCK1, F_BLOCK2, F_BLOCK4, F_BLOCK, F_EXPRLOC):
            if form == F_BLOCK1:
                n, p = buf[p], p + 1
            elif form == F_BLOCK2:
                n, p = int.from_bytes(buf[p:p + 2], order), p + 2
            elif form == F_BLOCK4:
                n, p = int.from_bytes(buf[p:p + 4], order), p + 4
            else:
                n, p = _uleb(buf, p)
            return None, p + n
        if size is None:
            if form in _OFFSET_FORMS:
                size = u.off_size
            elif form == F_ADDR:
                size = u.addr_size
            elif form == F_REF_ADDR:
                size = u.off_size if u.version >= 3 else u.addr_size
            else:
                raise DwarfFormatError("unknown DW_FORM 0x%x" % form)
        v = int.from_bytes(buf[p:p + size], order) if size <= 8 else None
        if form == F_FLAG:
            v = bool(v)
        return v, p + size

    def _strx(self, u: _Unit, idx: int) -> Optional[bytes]:
        if self._str_off is None or self._str is None:
            return None
        if u.str_base is None:
            top = self._die(u, u.first_die)
            base = top.attrs.get(AT_STR_OFFSETS_BASE) if top is not None else None
            u.str_base = base if isinstance(base, int) else (8 if u.off_size == 4 else 16)
        at = u.str_base + idx * u.off_size
        if at + u.off_size > self._str_off.size:
            return None
        w = self._str_off
        off = int.from_bytes(w.buf[w.start + at:w.start + at + u.off_size], "little" if self._little else "big")
        return self._str.cstring(off)

    def _die(self, u: _Unit, p: int) -> Optional[_DIE]:
        """The DIE at .debug_info offset ``p`` (None for a null entry)."""
        d = self._dies.get(p)
        if d is not None:
            return d
        w = self._info
        base = w.start
        if not u.offset <= p < u.end:
            raise DwarfFormatError("DIE offset 0x%x outside its unit" % p)
        code, q = _uleb(w.buf, base + p)
        if code == 0:
            return None
        ab = u.abbrevs.get(code)
        if ab is None:
            raise DwarfFormatError("unknown abbreviation %d at 0x%x" % (code, p))
        tag, children, plan = ab
        attrs, attr_at = {}, {}
        for step in plan:
            if step[0] == 0:
                q += step[1]
            elif step[0] == 2:
                _v, q = self._value(u, step[2], q, 0)
            else:
                attr_at[step[1]] = q - base
                attrs[step[1]], q = self._value(u, step[2], q, step[3])
        d = _DIE(p, tag, children, q - base, attrs, attr_at)
        if len(self._dies) < 2_000_000:
            self._dies[p] = d
        return d

    def _children(self, u: _Unit, die: _DIE):
        """The children of ``die`` in order (each subtree jumped over with DW_AT_sibling, else
        walked to its null entry)."""
        if not die.children:
            return
        p = die.end
        while p < u.end:
            c = self._die(u, p)
            if c is None:
                return
            yield c
            p = self._next_sibling(u, c)

    def _next_sibling(self, u: _Unit, d: _DIE) -> int:
        if not d.children:
            return d.end
        sib = d.attrs.get(AT_SIBLING)
        if isinstance(sib, int) and d.offset < sib <= u.end:
            return sib
        depth, p = 1, d.end          # walk the subtree to its terminating null entry (no recursion)
        w = self._info
        while p < u.end:
            c = self._die(u, p)
            if c is None:
                _code, q = _uleb(w.buf, w.start + p)
                p = q - w.start
                depth -= 1
                if depth == 0:
                    return p
                continue
            if c.children:
                sib = c.attrs.get(AT_SIBLING)
                if isinstance(sib, int) and c.offset < sib <= u.end:
                    p = sib
                else:
                    depth += 1
                    p = c.end
            else:
                p = c.end
        return u.end

    def _name(self, d: _DIE) -> Optional[str]:
        v = d.attrs.get(AT_NAME)
        if not isinstance(v, bytes):
            return None
        return v.decode("utf-8", "replace")

    def _canonical(self, raw: str) -> Optional[str]:
        key = raw.encode()
        if key not in self._canon:
            self._canon[key] = canonical(raw)
        return self._canon[key]

    # -- lookup ---------------------------------------------------------------------------
    def class_size(self, name: str) -> Optional[int]:
        """DW_AT_byte_size of the class, structure or union named ``name`` (qualified, as the
        demangler prints it); None when this file does not define it."""
        if name in self._sizes:
            return self._sizes[name]
        size = None
        scopes = split_scopes(expand_std_abbreviations(name))
        if scopes and self._load():
            try:
                size = self._lookup([canonical(s) if s != "(anonymous namespace)" else s for s in scopes], scopes)
            except Exception as e:   # damaged DWARF (any shape): this name stays unknown, the census goes on
                self.error = "%s: %s" % (type(e).__name__, e)
                size = None
            if size is None and self._types is not None:
                size = self._types.class_size(name)
                self.error = self.error or self._types.error
        self._sizes[name] = size
        return size

    def _lookup(self, want: List[Optional[str]], scopes: List[str]) -> Optional[int]:
        if any(w is None for w in want) or any(_is_function(sc) for sc in scopes[:-1]):
            return None          # a class local to a function: not in a namespace or class scope
        found = self._name_strings(scopes[-1])
        if found is None:
            return None          # a lambda, an unnamed type: no DWARF name to look for
        strp, strings = found
        pats = self._scope_patterns(want, scopes)
        decls: List[Tuple[_Unit, _DIE]] = []
        if strp:
            size = self._check_hits(self._u32_hits(strp), want, decls, pats)
            if size is not None:
                return size
        # inline names (DW_FORM_string): GCC's names of at most 3 characters, other producers
        hits = []
        for t in sorted(strings | {scopes[-1].encode()}):
            pat = t + b"\0"
            pos = self._info.find(pat)
            while pos >= 0:
                hits.append(pos)
                pos = self._info.find(pat, pos + 1)
        size = self._check_hits(sorted(set(hits)), want, decls, pats)
        if size is not None:
            return size
        for u, die in decls:      # declared here, defined elsewhere through DW_AT_specification
            size = self._from_specification(u, die)
            if size is not None:
                return size
        return None

    def _name_strings(self, part: str):
        """(offsets in .debug_str, the distinct strings there) whose canonical form is that of
        the name component ``part``; None when ``part`` is no name DWARF could hold."""
        if part in self._strings:
            return self._strings[part]
        toks = _tokenize(part)
        res = None
        if (toks and toks[0].word and not toks[0].startswith(("{", "(")) and not toks[0][0].isdigit()
                and not any(t.startswith("{") for t in toks)):   # {lambda(int)#1}: DWARF says <lambda(int)>
            base = str(toks[0]).encode()
            templated = len(toks) > 1 and toks[1] == "<"
            key = base + (b"<" if templated else b"\0")
            part_c = canonical(part)
            # words the DWARF string must contain (a cheap filter before canonicalising it)
            needed = [str(t).encode() for t in toks if t.word and str(t)[0].isalpha() and t not in _TYPE_WORDS
                      and t not in _CV]
            offs, strings = [], set()
            if self._str is not None and part_c is not None:
                # the demangler's spelling is often GCC's too: those strings alone first
                exact = part.encode()
                pos = self._str.find(exact + b"\0")
                while pos >= 0:
                    offs.append(pos)
                    strings.add(exact)
                    pos = self._str.find(exact + b"\0", pos + 1)
                if not offs:
                    for pos, text in self._string_offsets(self._str, key, part_c, needed):
                        offs.append(pos)
                        strings.add(text)
            res = (offs, strings)
        self._strings[part] = res
        return res

    @staticmethod
    def _string_offsets(win: _Window, key: bytes, part_c: str, needed) -> List[Tuple[int, bytes]]:
        """(offset, string) in ``win`` of the NUL-terminated strings starting with ``key`` whose
        canonical form is ``part_c``."""
        out = []
        exact = key.endswith(b"\0")
        pos = win.find(key)
        while pos >= 0:
            s = key[:-1] if exact else win.cstring(pos)
            if s and all(w in s for w in needed):
                try:
                    text = s.decode("utf-8")
                except UnicodeDecodeError:
                    text = None
                if text is not None and (text == part_c or canonical(text) == part_c):
                    out.append((pos, s))
            pos = win.find(key, pos + 1)
        return out

    def _u32(self, value: int) -> bytes:
        return struct.pack("<I" if self._little else ">I", value & 0xFFFFFFFF)

    def _u32_hits(self, offsets: List[int]) -> List[int]:
        """Positions in .debug_info holding one of ``offsets`` as a 4-byte value (DW_FORM_strp of
        32-bit DWARF)."""
        hits = []
        for off in offsets:
            if off >= 1 << 32:
                continue
            pat = self._u32(off)
            pos = self._info.find(pat)
            while pos >= 0:
                hits.append(pos)
                pos = self._info.find(pat, pos + 1)
        return sorted(set(hits))

    def _scope_matches(self, d: _DIE, want: str, leaf: bool) -> bool:
        if leaf:
            if d.tag not in _CLASS_TAGS:
                return False
        elif d.tag not in _SCOPE_TAGS:
            return False
        name = self._name(d)
        if name is None:
            return want == "(anonymous namespace)" and d.tag == _NAMESPACE
        return self._canonical(name) == want

    def _child_at(self, u: _Unit, die: _DIE, x: int) -> Optional[_DIE]:
        """The child of ``die`` whose subtree holds offset ``x`` (the last child starting at or
        before it).  Children are read as far as needed and kept per parent: a later hit below
        the ones read costs one bisect."""
        kids = self._kids.get(die.offset)
        if kids is None:
            kids = self._kids[die.offset] = [[], [], self._children(u, die), False]
        offs, lst, it, finished = kids
        while not finished and (not offs or offs[-1] <= x):
            c = next(it, None)
            if c is None:
                kids[3] = finished = True
                break
            offs.append(c.offset)
            lst.append(c)
        i = bisect.bisect_right(offs, x) - 1
        return lst[i] if i >= 0 else None

    def _unit_may_hold(self, u: _Unit, pats) -> bool:
        """Whether the unit's bytes hold one of ``pats`` (the outermost named scope's string or
        string offset): a cheap test before its abbreviations are read and its DIEs walked."""
        if not pats:
            return True
        key = (u.offset, pats)
        got = self._unit_test.get(key)
        if got is None:
            got = self._unit_test[key] = any(self._info.find(p, u.offset, u.end) >= 0 for p in pats)
        return got

    def _scope_patterns(self, want: List[str], scopes: List[str]) -> tuple:
        for w, sc in zip(want[:-1], scopes[:-1]):
            if w == "(anonymous namespace)":
                continue
            got = self._name_strings(sc)
            if not got:
                return ()
            offs, strings = got
            return tuple(self._u32(o) for o in offs) + tuple(t + b"\0" for t in strings | {sc.encode()})
        return ()

    def _check_hits(self, hits, want: List[str], decls, pats=()) -> Optional[int]:
        """Descend from each hit's unit top towards the hit, one scope of ``want`` per level;
        the class at the last level answers (or, declared only, goes to ``decls``)."""
        done = set()
        for x in hits:
            u = self._unit_at(x)
            if u is None or not self._unit_may_hold(u, pats):
                continue
            top = self._die(u, u.first_die)
            if top is None or top.tag not in _UNIT_TAGS or x < top.end:
                continue
            die = top
            for level, scope in enumerate(want):
                nxt = self._child_at(u, die, x)
                if nxt is None or not self._scope_matches(nxt, scope, level == len(want) - 1):
                    break
                die = nxt
            else:
                if die.offset in done:
                    continue
                done.add(die.offset)
                size = die.attrs.get(AT_BYTE_SIZE)
                if die.attrs.get(AT_DECLARATION):
                    decls.append((u, die))
                elif isinstance(size, int):
                    return size
        return None

    def _from_specification(self, u: _Unit, decl: _DIE) -> Optional[int]:
        """A definition whose DW_AT_specification (ref4, unit-relative) names ``decl``."""
        pat = self._u32(decl.offset - u.offset)
        pos = self._info.find(pat, u.offset, u.end)
        while pos >= 0:
            die = self._die_holding(u, pos)
            if (die is not None and die.tag in _CLASS_TAGS and die.attrs.get(AT_SPECIFICATION) == decl.offset
                    and die.attr_at.get(AT_SPECIFICATION) == pos and isinstance(die.attrs.get(AT_BYTE_SIZE), int)):
                return die.attrs[AT_BYTE_SIZE]
            pos = self._info.find(pat, pos + 1, u.end)
        return None

    def _die_holding(self, u: _Unit, x: int) -> Optional[_DIE]:
        die = self._die(u, u.first_die)
        while die is not None and x >= die.end:
            nxt = None
            for c in self._children(u, die):
                if c.offset > x:
                    break
                nxt = c
            die = nxt
        return die


def _is_function(scope: str) -> bool:
    """Whether a scope of a demangled name is a function (``local()``, ``f<int>(int) const``)."""
    depth = 0
    for c in scope:
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        elif c == "(" and depth == 0:
            return scope != "(anonymous namespace)"
    return False


def expand_std_abbreviations(name: str) -> str:
    """The demangler prints the standard substitutions Ss, Si, So, Sd by their typedef names
    (``std::iostream``); DWARF names the class template's instance."""
    return _STD_ABBREV.sub(lambda m: _STD_EXPANSIONS[m.group(1)], name)


_STD_EXPANSIONS = {
    "string": "std::basic_string<char, std::char_traits<char>, std::allocator<char> >",
    "istream": "std::basic_istream<char, std::char_traits<char> >",
    "ostream": "std::basic_ostream<char, std::char_traits<char> >",
    "iostream": "std::basic_iostream<char, std::char_traits<char> >",
}
_STD_ABBREV = re.compile(r"(?<![\w:])std::(string|istream|ostream|iostream)(?![\w<])")


# per process: debug files by build-id (else path, size, mtime)
_FILES: Dict[tuple, DwarfFile] = {}


def dwarf_file(path: str, build_id: Optional[str] = None) -> DwarfFile:
    try:
        st = os.stat(path)
        key = ("build-id", build_id) if build_id else ("path", os.path.abspath(path), st.st_size, st.st_mtime_ns)
    except OSError:
        key = ("path", os.path.abspath(path), None, None)
    f = _FILES.get(key)
    if f is None:
        f = _FILES[key] = DwarfFile(path)
    return f


def clear_cache():
    for f in _FILES.values():
        f.close()
    _FILES.clear()


class TargetDwarf:
    """sizeof by class name over the modules of a target, gdb's way: nothing when the vtable's
    module has no DWARF at all; else its own DWARF first, then every other module's."""

    def __init__(self, target, debug_dirs: Sequence[str] = ()):
        self.target = target
        dirs = [os.path.abspath(d) for d in debug_dirs or ()]
        sysroot = getattr(target, "sysroot", None)
        if sysroot:
            dirs += [os.path.join(sysroot, d.lstrip("/")) for d in DEFAULT_DEBUG_DIRS]
        dirs += [d for d in DEFAULT_DEBUG_DIRS if d not in dirs]
        self.debug_dirs = dirs
        self._files: Dict[str, List[DwarfFile]] = {}
        self._warned: set = set()

    def files_for(self, module) -> List[DwarfFile]:
        if module.path not in self._files:
            local = self.target.local_path(module.path) if hasattr(self.target, "local_path") else module.path
            found = find_debug_files(local, module.build_id, self.debug_dirs) if local else []
            self._files[module.path] = [dwarf_file(p, module.build_id if p != local else None) for p in found]
        return self._files[module.path]

    def type_size(self, name: str, module: Optional[str] = None) -> Optional[int]:
        mods = list(self.target.modules())
        own = [m for m in mods if m.name == module] if module else []
        if own and not any(self.files_for(m) for m in own):
            return None          # gdb: no DWARF for the module -> no lookup
        for m in own + [m for m in mods if m not in own]:
            for f in self.files_for(m):
                size = f.class_size(name)
                if f.error and f.path not in self._warned:
                    self._warned.add(f.path)
                    self.target.warnings.append("debug info of %s: %s (class sizes from it may be missing)"
                                                % (f.path, f.error))
                if size is not None:
                    return size
        return None
