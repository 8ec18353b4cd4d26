"""Reading ELF core files (gcore and kernel) over an mmap: headers and notes with struct.

``CoreFile`` parses the layout: PT_LOAD segments, NT_FILE, NT_PRSTATUS (threads
and registers), NT_PRPSINFO, NT_AUXV.  ``CoreTarget`` is the offline Target over
it; inside gdb, GdbTarget uses ``CoreFile`` for the layout of a core too, so the
two agree by construction.
"""
from __future__ import annotations

import bisect
import mmap
import os
import struct
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ..errors import MemoryReadError, TargetError
from .modules import (ET_DYN, ET_EXEC, ET_NAMES, elf_ident, file_build_id, is_regular_file,
                      machine_name, open_regular, parse_elf_header)
from .target import AT_PHDR, Region, Target, ThreadInfo

NT_PRSTATUS, NT_PRPSINFO, NT_AUXV, NT_FILE = 1, 3, 6, 0x46494C45
BIG_READ = 256 << 10

# (e_machine, class) -> (arch, prstatus pid offset, pr_reg offset, register names)
_X86_64_REGS = ("r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs "
                "eflags rsp ss fs_base gs_base ds es fs gs").split()
_I386_REGS = "ebx ecx edx esi edi ebp eax ds es fs gs orig_eax eip cs eflags esp ss".split()
_AARCH64_REGS = ["x%d" % i for i in range(31)] + ["sp", "pc", "pstate"]
_ARM_REGS = ["r%d" % i for i in range(13)] + ["sp", "lr", "pc", "cpsr", "orig_r0"]
ARCHS = {   # e_machine: EM_X86_64, EM_386, EM_AARCH64, EM_ARM
    62: ("x86-64", 32, 112, _X86_64_REGS, "rsp", "rip"),
    3: ("i386", 24, 72, _I386_REGS, "esp", "eip"),
    183: ("aarch64", 32, 112, _AARCH64_REGS, "sp", "pc"),
    40: ("arm", 24, 72, _ARM_REGS, "sp", "pc"),
}
ARCH_CLASS = {62: 8, 3: 4, 183: 8, 40: 4}   # the pointer size each supported machine's cores have
ET_CORE, PT_LOAD, PT_NOTE = 4, 1, 4
PN_XNUM = 0xFFFF
# 64-bit user space ends below 2^56 (x86-64 with 5-level paging; 2^47 with 4 levels, 2^52 on
# aarch64); only the vsyscall page (0xffffffffff600000) lives in the top half.
USER_TOP_64, HIGH_HALF_64 = 1 << 56, 0xFF00000000000000
HINT = "re-create the core, or pass --allow-truncated to analyse what is intact"
NOTE_LOSS = "notes missing (threads, registers, mapped files)"


@dataclass
class Segment:
    vaddr: int
    memsz: int
    offset: int
    filesz: int
    flags: int
    index: int = -1     # its program header's number
    avail: int = -1     # bytes of its file data the file really holds (< filesz when cut)

    def __post_init__(self):
        if self.avail < 0:
            self.avail = min(self.filesz, self.memsz)

    @property
    def end(self) -> int:
        return self.vaddr + self.memsz


@dataclass
class FileMapping:
    start: int
    end: int
    offset: int      # bytes into the file
    path: str


