"""Pure parsers of /proc and gdb text.  No I/O here: callers feed the text."""
from __future__ import annotations

import re
from typing import Dict, List, Optional

from .target import Region

_MAPS_RE = re.compile(r"^([0-9a-fA-F]+)-([0-9a-fA-F]+)\s+([rwxps-]{4})\s+([0-9a-fA-F]+)\s+\S+\s+\d+\s*(.*)$")


def parse_smaps(text: str) -> List[Region]:
    """/proc/PID/smaps (or /proc/PID/maps) -> regions; smaps adds Rss and Private_Dirty (bytes)."""
    out: List[Region] = []
    cur: Optional[Region] = None
    for line in text.splitlines():
        m = _MAPS_RE.match(line)
        if m:
            start, end, perms, off, path = m.groups()
            cur = Region(int(start, 16), int(end, 16), perms, int(off, 16), path.strip() or None)
            out.append(cur)
            continue
        if cur is None:
            continue
        if line.startswith("Rss:"):
            cur.rss = int(line.split()[1]) * 1024
        elif line.startswith("Private_Dirty:"):
            cur.private_dirty = int(line.split()[1]) * 1024
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
        m = re.match(r"^\s*(\d+)\s+\S+\s+(.*)$", line)
        if not m:
            continue
        key = int(m.group(1))
        rest = m.group(2)
        rest = re.sub(r'\s+".*"\s*$', "", rest)   # AT_EXECFN/AT_PLATFORM carry the string too
        tok = rest.split()[-1] if rest.split() else ""
        try:
            out[key] = int(tok, 0)
        except ValueError:
            continue
    return out


def parse_core_path_from_info_target(text: str) -> Optional[str]:
    """``info target``/``info files``: "Local core dump file:\\n\\t`/tmp/core.1', file type elf64-x86-64." """
    m = re.search(r"Local core dump file:\s*`(.+?)', file type", text)
    return m.group(1) if m else None


def parse_size(text: str) -> int:
    """'4096', '0x1000', '64K', '1.5M', '1G', '2GiB' -> bytes."""
    s = str(text).strip()
    m = re.fullmatch(r"(?i)(0x[0-9a-f]+|\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", s)
    if not m:
        raise ValueError("not a size: %r (use e.g. 4096, 64K, 1M, 2G)" % text)
    num, unit = m.groups()
    val = int(num, 16) if num.lower().startswith("0x") else float(num)
    return int(val * (1024 ** "kmgt".find(unit.lower()) * 1024 if unit else 1))


def human_size(n: Optional[int]) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0
    return str(n)
