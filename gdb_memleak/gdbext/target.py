"""GdbTarget: the Target interface over gdb's selected inferior (live, core, or remote/vgdb)."""
from __future__ import annotations

import os
from typing import List, Optional

import gdb  # noqa: F401  (this package is the gdb adapter)

from ..core.errors import MemoryReadError, TargetError
from ..core.target import Region, Target, ThreadInfo
from ..core.textparse import (parse_core_path_from_info_target, parse_info_auxv,
                              parse_info_proc_mappings, parse_smaps)

# general-purpose registers worth keeping per thread (roots for reachability)
_GP_REGS = {
    "x86-64": "rax rbx rcx rdx rsi rdi rbp rsp r8 r9 r10 r11 r12 r13 r14 r15 rip fs_base".split(),
    "i386": "eax ebx ecx edx esi edi ebp esp eip".split(),
    "aarch64": ["x%d" % i for i in range(31)] + ["sp", "pc"],
    "arm": ["r%d" % i for i in range(13)] + ["sp", "lr", "pc"],
}


def _execute(cmd: str) -> str:
    return gdb.execute(cmd, to_string=True) or ""


def connection_kind(inferior) -> str:
    """'live', 'core' or 'remote' for the inferior (gdb >= 12 has Inferior.connection)."""
    conn = getattr(inferior, "connection", None)
    ctype = getattr(conn, "type", None) if conn is not None else None
    if ctype == "core":
        return "core"
    if ctype in ("remote", "extended-remote"):
        return "remote"
    if ctype == "native":
        return "live"
    info = _execute("info target")
    if "Local core dump file" in info:
        return "core"
    if "Remote" in info or "remote" in info.split("\n", 1)[0]:
        return "remote"
    return "live"


