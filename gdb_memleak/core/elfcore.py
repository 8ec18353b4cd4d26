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

from .errors import MemoryReadError, TargetError
from .modules import parse_elf_header
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
ET_CORE, PT_LOAD, PT_NOTE = 4, 1, 4


@dataclass
class Segment:
    vaddr: int
    memsz: int
    offset: int
    filesz: int
    flags: int


@dataclass
class FileMapping:
    start: int
    end: int
    offset: int      # bytes into the file
    path: str


class CoreFile:
    """Layout of one core file.  Raises TargetError on anything that is not a usable core."""

    def __init__(self, path: str, allow_truncated: bool = False):
        self.path = path
        try:
            self._fh = open(path, "rb")
        except OSError as e:
            raise TargetError("cannot open core file %s: %s" % (path, e.strerror or e))
        size = os.fstat(self._fh.fileno()).st_size
        if size == 0:
            raise TargetError("core file %s is empty" % path)
        self.file_size = size
        self.map = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ)
        def read(off, n):
            if off + n > size:
                raise struct.error("header past the end of the file")
            return self.map[off:off + n]
        if self.map[:4] != b"\x7fELF":
            raise TargetError("%s is not a readable ELF core: no ELF header" % path)
        try:
            hdr = parse_elf_header(read, 0, max_phdrs=1 << 22, machine=True)
        except struct.error as e:
            raise TargetError("%s is truncated or corrupt: %s" % (path, e))
        if hdr is None:
            raise TargetError("%s is not a readable ELF core: no ELF header" % path)
        cls, e, e_type, phdrs, machine = hdr
        if e_type != ET_CORE:
            raise TargetError("%s is not a core file (ELF type %d)" % (path, e_type))
        if machine not in ARCHS:
            raise TargetError("%s: unsupported architecture (e_machine %d)" % (path, machine))
        self.arch, self._pid_off, self._reg_off, self._reg_names, self._sp, self._pc = ARCHS[machine]
        self.pointer_size = cls
        self.byteorder = "little" if e == "<" else "big"
        self.segments: List[Segment] = []
        notes: List[Tuple[int, int]] = []
        for p_type, p_offset, p_vaddr, p_filesz, p_memsz, p_flags in phdrs:
            if p_type == PT_LOAD:
                self.segments.append(Segment(p_vaddr, p_memsz, p_offset, p_filesz, p_flags))
            elif p_type == PT_NOTE:
                notes.append((p_offset, p_filesz))
        self.segments.sort(key=lambda s: s.vaddr)
        self._starts = [s.vaddr for s in self.segments]
        needed = max([s.offset + s.filesz for s in self.segments] + [o + n for o, n in notes] + [0])
        self.truncated_at = size if needed > size else None
        if self.truncated_at is not None and not allow_truncated:
            missing = [s for s in self.segments if s.offset + s.filesz > size]
            raise TargetError("core file %s is truncated: %d of %d bytes present, %d segment(s) from 0x%x "
                              "missing (re-create it, or pass --allow-truncated to analyse what is there)"
                              % (path, size, needed, len(missing), missing[0].vaddr if missing else 0))
        self.threads_raw: List[Tuple[int, Dict[str, int]]] = []
        self.auxv: Dict[int, int] = {}
        self.files: List[FileMapping] = []
        self.page_size_nt_file = None
        self.pid: Optional[int] = None
        self.fname: Optional[str] = None
        for off, n in notes:
            self._parse_notes(off, min(n, max(0, size - off)))

    def file_offset(self, addr: int, n: int) -> Optional[int]:
        """Offset in the core file of [addr, addr+n) when one segment holds all of it in the file."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i < 0:
            return None
        s = self.segments[i]
        if addr + n > s.vaddr + min(s.filesz, s.memsz):
            return None
        off = s.offset + (addr - s.vaddr)
        return off if off + n <= self.file_size else None

    def pread_into(self, addr: int, buf) -> bool:
        """Copy [addr, addr+len(buf)) into ``buf`` straight from the file (GIL released);
        False when that range is not one piece of the core's file data."""
        off = self.file_offset(addr, len(buf))
        if off is None:
            return False
        return os.preadv(self._fh.fileno(), [buf], off) == len(buf)

    # -- notes -------------------------------------------------------------
    def _parse_notes(self, off: int, length: int):
        buf = self.map[off:off + length]
        e = "<" if self.byteorder == "little" else ">"
        pos = 0
        while pos + 12 <= len(buf):
            namesz, descsz, ntype = struct.unpack_from(e + "III", buf, pos)
            pos += 12
            name = bytes(buf[pos:pos + namesz]).rstrip(b"\0")
            pos += (namesz + 3) & ~3
            desc = bytes(buf[pos:pos + descsz])
            pos += (descsz + 3) & ~3
            if len(desc) < descsz:
                break
            if name != b"CORE":
                continue
            try:
                if ntype == NT_PRSTATUS:
                    self._parse_prstatus(desc, e)
                elif ntype == NT_AUXV:
                    self._parse_auxv(desc, e)
                elif ntype == NT_FILE:
                    self._parse_nt_file(desc, e)
                elif ntype == NT_PRPSINFO:
                    self._parse_prpsinfo(desc, e)
            except struct.error:
                continue  # a malformed note loses only itself

    def _word(self):
        return "Q" if self.pointer_size == 8 else "I"

    def _parse_prstatus(self, desc: bytes, e: str):
        (pid,) = struct.unpack_from(e + "i", desc, self._pid_off)
        n = len(self._reg_names)
        vals = struct.unpack_from(e + self._word() * n, desc, self._reg_off)
        self.threads_raw.append((pid, dict(zip(self._reg_names, vals))))

    def _parse_auxv(self, desc: bytes, e: str):
        w = self._word()
        step = 2 * self.pointer_size
        for i in range(0, len(desc) - step + 1, step):
            k, v = struct.unpack_from(e + w + w, desc, i)
            if k == 0:
                break
            self.auxv[k] = v

    def _parse_nt_file(self, desc: bytes, e: str):
        w = self._word()
        ps = self.pointer_size
        count, page = struct.unpack_from(e + w + w, desc, 0)
        self.page_size_nt_file = page   # 1 in gcore cores, 4096 in kernel cores
        names = desc[2 * ps + 3 * ps * count:].split(b"\0")
        for i in range(count):
            s, t, o = struct.unpack_from(e + w * 3, desc, 2 * ps + 3 * ps * i)
            path = names[i].decode("utf-8", "surrogateescape") if i < len(names) else "?"
            self.files.append(FileMapping(s, t, o * page, path))

    def _parse_prpsinfo(self, desc: bytes, e: str):
        if self.pointer_size == 8:
            pid_off, fname_off = 24, 40
        else:
            pid_off, fname_off = 12, 28
        (self.pid,) = struct.unpack_from(e + "i", desc, pid_off)
        self.fname = desc[fname_off:fname_off + 16].split(b"\0")[0].decode("utf-8", "replace")

    # -- layout ------------------------------------------------------------
    def regions(self) -> List[Region]:
        """Every mapping: PT_LOAD segments named from NT_FILE, plus NT_FILE mappings not dumped."""
        files = sorted(self.files, key=lambda f: f.start)
        fstarts = [f.start for f in files]
        out: List[Region] = []
        for s in self.segments:
            end = s.vaddr + s.memsz
            perms = ("r" if s.flags & 4 else "-") + ("w" if s.flags & 2 else "-") + ("x" if s.flags & 1 else "-")
            path, off = None, 0
            i = bisect.bisect_right(fstarts, s.vaddr) - 1
            if i >= 0 and s.vaddr < files[i].end:
                f = files[i]
                path, off = f.path, f.offset + (s.vaddr - f.start)
            share = "s" if path and (path.startswith("/SYSV") or path.startswith("/dev/shm/")) else "p"
            data_end = s.vaddr + min(s.filesz, s.memsz)
            if self.truncated_at is not None and s.offset + s.filesz > self.truncated_at:
                data_end = s.vaddr + max(0, self.truncated_at - s.offset)
            out.append(Region(s.vaddr, end, perms + share, off, path, data_end=data_end))
        # File mappings the core holds no segment for (gcore skips r-x text): known range and path,
        # unknown permissions, bytes only from the file itself.
        for f in files:
            pieces = [(f.start, f.end)]
            for r in out:
                if r.end <= f.start or r.start >= f.end:
                    continue
                nxt = []
                for a, b in pieces:
                    if r.start > a:
                        nxt.append((a, min(b, r.start)))
                    if r.end < b:
                        nxt.append((max(a, r.end), b))
                pieces = nxt
            for a, b in pieces:
                if b > a:
                    out.append(Region(a, b, "???p", f.offset + (a - f.start), f.path, data_end=a))
        out.sort(key=lambda r: r.start)
        return out

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
        self.core_path = os.path.abspath(core_path)
        self.pointer_size = self.core.pointer_size
        self.byteorder = self.core.byteorder
        self.arch = self.core.arch
        self.pid = self.core.pid
        self.exe_arg = exe
        self.sysroot = sysroot
        self.executable = exe or self.core.main_executable_path()
        self._segs = self.core.segments
        self._starts = self.core._starts
        self._file_cache: Dict[str, Optional[mmap.mmap]] = {}

    def local_path(self, path: str) -> Optional[str]:
        """Where the file a core mapping names lives on this machine (``--exe``/``--sysroot``)."""
        if self.exe_arg and path == self.core.main_executable_path():
            return self.exe_arg
        if self.sysroot:   # like gdb's sysroot: look there only, never at this host's copy
            cand = os.path.join(self.sysroot, path.lstrip("/"))
            return cand if os.path.exists(cand) else None
        return path if os.path.exists(path) else None

    def _file_map(self, path: str):
        if path not in self._file_cache:
            local = self.local_path(path)
            m = None
            if local:
                try:
                    with open(local, "rb") as fh:
                        m = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
                except (OSError, ValueError):
                    m = None
            self._file_cache[path] = m
        return self._file_cache[path]

    def read(self, addr: int, n: int):
        off = self.core.file_offset(addr, n)
        if off is not None:
            if n >= BIG_READ:
                # pread into a fresh buffer: mmapped pages would stay in our RSS
                return memoryview(os.pread(self.core._fh.fileno(), n, off))
            return memoryview(self.core.map)[off:off + n]
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and addr < self._segs[i].vaddr + min(self._segs[i].filesz, self._segs[i].memsz):
            # spans segments (adjacent PT_LOADs) or runs off the data: assemble piecewise
            return self._read_pieces(addr, n)
        return self._read_from_file(addr, n)

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
            avail_end = s.vaddr + min(s.filesz, s.memsz)
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
        for f in self.core.files:
            if f.start <= addr and addr + n <= f.end:
                m = self._file_map(f.path)
                if m is not None:
                    off = f.offset + (addr - f.start)
                    if off + n <= len(m):
                        return memoryview(m)[off:off + n]
                raise MemoryReadError(addr, n, "not in the core and %s is not available" % f.path)
        raise MemoryReadError(addr, n, "not in the core")

    def _load_regions(self):
        return self.core.regions()

    def _load_threads(self):
        return self.core.threads()

    def _load_auxv(self):
        return dict(self.core.auxv)

    def check_executable(self):
        """Compare the build-id of ``--exe`` with the one the core holds; raise on mismatch."""
        if not self.exe_arg:
            return
        from .modules import file_build_id
        if not os.path.exists(self.exe_arg):
            raise TargetError("executable %s does not exist" % self.exe_arg)
        want = None
        for m in self.modules():
            if m.is_main:
                want = m.build_id
        have = file_build_id(self.exe_arg)
        if want and have and want != have:
            raise TargetError("build-id mismatch: the core's executable %s has build-id %s, but --exe %s has %s"
                              % (self.core.main_executable_path(), want, self.exe_arg, have))
        if not want:
            self.warnings.append("the core holds no build-id for its executable: cannot check --exe")
