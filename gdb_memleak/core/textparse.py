"""Pure parsers of /proc and gdb text.  No I/O here: callers feed the text.

Whatever the text, they return what it holds or raise a MemleakError subclass (``parse_size``:
SizeError, also a ValueError); a line that cannot describe a mapping (start not below end, an
address past 64 bits, a negative or non-numeric count) is skipped, never turned into a result.
"""
from __future__ import annotations

import re
from fractions import Fraction
from typing import Dict, List, Optional

from .errors import UsageError
from .memory.target import Region

ADDR_TOP = 1 << 64


class SizeError(UsageError, ValueError):
    """Not a size: a usage error for the user, a ValueError for callers that catch that."""


def _mapping_ok(start: int, end: int, off: int) -> bool:
    return 0 <= start < end <= ADDR_TOP and 0 <= off < ADDR_TOP


def _kib(line: str) -> Optional[int]:
    """'Rss:   1234 kB' -> bytes; None when the line holds no count."""
    parts = line.split()
    if len(parts) < 2 or not parts[1].isdigit() or not parts[1].isascii():
        return None
    return int(parts[1]) * 1024

_MAPS_RE = re.compile(r"^([0-9a-fA-F]{1,16})-([0-9a-fA-F]{1,16})\s+([rwxps-]{4})\s+([0-9a-fA-F]{1,16})\s+\S+\s+[0-9]+"
                      r"(?:\s+(.*))?$")


def parse_smaps(text: str) -> List[Region]:
    """/proc/PID/smaps (or /proc/PID/maps) -> regions; smaps adds Rss and Private_Dirty (bytes)."""
    out: List[Region] = []
    cur: Optional[Region] = None
    for line in text.splitlines():
        m = _MAPS_RE.match(line)
        if m:
            start, end, perms, off, path = m.groups()
            start, end, off = int(start, 16), int(end, 16), int(off, 16)
            if not _mapping_ok(start, end, off):
                cur = None      # an impossible mapping: neither it nor its counters are used
                continue
            cur = Region(start, end, perms, off, (path or "").strip() or None)
            out.append(cur)
            continue
        if cur is None:
            continue
        if line.startswith("Rss:"):
            cur.rss = _kib(line)
        elif line.startswith("Private_Dirty:"):
            cur.private_dirty = _kib(line)
    return out


def parse_info_proc_mappings(text: str) -> List[Region]:
    """gdb's ``info proc mappings``: Start Addr, End Addr, Size, Offset, [Perms,] objfile."""
    out: List[Region] = []
    has_perms = "Perms" in text
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or not parts[0].startswith("0x"):
            continue
        try:
            start, end = int(parts[0], 16), int(parts[1], 16)
            off = int(parts[3], 16)
        except ValueError:
            continue
        if not _mapping_ok(start, end, off):
            continue
        rest = parts[4:]
        perms = "rw-p"
        if has_perms and rest and re.fullmatch(r"[rwxps-]{4}", rest[0]):
            perms, rest = rest[0], rest[1:]
        elif not has_perms:
            perms = "???p"
        path = " ".join(rest) or None
        out.append(Region(start, end, perms, off, path))
    return out


def parse_info_auxv(text: str) -> Dict[int, int]:
    """gdb's ``info auxv``: '33   AT_SYSINFO_EHDR      System-supplied DSO's ELF header 0x7ffff7fc1000'."""
    out: Dict[int, int] = {}
    for line in text.splitlines():
        m = re.match(r"^\s*([0-9]{1,20})\s+\S+\s+(.*)$", line)
        if not m:
            continue
        key = int(m.group(1))
        rest = m.group(2)
        q = rest.find(' "')
        if q >= 0 and rest.rstrip().endswith('"'):
            rest = rest[:q]                      # AT_EXECFN/AT_PLATFORM carry the string too
        tok = rest.split()[-1] if rest.split() else ""
        try:
            val = int(tok, 0)
        except ValueError:
            continue
        if 0 <= val < ADDR_TOP and key < ADDR_TOP:
            out[key] = val
    return out


def parse_core_path_from_info_target(text: str) -> Optional[str]:
    """``info target``/``info files``: "Local core dump file:\\n\\t`/tmp/core.1', file type elf64-x86-64." """
    m = re.search(r"Local core dump file:\s*`(.+?)', file type", text)
    return m.group(1) if m else None


def parse_size(text: str) -> int:
    """'4096', '0x1000', '64K', '1.5M', '1G', '2GiB' -> bytes; SizeError otherwise."""
    s = str(text).strip()
    m = re.fullmatch(r"(?i)(0x[0-9a-f]{1,16}|[0-9]{1,20}(?:\.[0-9]{1,20})?)\s*([kmgt]?)(?:i?b)?", s)
    if not m or not s.isascii():
        raise SizeError("not a size: %r (use e.g. 4096, 64K, 1M, 2G)" % text)
    num, unit = m.groups()
    val = Fraction(int(num, 16)) if num.lower().startswith("0x") else Fraction(num)
    mult = 1024 ** ("kmgt".find(unit.lower()) + 1) if unit else 1
    n = int(val * mult)
    if n >= ADDR_TOP:
        raise SizeError("size %r is larger than any address space (2^64 bytes)" % text)
    return n


def human_size(n: Optional[int]) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0
    return str(n)


def signed_size(n: Optional[int]) -> str:
    """A size change: '+3.7 MiB', '-512 B', '0 B'; '-' when unknown."""
    if n is None:
        return "-"
    return ("+" if n > 0 else "-" if n < 0 else "") + human_size(abs(n))