class GdbTarget(Target):
    def __init__(self):
        super().__init__()
        inf = gdb.selected_inferior()
        self.inferior = inf
        if not inf.is_valid() or (inf.pid == 0 and "Local core dump file" not in _execute("info target")):
            raise TargetError("no process or core: 'run', 'attach PID', 'core FILE' or "
                              "'target remote | vgdb --pid=N' first")
        self.kind = connection_kind(inf)
        self.pid = inf.pid or None
        if self.kind == "remote":
            self.pid = self._remote_local_pid() or self.pid
        self.pointer_size = gdb.lookup_type("void").pointer().sizeof
        endian = _execute("show endian")
        self.byteorder = "big" if "big endian" in endian else "little"
        self.arch = self._arch_name()
        self.executable = gdb.current_progspace().filename
        self.core_path = None
        self._corefile = None
        self._mem = None
        if self.kind == "live" and self.pid:
            try:
                self._mem = open("/proc/%d/mem" % self.pid, "rb", buffering=0)
            except OSError:
                self._mem = None
        if self.kind == "core":
            self.core_path = parse_core_path_from_info_target(_execute("info target"))
            if self.core_path:
                from ..core.elfcore import CoreFile
                self._corefile = CoreFile(self.core_path, allow_truncated=True)
                if self._corefile.truncated_at is not None:
                    self.warnings.append("core file %s is truncated: segments past byte %d are missing"
                                         % (self.core_path, self._corefile.truncated_at))
                self.pid = self.pid or self._corefile.pid

    def _remote_local_pid(self) -> Optional[int]:
        """The real PID behind a 'target remote | vgdb --pid=N' pipe, when it runs on this machine."""
        import re
        conn = getattr(self.inferior, "connection", None)
        details = getattr(conn, "details", None) or ""
        m = re.search(r"--pid[= ](\d+)", details)
        if m and os.path.exists("/proc/%s/smaps" % m.group(1)):
            return int(m.group(1))
        return None

    def _arch_name(self) -> str:
        try:
            name = gdb.selected_inferior().architecture().name()
        except (AttributeError, gdb.error):
            try:
                name = gdb.selected_frame().architecture().name()
            except gdb.error:
                name = _execute("show architecture")
        if "x86-64" in name or "x86_64" in name:
            return "x86-64" if self.pointer_size == 8 else "i386"
        if "i386" in name:
            return "i386"
        if "aarch64" in name:
            return "aarch64"
        if "arm" in name:
            return "arm"
        return name.strip()

    def read(self, addr: int, n: int):
        try:
            return memoryview(self.inferior.read_memory(addr, n))
        except gdb.MemoryError:
            raise MemoryReadError(addr, n)
        except (gdb.error, OverflowError, ValueError) as e:
            raise MemoryReadError(addr, n, str(e))

    def fast_read_into(self, addr: int, buf) -> bool:
        """Bulk reads skip gdb when the bytes are one file away: the core's data, or the stopped
        process's /proc/PID/mem (what gdb itself reads for a native inferior).  No gdb call here:
        this runs in worker threads."""
        if self._corefile is not None:
            return self._corefile.pread_into(addr, buf)
        mem = self._mem
        if mem is None:
            return False
        try:
            return os.preadv(mem.fileno(), [buf], addr) == len(buf)
        except (OSError, OverflowError):
            return False

    # -- layout ----------------------------------------------------------
    def _local_proc(self) -> Optional[str]:
        if self.pid and os.path.exists("/proc/%d/smaps" % self.pid):
            return "/proc/%d" % self.pid
        return None

    def _load_regions(self) -> List[Region]:
        if self._corefile is not None:
            return self._corefile.regions()
        proc = self._local_proc()
        if proc:
            try:
                with open(proc + "/smaps") as fh:
                    regs = parse_smaps(fh.read())
                if regs:
                    return regs
            except OSError:
                pass
        try:
            regs = parse_info_proc_mappings(_execute("info proc mappings"))
        except gdb.error as e:
            raise TargetError("cannot list the mappings of this target: %s" % e)
        if not regs:
            raise TargetError("the target reports no mappings ('info proc mappings' is empty)")
        return regs

    def _load_auxv(self):
        if self._corefile is not None:
            return dict(self._corefile.auxv)
        try:
            return parse_info_auxv(_execute("info auxv"))
        except gdb.error:
            return {}

    def _load_threads(self) -> List[ThreadInfo]:
        out = []
        try:
            orig_thread = gdb.selected_thread()
        except gdb.error:
            orig_thread = None
        if orig_thread is None:
            return out
        try:
            orig_frame = gdb.selected_frame()
        except gdb.error:
            orig_frame = None
        names = _GP_REGS.get(self.arch, [])
        try:
            for th in sorted(self.inferior.threads(), key=lambda t: t.num):
                if not th.is_valid() or th.is_exited():
                    continue
                th.switch()
                try:
                    frame = gdb.newest_frame()
                except gdb.error:
                    continue
                regs = {}
                for r in names:
                    try:
                        regs[r] = int(frame.read_register(r)) & ((1 << (8 * self.pointer_size)) - 1)
                    except (gdb.error, ValueError):
                        pass
                sp = int(frame.read_register("sp")) & ((1 << (8 * self.pointer_size)) - 1)
                try:
                    fname = frame.name()
                except gdb.error:
                    fname = None
                lwp = th.ptid[1] or th.ptid[0]
                out.append(ThreadInfo(num=th.num, lwp=lwp, sp=sp, pc=frame.pc(), name=th.name,
                                      function=fname, regs=regs))
        finally:
            if orig_thread is not None and orig_thread.is_valid():
                orig_thread.switch()
            if orig_frame is not None and orig_frame.is_valid():
                orig_frame.select()
        return out

    def monitor(self, command: str) -> str:
        from ..core.target import VGDB_HINT
        if self.kind != "remote":
            raise TargetError(VGDB_HINT)
        if not getattr(self, "_valgrind_checked", False):
            try:
                probe = gdb.execute("monitor v.info n_errs_found", to_string=True)
            except gdb.error as e:
                raise TargetError("%s (the remote stub said: %s)" % (VGDB_HINT, e))
            if "n_errs_found" not in probe and "errors found" not in probe:
                raise TargetError(VGDB_HINT)
            self._valgrind_checked = True
        try:
            return gdb.execute("monitor " + command, to_string=True)
        except gdb.error as e:
            raise TargetError("monitor %s: %s" % (command, e))

    def continue_to(self, location: str) -> bool:
        bps = getattr(self, "_watch_bps", None)
        if bps is None:
            bps = self._watch_bps = {}
        bp = bps.get(location)
        if bp is None or not bp.is_valid():
            try:
                bp = gdb.Breakpoint(location, internal=True)
                bp.silent = True
            except (gdb.error, RuntimeError) as e:
                raise TargetError("cannot set a breakpoint at %s: %s" % (location, e))
            bps[location] = bp
        before = bp.hit_count
        try:
            gdb.execute("continue", to_string=True)
        except gdb.error as e:
            if "not being run" in str(e) or "exited" in str(e):
                return False
            raise TargetError("continue: %s" % e)
        alive = self.inferior.pid != 0 and any(t.is_valid() for t in self.inferior.threads())
        return alive and bp.hit_count > before

    def on_stop(self, callback):
        """Call ``callback(target)`` with a fresh GdbTarget at every stop; returns a disconnector."""
        def handler(event):
            try:
                callback(GdbTarget())
            except Exception as e:   # never break gdb's event loop
                gdb.write("memleak vgdb watch: %s\n" % e, gdb.STDERR)
        gdb.events.stop.connect(handler)
        return lambda: gdb.events.stop.disconnect(handler)

    def release(self):
        """Delete what continue_to created."""
        for bp in (getattr(self, "_watch_bps", None) or {}).values():
            if bp.is_valid():
                bp.delete()
        self._watch_bps = {}

    def frames(self, thread_num: int, limit: int = 256):
        try:
            orig_thread = gdb.selected_thread()
            orig_frame = gdb.selected_frame()
        except gdb.error:
            orig_thread, orig_frame = None, None
        mask = (1 << (8 * self.pointer_size)) - 1
        out = []
        try:
            for th in self.inferior.threads():
                if th.num != thread_num or not th.is_valid():
                    continue
                th.switch()
                f = gdb.newest_frame()
                level = 0
                while f is not None and level < limit:
                    try:
                        sp = int(f.read_register("sp")) & mask
                        name = f.name()
                    except (gdb.error, ValueError):
                        break
                    out.append((level, sp, f.pc(), name))
                    try:
                        f = f.older()
                    except gdb.error:
                        break
                    level += 1
                break
        finally:
            if orig_thread is not None and orig_thread.is_valid():
                orig_thread.switch()
            if orig_frame is not None and orig_frame.is_valid():
                orig_frame.select()
        return out or None

    def type_size(self, name: str, module: Optional[str] = None) -> Optional[int]:
        if module is not None and not self._has_dwarf(module):
            return None     # a failing lookup_type searches every symtab: milliseconds each
        try:
            return gdb.lookup_type(name).sizeof
        except (gdb.error, RuntimeError):
            return None

    def _has_dwarf(self, module: str) -> bool:
        """Whether gdb has DWARF for the module named ``module``: in its file or in a separate
        debug file gdb loaded for it (an objfile whose owner is the module's).  Unknown: True."""
        from ..core.symbols import has_debug_info
        objs = [o for o in gdb.objfiles() if o.is_valid() and o.filename
                and os.path.basename(o.filename) == module]
        if not objs:
            return True
        mains = set(objs)
        files = [o.filename for o in objs] + [o.filename for o in gdb.objfiles()
                                               if getattr(o, "owner", None) in mains and o.filename]
        return any(has_debug_info(f) for f in files)

    def local_path(self, path: str) -> Optional[str]:
        """The file gdb itself loaded for a mapped module (honours sysroot/solib-search-path and
        an executable given elsewhere than the core recorded), else the path as mapped."""
        if not hasattr(self, "_objfile_by_name"):
            table = {}
            for obj in gdb.objfiles():
                fn = getattr(obj, "filename", None)
                if fn and os.path.exists(fn):
                    table.setdefault(os.path.basename(fn), fn)
            self._objfile_by_name = table
        mains = [m for m in (self._modules or []) if m.is_main and m.path == path]
        if (mains or (self._corefile is not None and path == self._corefile.main_executable_path())) \
                and self.executable and os.path.exists(self.executable):
            return self.executable
        found = self._objfile_by_name.get(os.path.basename(path))
        if found:
            return found
        return path if os.path.exists(path) else None