def _hsize(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if n < 1024 or unit == "EiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0
    return str(n)


class CoreFile:
    """Layout of one core file.  Every header, program header and note field is checked against
    the file's size and the address space before use.  What cannot be used at all (not a
    regular file, not an ELF core, no readable program headers) raises TargetError.  Damage
    that leaves part of the core usable (a truncated file, a corrupt segment or note) raises
    TargetError too unless ``allow_truncated``; then the intact part is used and ``problems``
    lists, one line each, what was skipped and what that costs.  ``notes_missing`` is set
    when the notes (threads, registers, mapped files) are cut off or absent."""

    def __init__(self, path: str, allow_truncated: bool = False):
        self.path = path
        self.problems: List[str] = []
        self.notes_missing = False
        self.truncated_at: Optional[int] = None   # the file size, when the file is cut short
        self.threads_raw: List[Tuple[int, Dict[str, int]]] = []
        self.auxv: Dict[int, int] = {}
        self.files: List[FileMapping] = []
        self.page_size_nt_file = None
        self.no_file_note = False       # an intact core without NT_FILE (qemu-user's)
        self.files_from_link_map = False
        self.pid: Optional[int] = None
        self.fname: Optional[str] = None
        self.segments: List[Segment] = []
        self.map = None
        self._fh, size = open_regular(path, "core file")
        try:
            self._open(path, size, allow_truncated)
        except BaseException:
            self.close()
            raise

    def _open(self, path: str, size: int, allow: bool):
        what = "core file %s" % path
        if size == 0:
            raise TargetError("%s is empty (0 bytes)" % what)
        self.file_size = size
        try:
            self.map = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError, OverflowError) as e:
            raise TargetError("cannot map %s: %s" % (what, getattr(e, "strerror", None) or e))
        cls, e, e_type, machine = elf_ident(self.map[:64], size, what)
        if e_type != ET_CORE:
            hint = "; give it as --exe and the core as --core" if e_type in (ET_EXEC, ET_DYN) else ""
            raise TargetError("%s is not a core file: it is %s%s" % (
                path, ET_NAMES.get(e_type, "an ELF file of type %d" % e_type), hint))
        if machine not in ARCHS:
            raise TargetError("%s: unsupported architecture %s (supported: x86-64, i386, aarch64, arm)"
                              % (what, machine_name(machine)))
        if ARCH_CLASS[machine] != cls:
            raise TargetError("%s: a %d-bit ELF class does not fit its machine %s (%d-bit): corrupt ELF header "
                              "or an unsupported ABI such as x32" % (what, 8 * cls, ARCHS[machine][0],
                                                                     8 * ARCH_CLASS[machine]))
        self.machine = machine
        self.arch, self._pid_off, self._reg_off, self._reg_names, self._sp, self._pc = ARCHS[machine]
        self.pointer_size = cls
        self.byteorder = "little" if e == "<" else "big"
        self._e = e
        self.addr_top = 1 << (8 * cls)
        phdrs = self._read_phdrs(what, size, cls, e)
        notes = self._check_segments(phdrs, size)
        notes = self._check_file_overlap(notes)
        self._check_file_data(what, size, notes, allow)
        for idx, off, n in notes:
            self._parse_notes(idx, off, min(n, max(0, size - off)))
        self._check_notes_present(notes)
        if self.notes_missing:
            self.problems.append(self._note_cost())
        self.segments.sort(key=lambda s: s.vaddr)
        self._starts = [s.vaddr for s in self.segments]
        if self.problems and not allow:
            more = " (and %d more %s)" % (len(self.problems) - 1, "problem" if len(self.problems) == 2 else "problems") \
                if len(self.problems) > 1 else ""
            raise TargetError("corrupt core %s: %s%s; %s" % (path, self.problems[0], more, HINT))

    # -- headers -----------------------------------------------------------
    def _read_phdrs(self, what, size, cls, e):
        m = self.map
        if cls == 8:
            e_phoff, e_shoff = struct.unpack_from(e + "QQ", m, 32)
            e_phentsize, e_phnum, e_shentsize = struct.unpack_from(e + "HHH", m, 54)
        else:
            e_phoff, e_shoff = struct.unpack_from(e + "II", m, 28)
            e_phentsize, e_phnum, e_shentsize = struct.unpack_from(e + "HHH", m, 42)
        ent = 56 if cls == 8 else 32
        if e_phnum == PN_XNUM:
            # more than 65534 segments: the count is section header 0's sh_info
            shent = 64 if cls == 8 else 40
            if e_shoff == 0 or e_shoff + shent > size:
                raise TargetError("corrupt core %s: e_phnum is 0xffff (PN_XNUM: the real count is in section "
                                  "header 0) but section header 0 at e_shoff 0x%x %s" % (
                                      self.path, e_shoff, "is absent" if e_shoff == 0 else
                                      "lies past the end of the file (%d bytes)" % size))
            e_phnum, = struct.unpack_from(e + "I", m, e_shoff + (44 if cls == 8 else 28))
        if e_phnum == 0:
            raise TargetError("corrupt core %s: it has no program headers (e_phnum 0): no memory and no notes "
                              "to analyse" % self.path)
        if e_phentsize < ent:
            raise TargetError("corrupt core %s: program header entries of %d bytes (e_phentsize), a %d-bit "
                              "one is %d" % (self.path, e_phentsize, 8 * cls, ent))
        ehsize = 64 if cls == 8 else 52
        need = e_phoff + e_phentsize * e_phnum
        if e_phoff < ehsize:
            raise TargetError("corrupt core %s: its program headers (e_phoff 0x%x) overlap its ELF header"
                              % (self.path, e_phoff))
        if need > size:
            if e_phoff <= size:
                raise TargetError("truncated core: %s has %d bytes, its %d program headers need %d (ELF header "
                                  "complete, program headers cut: no memory, %s); re-create the core" % (
                                      self.path, size, e_phnum, need, NOTE_LOSS))
            raise TargetError("corrupt core %s: its %d program headers at e_phoff 0x%x lie past the end of the "
                              "file (%d bytes)" % (self.path, e_phnum, e_phoff, size))
        self._hdr_ranges = [(0, ehsize, "the ELF header"), (e_phoff, need, "the program headers")]
        out = []
        for i in range(e_phnum):
            o = e_phoff + i * e_phentsize
            if cls == 8:
                p_type, p_flags, p_offset, p_vaddr, _paddr, p_filesz, p_memsz = struct.unpack_from(e + "IIQQQQQ", m, o)
            else:
                p_type, p_offset, p_vaddr, _paddr, p_filesz, p_memsz, p_flags = struct.unpack_from(e + "IIIIIII", m, o)
            out.append((i, p_type, p_offset, p_vaddr, p_filesz, p_memsz, p_flags))
        return out

    def _bad_range(self, start: int, length: int) -> Optional[str]:
        """Why [start, start+length) cannot be a range of this process's address space, or None."""
        end = start + length
        if end > self.addr_top:
            return "runs past the end of the %d-bit address space" % (8 * self.pointer_size)
        if self.pointer_size == 8 and start < HIGH_HALF_64 and end > USER_TOP_64:
            return "reaches past the end of user space (0x%x)" % USER_TOP_64
        return None

    def _check_segments(self, phdrs, size):
        """Keep the PT_LOADs whose fields make sense (each rejected one is a problem); return the
        PT_NOTEs as (index, offset, size)."""
        notes = []
        cands = []
        for i, p_type, p_offset, p_vaddr, p_filesz, p_memsz, p_flags in phdrs:
            if p_type == PT_NOTE:
                notes.append((i, p_offset, p_filesz))
                continue
            if p_type != PT_LOAD or p_memsz == 0:
                continue
            where = "PT_LOAD #%d at 0x%x" % (i, p_vaddr)
            bad = None
            if p_filesz > p_memsz:
                bad = "p_filesz 0x%x exceeds p_memsz 0x%x" % (p_filesz, p_memsz)
            else:
                why = self._bad_range(p_vaddr, p_memsz)
                if why:
                    bad = "p_memsz 0x%x (%s) %s" % (p_memsz, _hsize(p_memsz), why)
            if bad:
                self.problems.append("%s: %s: segment skipped (its %s of file data are not used)"
                                     % (where, bad, _hsize(p_filesz)))
                continue
            cands.append(Segment(p_vaddr, p_memsz, p_offset, p_filesz, p_flags, i))
        # segments of one process never overlap: of two that do, the bigger one is the corrupt one
        cands.sort(key=lambda s: s.vaddr)
        kept: List[Segment] = []
        for s in cands:
            if kept and kept[-1].end > s.vaddr:
                prev = kept[-1]
                drop, keep = (prev, s) if prev.memsz >= s.memsz else (s, prev)
                self.problems.append("PT_LOAD #%d (0x%x-0x%x, %s) overlaps PT_LOAD #%d (0x%x-0x%x): corrupt "
                                     "p_vaddr or p_memsz, #%d skipped" % (
                                         drop.index, drop.vaddr, drop.end, _hsize(drop.memsz), keep.index,
                                         keep.vaddr, keep.end, drop.index))
                if drop is prev:
                    kept[-1] = s
                continue
            kept.append(s)
        self.segments = kept
        return notes

    def _check_file_overlap(self, notes):
        """Two pieces of file data never share bytes: a segment or note that overlaps another one
        (or the headers) has a corrupt p_offset or p_filesz.  Both are skipped: which of the two
        is wrong cannot be told.  Returns the notes still usable."""
        items = [(a, b, what, None) for a, b, what in self._hdr_ranges]
        items += [(sg.offset, sg.offset + sg.filesz, "PT_LOAD #%d (0x%x)" % (sg.index, sg.vaddr), sg)
                  for sg in self.segments if sg.filesz]
        items += [(o, o + n, "PT_NOTE #%d" % i, (i, o, n)) for i, o, n in notes if n]
        items.sort(key=lambda it: (it[0], it[1]))
        bad = []
        prev = None
        for it in items:
            if prev is not None and it[0] < prev[1]:
                self.problems.append("%s's file data (0x%x-0x%x) overlaps %s's (0x%x-0x%x): corrupt p_offset or "
                                     "p_filesz, %s skipped" % (
                                         it[2], it[0], it[1], prev[2], prev[0], prev[1],
                                         "both" if prev[3] is not None else "it"))
                bad += [x for x in (it[3], prev[3]) if x is not None]
            if prev is None or it[1] > prev[1]:
                prev = it
        if not bad:
            return notes
        self.segments = [sg for sg in self.segments if not any(sg is b for b in bad)]
        kept = [n for n in notes if n not in bad]
        if len(kept) < len(notes):
            self.notes_missing = True
            self.problems.append(NOTE_LOSS)
        return kept

    def _check_file_data(self, what, size, notes, allow):
        """Segments and notes whose file bytes run past the end of the file: a truncated core
        (the file was cut: what lies after the cut is missing) or a corrupt p_offset."""
        items = [("seg", s, s.offset, s.filesz) for s in self.segments if s.filesz] + \
                [("note", n, n[1], n[2]) for n in notes if n[2]]
        missing = [it for it in items if it[2] + it[3] > size]
        for kind, obj, off, n in missing:
            if kind == "seg":
                obj.avail = max(0, min(obj.filesz, size - off))
        if not missing:
            return
        first = min(it[2] for it in missing)
        need = max(it[2] + it[3] for it in items)
        segs = [it[1] for it in missing if it[0] == "seg"]
        notes_cut = [it[1] for it in missing if it[0] == "note"]
        lost = sum(s.filesz - s.avail for s in segs)
        parts = []
        if notes_cut:
            self.notes_missing = True
            have = sum(max(0, size - n[1]) for n in notes_cut)
            parts.append("%s%s" % (NOTE_LOSS, "" if not have else ": %d of %d note bytes present"
                                   % (have, sum(n[2] for n in notes_cut))))
        if segs:
            cut = [s for s in segs if s.avail]
            parts.append("%d of %d segments missing or cut (%s of memory not in the file, from 0x%x%s)" % (
                len(segs), len(self.segments), _hsize(lost), min(s.vaddr + s.avail for s in segs),
                ("; 0x%x-0x%x only partly present" % (cut[0].vaddr, cut[0].end)) if cut else ""))
        if first <= size:
            self.truncated_at = size
            msg = "truncated core: %s has %d bytes, its headers need %d: %s" % (
                self.path, size, need, "; ".join(parts))
        else:
            self.truncated_at = size
            msg = "corrupt core %s: %s at file offset 0x%x past the end of the file (%d bytes): %s" % (
                self.path, "a segment's data lies" if segs else "its notes lie", first, size, "; ".join(parts))
        if not allow:
            raise TargetError("%s; %s" % (msg, HINT))
        self.problems.insert(0, msg.replace("corrupt core %s: " % self.path, "", 1))

    # -- file data ---------------------------------------------------------
    def segment_at(self, addr: int) -> Optional[Segment]:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and addr < self.segments[i].end:
            return self.segments[i]
        return None

    def file_offset(self, addr: int, n: int) -> Optional[int]:
        """Offset in the core file of [addr, addr+n) when one segment holds all of it in the file."""
        if addr < 0 or n < 0:
            return None
        i = bisect.bisect_right(self._starts, addr) - 1
        if i < 0:
            return None
        s = self.segments[i]
        if addr + n > s.vaddr + s.avail:
            return None
        off = s.offset + (addr - s.vaddr)
        return off if off + n <= self.file_size else None

    def pread_into(self, addr: int, buf) -> bool:
        """Copy [addr, addr+len(buf)) into ``buf`` straight from the file (GIL released);
        False when that range is not one piece of the core's file data."""
        off = self.file_offset(addr, len(buf))
        if off is None:
            return False
        try:
            return os.preadv(self._fh.fileno(), [buf], off) == len(buf)
        except (OSError, OverflowError, ValueError):
            return False

    # -- notes -------------------------------------------------------------
    def _parse_notes(self, idx: int, off: int, length: int):
        buf = self.map[off:off + length]
        e = self._e
        pos = 0
        k = 0
        while pos < len(buf):
            if pos + 12 > len(buf):
                if any(buf[pos:]) and not self.notes_missing:
                    self.problems.append("PT_NOTE #%d: %d stray bytes after its last note (a note header is 12): "
                                         "ignored" % (idx, len(buf) - pos))
                break
            namesz, descsz, ntype = struct.unpack_from(e + "III", buf, pos)
            name_at = pos + 12
            desc_at = name_at + ((namesz + 3) & ~3)
            nxt = desc_at + ((descsz + 3) & ~3)
            if desc_at + descsz > len(buf):
                if not self.notes_missing:   # a cut file already said so
                    self.problems.append(
                        "PT_NOTE #%d: note %d (type 0x%x) claims %d name and %d data bytes but only %d are left in "
                        "its segment: corrupt note sizes, it and the notes after it are ignored%s"
                        % (idx, k, ntype, namesz, descsz, len(buf) - name_at, self._note_loss_after(buf, pos)))
                    self.notes_missing = True
                break
            name = bytes(buf[name_at:name_at + namesz]).rstrip(b"\0")
            desc = bytes(buf[desc_at:desc_at + descsz])
            pos = nxt
            k += 1
            if name != b"CORE":
                continue
            if ntype == NT_PRSTATUS:
                self._parse_prstatus(desc, e)
            elif ntype == NT_AUXV:
                self._parse_auxv(desc, e)
            elif ntype == NT_FILE:
                self._parse_nt_file(desc, e)
            elif ntype == NT_PRPSINFO:
                self._parse_prpsinfo(desc, e)

    def _note_cost(self) -> str:
        """What the missing notes cost, from what was found before they ran out."""
        out = []
        n = len(self.threads_raw)
        if n:
            out.append("only %d thread%s found, others may be missing ('leaks' lacks their register and stack "
                       "roots, so it may overcount)" % (n, "" if n == 1 else "s"))
        else:
            out.append("no threads or registers ('threads' lists none; 'leaks' lacks register and stack roots, "
                       "so it overcounts)")
        if not self.files:
            out.append("no file names (modules, build-ids and symbols are unknown)")
        if not self.auxv:
            out.append("no auxv (the executable is guessed)")
        return "with notes missing: " + "; ".join(out)

    def _note_loss_after(self, buf, pos):
        lost = []
        if not self.threads_raw:
            lost.append("threads and registers")
        if not self.files:
            lost.append("mapped files")
        return " (%s missing)" % " and ".join(lost) if lost else ""

    def _check_notes_present(self, notes):
        if self.notes_missing:
            return
        if not notes:
            self.problems.append("the core has no PT_NOTE segment: %s" % NOTE_LOSS)
            self.notes_missing = True
            return
        if not self.threads_raw:
            self.problems.append("no usable NT_PRSTATUS note: threads and registers are missing ('threads' "
                                 "lists none; 'leaks' has no register or stack roots, so it overcounts)")
        if not self.files and self.page_size_nt_file is None:
            # not damage: qemu-user writes none; name_files_from_link_map() can name the mappings
            self.no_file_note = True

    def _word(self):
        return "Q" if self.pointer_size == 8 else "I"

    def _parse_prstatus(self, desc: bytes, e: str):
        n = len(self._reg_names)
        need = self._reg_off + n * self.pointer_size
        if len(desc) < need:
            lwp = ""
            if len(desc) >= self._pid_off + 4:
                lwp = " of LWP %d" % struct.unpack_from(e + "i", desc, self._pid_off)[0]
            self.problems.append("NT_PRSTATUS note%s is %d bytes, its %s registers need %d: a thread and its "
                                 "registers are missing" % (lwp, len(desc), self.arch, need))
            return
        (pid,) = struct.unpack_from(e + "i", desc, self._pid_off)
        vals = struct.unpack_from(e + self._word() * n, desc, self._reg_off)
        self.threads_raw.append((pid, dict(zip(self._reg_names, vals))))

    def _parse_auxv(self, desc: bytes, e: str):
        w = self._word()
        step = 2 * self.pointer_size
        if len(desc) % step:
            self.problems.append("NT_AUXV note is %d bytes, not a multiple of an entry (%d): its last %d bytes "
                                 "are ignored" % (len(desc), step, len(desc) % step))
        for i in range(0, len(desc) - step + 1, step):
            k, v = struct.unpack_from(e + w + w, desc, i)
            if k == 0:
                break
            self.auxv[k] = v

    def _parse_nt_file(self, desc: bytes, e: str):
        """NT_FILE: count, page size, count × (start, end, file offset in pages), count NUL-ended
        names.  A count or name list that does not fit the note drops the whole note (names
        would shift onto the wrong mappings); an impossible entry drops only itself."""
        w = self._word()
        ps = self.pointer_size
        lost = "mapped files are missing (mappings have no paths; modules, build-ids and symbols are unknown)"
        if self.page_size_nt_file is not None:
            self.problems.append("a second NT_FILE note: ignored")
            return
        if len(desc) < 2 * ps:
            self.page_size_nt_file = 0
            self.problems.append("NT_FILE note is %d bytes, its header needs %d: %s" % (len(desc), 2 * ps, lost))
            return
        count, page = struct.unpack_from(e + w + w, desc, 0)
        self.page_size_nt_file = page   # 1 in gcore cores, 4096 in kernel cores
        table_end = 2 * ps + 3 * ps * count
        if table_end > len(desc):
            self.problems.append("NT_FILE note claims %d mappings, which need %d bytes, but it has %d: corrupt "
                                 "count, %s" % (count, table_end, len(desc), lost))
            return
        if page == 0 or page & (page - 1) or page > 1 << 30:
            self.problems.append("NT_FILE note has a page size of %d (not a power of two up to 1 GiB): corrupt, %s"
                                 % (page, lost))
            return
        blob = desc[table_end:]
        names = blob.split(b"\0")
        if len(names) <= count or any(not nm for nm in names[:count]) or any(blob[len(b"\0".join(names[:count])):]
                                                                            .strip(b"\0")):
            self.problems.append("NT_FILE note: its %d file names are not %d NUL-terminated paths (%d bytes): "
                                 "corrupt names, %s" % (count, count, len(blob), lost))
            return
        bad = []
        for i in range(count):
            s, t, o = struct.unpack_from(e + w * 3, desc, 2 * ps + 3 * ps * i)
            why = "start above end" if s >= t else self._bad_range(s, t - s)
            if why is None and o * page >= 1 << 63:
                why = "file offset past 2^63"
            if why:
                bad.append((i, s, t, why))
                continue
            self.files.append(FileMapping(s, t, o * page, names[i].decode("utf-8", "surrogateescape")))
        self.files.sort(key=lambda f: f.start)
        for a, b in zip(self.files, self.files[1:]):
            if b.start < a.end:
                self.problems.append("NT_FILE note: mappings 0x%x-0x%x (%s) and 0x%x-0x%x (%s) overlap: corrupt "
                                     "entries, %s" % (a.start, a.end, a.path, b.start, b.end, b.path, lost))
                self.files = []
                return
        if bad:
            i, s, t, why = bad[0]
            self.problems.append("NT_FILE note: %d of %d entries are impossible (e.g. #%d 0x%x-0x%x: %s): those "
                                 "mappings have no file name" % (len(bad), count, i, s, t, why))

    def _parse_prpsinfo(self, desc: bytes, e: str):
        if self.pointer_size == 8:
            pid_off, fname_off = 24, 40
        else:
            pid_off, fname_off = 12, 28
        if len(desc) < fname_off + 16:
            self.problems.append("NT_PRPSINFO note is %d bytes, it needs %d: process id and name unknown"
                                 % (len(desc), fname_off + 16))
            return
        (self.pid,) = struct.unpack_from(e + "i", desc, pid_off)
        self.fname = desc[fname_off:fname_off + 16].split(b"\0")[0].decode("utf-8", "replace")

    # -- layout ------------------------------------------------------------
    def regions(self) -> List[Region]:
        """Every mapping: PT_LOAD segments named from NT_FILE, plus NT_FILE mappings not dumped."""
        files = sorted(self.files, key=lambda f: f.start)
        fstarts = [f.start for f in files]
        out: List[Region] = []
        for s in self.segments:
            perms = ("r" if s.flags & 4 else "-") + ("w" if s.flags & 2 else "-") + ("x" if s.flags & 1 else "-")
            path, off = None, 0
            i = bisect.bisect_right(fstarts, s.vaddr) - 1
            if i >= 0 and s.vaddr < files[i].end:
                f = files[i]
                path, off = f.path, f.offset + (s.vaddr - f.start)
            share = "s" if path and (path.startswith("/SYSV") or path.startswith("/dev/shm/")) else "p"
            out.append(Region(s.vaddr, s.end, perms + share, off, path, data_end=s.vaddr + s.avail))
        # File mappings the core holds no segment for (gcore skips r-x text): known range and path,
        # unknown permissions, bytes only from the file itself.  Segments are sorted and disjoint.
        segs = self.segments
        extra: List[Region] = []
        for f in files:
            a = f.start
            j = max(0, bisect.bisect_right(self._starts, f.start) - 1)
            while j < len(segs) and segs[j].vaddr < f.end:
                sg = segs[j]
                if sg.end > a:
                    if sg.vaddr > a:
                        extra.append(Region(a, sg.vaddr, "???p", f.offset + (a - f.start), f.path, data_end=a))
                    a = max(a, sg.end)
                j += 1
            if a < f.end:
                extra.append(Region(a, f.end, "???p", f.offset + (a - f.start), f.path, data_end=a))
        out += extra
        out.sort(key=lambda r: r.start)
        return out

    def name_files_from_link_map(self, read, exe: str, exe_name: str, locate) -> List[str]:
        """A core without NT_FILE (qemu-user's): name its file mappings from the executable ``exe``
        (a local file, called ``exe_name``) and the dynamic linker's link_map (core/memory/linkmap.py);
        returns the warnings.  TargetError when ``exe`` is not this core's executable."""
        from .linkmap import files_from_link_map
        found, warnings = files_from_link_map(read, self.auxv, self.pointer_size, self.byteorder, exe, exe_name,
                                              locate)
        self.files = [FileMapping(a, b, off, path) for a, b, off, path in found]
        self.files_from_link_map = bool(self.files)
        return warnings

    def threads(self) -> List[ThreadInfo]:
        return [ThreadInfo(num=i + 1, lwp=pid, sp=regs.get(self._sp, 0), pc=regs.get(self._pc, 0), regs=regs)
                for i, (pid, regs) in enumerate(self.threads_raw)]

    def main_executable_path(self) -> Optional[str]:
        phdr = self.auxv.get(AT_PHDR)
        if phdr is not None:
            for f in self.files:
                if f.start <= phdr < f.end:
                    return f.path
        return self.files[0].path if self.files else None

    def close(self):
        try:
            if self.map is not None:
                self.map.close()
        finally:
            self._fh.close()


class CoreTarget(Target):
    """Offline target: bytes straight from the mmapped core; file-backed gaps from the modules' files."""

    kind = "offline"

    def __init__(self, core_path: str, exe: Optional[str] = None, sysroot: Optional[str] = None,
                 allow_truncated: bool = False):
        super().__init__()
        self.core = CoreFile(core_path, allow_truncated=allow_truncated)
        self.warnings.extend(self.core.problems)
        self.core_path = os.path.abspath(core_path)
        self.pointer_size = self.core.pointer_size
        self.byteorder = self.core.byteorder
        self.arch = self.core.arch
        self.pid = self.core.pid
        self.exe_arg = exe
        self.sysroot = sysroot
        if sysroot is not None and not os.path.isdir(sysroot):
            self.core.close()
            raise TargetError("--sysroot %s is not a directory" % sysroot)
        self._segs = self.core.segments
        self._starts = self.core._starts
        self._file_cache: Dict[str, Optional[mmap.mmap]] = {}
        if self.core.no_file_note:
            try:
                self._name_files()
            except BaseException:
                self.core.close()
                raise
        self.executable = exe or self.core.main_executable_path()
        # qemu-user (no NT_FILE) writes one segment per run of pages with the same protection
        self.merged_anon = self.core.no_file_note

    def _name_files(self):
        """A core without NT_FILE (qemu-user's): its mappings named from --exe and the dynamic
        linker's link_map, the libraries found under --sysroot."""
        if not self.exe_arg:
            self.warnings.append("the core names no mapped files (no NT_FILE note; qemu-user writes none): pass "
                                 "--exe EXE (and --sysroot DIR for its libraries) to name the executable and its "
                                 "shared libraries; without them there are no modules, symbols or classes")
            return
        fh, size = open_regular(self.exe_arg, "--exe")
        try:
            cls, _e, _t, machine = elf_ident(fh.read(64), size, "--exe %s" % self.exe_arg)
        finally:
            fh.close()
        if machine != self.core.machine or cls != self.pointer_size:
            return                    # check_executable says what is wrong with it
        self.warnings.extend(self.core.name_files_from_link_map(
            self.read_core_only, self.exe_arg, os.path.abspath(self.exe_arg), self.local_path))

    def local_path(self, path: str) -> Optional[str]:
        """Where the file a core mapping names lives on this machine (``--exe``/``--sysroot``);
        only regular files: a FIFO or a device under that name is never opened."""
        if self.exe_arg and path == self.core.main_executable_path():
            return self.exe_arg if is_regular_file(self.exe_arg) else None
        if self.sysroot:   # like gdb's sysroot: look there only, never at this host's copy
            cand = os.path.join(self.sysroot, path.lstrip("/"))
            return cand if is_regular_file(cand) else None
        return path if is_regular_file(path) else None

    def type_size(self, name: str, module: Optional[str] = None) -> Optional[int]:
        """sizeof(name) from DWARF, as gdb's lookup_type gives it: from the module's own file or
        a separate debug file (build-id, .gnu_debuglink; ``debug_dirs`` then /usr/lib/debug), read
        with core/dwarf.py; None when ``module`` has no DWARF or no class of that name is defined."""
        sizes = self.__dict__.get("_dwarf_sizes")
        if sizes is None:
            from .dwarf import TargetDwarf
            sizes = self._dwarf_sizes = TargetDwarf(self, getattr(self, "debug_dirs", None) or ())
        return sizes.type_size(name, module)

    def _file_map(self, path: str):
        if path not in self._file_cache:
            local = self.local_path(path)
            m = None
            if local:
                try:
                    fh, size = open_regular(local, "file")
                except TargetError:
                    fh, size = None, 0
                if fh is not None:
                    try:
                        m = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else None
                    except (OSError, ValueError, OverflowError):
                        m = None
                    finally:
                        fh.close()
            self._file_cache[path] = m
        return self._file_cache[path]

    def _check_read(self, addr: int, n: int):
        if addr < 0 or n < 0 or addr + n > self.core.addr_top:
            raise MemoryReadError(max(addr, 0) % self.core.addr_top, max(n, 0),
                                  "not an address range of this %d-bit target" % (8 * self.pointer_size))

    def read(self, addr: int, n: int):
        self._check_read(addr, n)
        off = self.core.file_offset(addr, n)
        if off is not None:
            if n >= BIG_READ:
                # pread into a fresh buffer: mmapped pages would stay in our RSS
                return memoryview(os.pread(self.core._fh.fileno(), n, off))
            return memoryview(self.core.map)[off:off + n]
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and addr < self._segs[i].vaddr + self._segs[i].avail:
            # spans segments (adjacent PT_LOADs) or runs off the data: assemble piecewise
            return self._read_pieces(addr, n)
        return self._read_from_file(addr, n)

    def read_core_only(self, addr: int, n: int):
        """Bytes the core file itself holds (never the executable's or a library's file)."""
        self._check_read(addr, n)
        off = self.core.file_offset(addr, n)
        if off is None:
            raise MemoryReadError(addr, n, "not in the core")
        return memoryview(self.core.map)[off:off + n]

    def fast_read_into(self, addr: int, buf) -> bool:
        return self.core.pread_into(addr, buf)

    def _read_pieces(self, addr, n):
        out = bytearray()
        while len(out) < n:
            i = bisect.bisect_right(self._starts, addr + len(out)) - 1
            a = addr + len(out)
            if i < 0:
                raise MemoryReadError(a, n - len(out), "not in the core")
            s = self._segs[i]
            avail_end = s.vaddr + s.avail
            if a >= avail_end:
                out += bytes(self._read_from_file(a, n - len(out)))
                continue
            take = min(n - len(out), avail_end - a)
            off = s.offset + (a - s.vaddr)
            if off + take > self.core.file_size:
                raise MemoryReadError(a, take, "core file truncated")
            out += self.core.map[off:off + take]
        return memoryview(bytes(out))

    def _read_from_file(self, addr, n):
        seg = self.core.segment_at(addr)
        if seg is not None and seg.avail < seg.filesz and addr >= seg.vaddr + seg.avail:
            raise MemoryReadError(addr, n, "core file truncated")
        for f in self.core.files:
            if f.start <= addr < f.end:
                take = min(n, f.end - addr)
                m = self._file_map(f.path)
                off = f.offset + (addr - f.start)
                if m is None or off + take > len(m):
                    raise MemoryReadError(addr, n, "not in the core and %s is not available" % f.path)
                if take == n:
                    return memoryview(m)[off:off + n]
                # the range runs on into the next mapping (another segment of the file, the core's
                # data, another file): gcore leaves out a file mapping whose private pages are all
                # swapped out, so a root range can start in the file and end in the core
                return memoryview(bytes(m[off:off + take]) + bytes(self.read(addr + take, n - take)))
        raise MemoryReadError(addr, n, "not in the core")

    def _load_regions(self):
        return self.core.regions()

    def _load_threads(self):
        return self.core.threads()

    def _load_auxv(self):
        return dict(self.core.auxv)

    def describe(self) -> dict:
        """The target for JSON outputs; a partial core says there what was skipped."""
        d = super().describe()
        if self.warnings:
            d["warnings"] = list(self.warnings)
        if self.core.problems:
            d["damaged"] = True
        return d

    def _core_main_build_id(self) -> Tuple[Optional[str], Optional[str]]:
        """(path, build-id) of the core's executable, the build-id read from the core's own bytes
        only (never from --exe: that would compare the file with itself)."""
        path = self.core.main_executable_path()
        if path is None:
            return None, None
        maps = [f for f in self.core.files if f.path == path]
        base = min((f.start for f in maps if f.offset == 0), default=min(f.start for f in maps))
        try:
            hdr = parse_elf_header(self.read_core_only, base)
        except (MemoryReadError, struct.error):
            return path, None
        if not hdr:
            return path, None
        _cls, e, _t, phdrs = hdr
        loads = [p for p in phdrs if p[0] == 1]
        bias = base - (min(p[2] for p in loads) & ~0xFFF) if loads else base
        from .modules import _parse_notes_for_build_id
        for p_type, _off, vaddr, filesz, _m, _f in phdrs:
            if p_type == PT_NOTE and filesz < 65536:
                try:
                    bid = _parse_notes_for_build_id(bytes(self.read_core_only(bias + vaddr, filesz)), e)
                except MemoryReadError:
                    continue
                if bid:
                    return path, bid
        return path, None

    def check_executable(self):
        """``--exe`` must be a regular, readable ELF executable or shared object of the core's
        machine and class, with the build-id the core holds; raise TargetError naming the problem."""
        if not self.exe_arg:
            return
        exe = self.exe_arg
        what = "--exe %s" % exe
        fh, size = open_regular(exe, "--exe")
        try:
            head = fh.read(64)
        except OSError as e:
            raise TargetError("cannot read %s: %s" % (what, e.strerror or e))
        finally:
            fh.close()
        cls, _e, e_type, machine = elf_ident(head, size, what)
        if e_type not in (ET_EXEC, ET_DYN):
            hint = "; give it as --core" if e_type == ET_CORE else ""
            raise TargetError("%s is not an executable or shared object: it is %s%s"
                              % (what, ET_NAMES.get(e_type, "an ELF file of type %d" % e_type), hint))
        if machine != self.core.machine or cls != self.pointer_size:
            raise TargetError("%s is a %d-bit %s file, but the core is %d-bit %s: not this core's executable"
                              % (what, 8 * cls, machine_name(machine), 8 * self.pointer_size, self.arch))
        have = file_build_id(exe)
        if self.core.files_from_link_map:
            # placed by the auxv (entry point, program headers) when the mappings were named
            self.warnings.append("--exe %s is checked against the core's auxiliary vector only (entry point, program "
                                 "headers): the core holds none of its ELF header pages, so no build-id" % exe)
            return
        core_exe, want = self._core_main_build_id()
        if want and want != have:
            raise TargetError("build-id mismatch: the core's executable %s has build-id %s, but --exe %s has %s"
                              % (core_exe, want, exe, have or "none"))
        if want:
            return
        if core_exe is None:
            why = ("its notes are missing" if self.core.notes_missing else "it has no usable NT_FILE note")
            self.warnings.append("--exe %s is neither checked nor used: the core does not name its executable "
                                 "(%s)" % (exe, why))
        else:
            self.warnings.append("cannot check --exe %s against the core: the core does not hold the build-id of "
                                 "its executable %s (its ELF header page is not in the core); using --exe unchecked"
                                 % (exe, core_exe))
