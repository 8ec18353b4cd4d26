"""GdbTarget: the Target interface over gdb's selected inferior (live, core, or remote/vgdb).

Bad targets never hang and never lie: a target gdb does not have (a core it refused, a process
that exited, a remote that closed or stopped answering) is a TargetError naming what happened
and what to do next; registers gdb cannot read are left out and said so."""
from __future__ import annotations

import os
import re
import struct
import time
from typing import Dict, List, Optional, Tuple

import gdb  # noqa: F401  (this package is the gdb adapter)

from ..core.errors import MemoryReadError, TargetError
from ..core.memory.target import Region, Target, ThreadInfo
from ..core.textparse import (human_size, parse_core_path_from_info_target, parse_info_auxv,
                              parse_info_proc_mappings, parse_smaps)

# general-purpose registers worth keeping per thread (roots for reachability)
_GP_REGS = {
    "x86-64": "rax rbx rcx rdx rsi rdi rbp rsp r8 r9 r10 r11 r12 r13 r14 r15 rip fs_base".split(),
    "i386": "eax ebx ecx edx esi edi ebp esp eip".split(),
    "aarch64": ["x%d" % i for i in range(31)] + ["sp", "pc"],
    "arm": ["r%d" % i for i in range(13)] + ["sp", "lr", "pc"],
}
_BITS = {"x86-64": 64, "i386": 32, "aarch64": 64, "arm": 32}

NO_TARGET = ("no process or core: 'run', 'attach PID', 'core FILE' or "
             "'target remote | vgdb --pid=N' first")
# 64-bit user space ends below 2^56 (x86-64 with 5-level paging); only the vsyscall page lives
# in the top half
_USER_TOP_64, _HIGH_HALF_64 = 1 << 56, 0xFF00000000000000
# what gdb says when a remote connection is gone
_CLOSED = re.compile(r"Remote connection closed|Target disconnected|Broken pipe|Connection reset|"
                     r"Remote communication error|not connected to|The program is not being run", re.I)
_BIG_READ = 256 << 10


def _execute(cmd: str) -> str:
    return gdb.execute(cmd, to_string=True) or ""


def warn(text: str):
    gdb.write("warning: %s\n" % text.rstrip("\n"), gdb.STDERR)


# -- processes ---------------------------------------------------------------------------------
def process_state(pid: Optional[int]) -> Optional[str]:
    """The state letter of /proc/PID/stat ('S', 't', 'Z', ...); None when there is no such process."""
    if not pid:
        return None
    try:
        with open("/proc/%d/stat" % pid, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    rp = data.rfind(b")")
    return data[rp + 2:rp + 3].decode("ascii", "replace") if rp >= 0 else None


def process_gone(pid: Optional[int]) -> bool:
    """True when PID has exited: no such process, or a zombie nobody has reaped yet."""
    return bool(pid) and process_state(pid) in (None, "Z", "X", "x")


def exited_message(pid) -> str:
    return ("the process %s has exited (or was killed): nothing to analyse; 'run' it again or open a core"
            % (pid if pid else "being debugged"))


def remote_timeout() -> float:
    try:
        return max(0.1, float(gdb.parameter("remotetimeout")))
    except (gdb.error, RuntimeError, TypeError, ValueError):
        return 2.0


def _remote_command(details: Optional[str]) -> str:
    return "target remote %s" % (details or "...")


def remote_closed_message(details: Optional[str]) -> str:
    return ("the remote target (%s) closed the connection (did gdbserver or valgrind exit?): nothing to "
            "analyse; '%s' again once it runs, or open a core" % (details or "?", _remote_command(details)))


def remote_silent_message(details: Optional[str], secs: float) -> str:
    return ("the remote target (%s) stopped answering: no reply within gdb's remote timeout (%g s, "
            "'set remotetimeout'); gdb is now disconnected from it: check gdbserver or valgrind, then '%s' again"
            % (details or "?", secs, _remote_command(details)))


# -- what happened to targets gdb no longer has (gdb events; see install_event_hooks) -----------
_GONE: Dict[int, str] = {}      # inferior number -> why it has no target any more
_PIDS: Dict[int, int] = {}      # inferior number -> the last process id seen
_CORES: Dict[int, str] = {}     # inferior number -> the last core file seen
_HOOKS: List[Tuple[object, object]] = []


def _on_exited(event):
    inf = getattr(event, "inferior", None) or gdb.selected_inferior()
    conn = getattr(inf, "connection", None)
    if getattr(conn, "type", None) in ("remote", "extended-remote"):
        # a remote connection that closed takes its inferior with it: say which one
        _GONE[inf.num] = remote_closed_message(getattr(conn, "details", None))
    elif getattr(conn, "type", None) == "core":
        core = _CORES.get(inf.num)
        _GONE[inf.num] = ("no core loaded: the core%s was closed ('core-file' with no file, 'detach', or a core that "
                          "failed to load in its place; see gdb's messages above): 'core-file FILE'"
                          % (" " + core if core else ""))
    elif conn is None and inf.num in _GONE:
        pass    # the connection went first (connection_removed said why)
    else:
        _GONE[inf.num] = exited_message(inf.pid or _PIDS.get(inf.num))


def _on_cont(event):
    inf = gdb.selected_inferior()
    _GONE.pop(inf.num, None)     # it runs: whatever ended before is history
    if inf.pid:
        _PIDS[inf.num] = inf.pid


def _on_connection_removed(event):
    conn = getattr(event, "connection", None)
    if getattr(conn, "type", None) not in ("remote", "extended-remote"):
        return
    msg = remote_closed_message(getattr(conn, "details", None))
    for inf in gdb.inferiors():
        if getattr(inf, "connection", None) in (None, conn):
            _GONE[inf.num] = msg


def install_event_hooks():
    """Remember why an inferior lost its target (an exit, a closed remote connection) so that
    the next command says that instead of 'no process'."""
    if _HOOKS:
        return
    for name, fn in (("exited", _on_exited), ("cont", _on_cont), ("connection_removed", _on_connection_removed)):
        reg = getattr(gdb.events, name, None)
        if reg is not None:
            reg.connect(fn)
            _HOOKS.append((reg, fn))


# -- what gdb was asked to open: its own command line -------------------------------------------
# gdb's options that take an argument (getopt_long_only: one or two dashes, "opt=val" or "opt val")
_OPT_ARG = {"ex": "ex", "eval-command": "ex", "iex": "", "init-eval-command": "", "x": "", "command": "",
            "ix": "", "init-command": "", "d": "", "directory": "", "cd": "", "c": "core", "core": "core",
            "p": "pid", "pid": "pid", "s": "", "symbols": "", "e": "", "exec": "", "se": "", "b": "", "l": "",
            "tty": "", "t": "", "data-directory": "", "D": "", "i": "", "interpreter": ""}


def gdb_command_line() -> List[str]:
    try:
        with open("/proc/self/cmdline", "rb") as fh:
            raw = fh.read()
    except OSError:
        return []
    return [a.decode("utf-8", "surrogateescape") for a in raw.split(b"\0")[:-1]]


def _core_or_pid(value: str) -> Tuple[str, str]:
    """gdb's rule for 'gdb PROG X' and '-c X': a number that is not a file is a process id."""
    if value.isdigit() and not os.path.exists(value):
        return "pid", value
    return "core", value


def _intent_of_command(cmd: str) -> Optional[Tuple[str, str]]:
    words = cmd.strip().split(None, 1)
    if not words:
        return None
    verb, rest = words[0], (words[1].strip() if len(words) > 1 else "")
    if verb in ("core-file", "core") and rest:
        return "core", rest
    if verb == "attach" and rest.isdigit():
        return "pid", rest
    if verb in ("target", "tar"):
        sub = rest.split(None, 1)
        if len(sub) > 1 and sub[0] == "core":
            return "core", sub[1].strip()
        if len(sub) > 1 and sub[0] in ("remote", "extended-remote"):
            return "remote", sub[1].strip()
    return None


def launch_intents(argv: List[str]) -> List[Tuple[str, str]]:
    """What gdb's command line asked it to open, in the order gdb does it (files first, then the
    -ex commands): ('core', PATH), ('pid', N), ('remote', WHERE)."""
    files: List[Tuple[str, str]] = []
    cmds: List[Tuple[str, str]] = []
    positional: List[str] = []
    i, only_positional, args_mode = 1, False, False
    while i < len(argv):
        a = argv[i]
        i += 1
        if not only_positional and a == "--":
            only_positional = True
            continue
        if not only_positional and a.startswith("-") and len(a) > 1:
            name, val = a.lstrip("-"), None
            if "=" in name:
                name, val = name.split("=", 1)
            if name == "args":
                args_mode = True
                continue
            kind = _OPT_ARG.get(name)
            if kind is None:
                continue            # a flag (-batch, -nx, -q, ...)
            if val is None:
                if i >= len(argv):
                    break
                val = argv[i]
                i += 1
            if kind == "ex":
                it = _intent_of_command(val)
                if it:
                    cmds.append(it)
            elif kind == "core":
                files.append(_core_or_pid(val))
            elif kind == "pid":
                files.append(("pid", val))
            continue
        positional.append(a)
        if args_mode:
            break                   # the rest are the program's own arguments
    if len(positional) >= 2 and not args_mode:
        files.append(_core_or_pid(positional[1]))
    return files + cmds


def elf_bytes_needed(path: str) -> Tuple[Optional[int], Optional[int]]:
    """(file size, bytes its ELF program headers need: the headers, the segments' and the notes'
    file data).  The size is None when the file cannot be read, the need when it has no ELF
    header we can read."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(64)
            if len(head) < 52 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
                return size, None
            e = "<" if head[5] == 1 else ">"
            if head[4] == 2:
                if len(head) < 64:
                    return size, None
                (phoff,) = struct.unpack_from(e + "Q", head, 32)
                phentsize, phnum = struct.unpack_from(e + "HH", head, 54)
                fmt, ent = e + "IIQQQQ", 56
            else:
                (phoff,) = struct.unpack_from(e + "I", head, 28)
                phentsize, phnum = struct.unpack_from(e + "HH", head, 42)
                fmt, ent = e + "IIIIII", 32
            if phentsize < ent or phnum == 0xFFFF:
                return size, None
            need = phoff + phentsize * phnum
            if need > size:
                return size, need
            fh.seek(phoff)
            table = fh.read(phentsize * phnum)
    except OSError:
        return None, None
    for k in range(phnum):
        f = struct.unpack_from(fmt, table, k * phentsize)
        if head[4] == 2:
            p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = f
        else:
            p_type, p_offset, _vaddr, _paddr, p_filesz, _memsz = f
        if p_type in (1, 4) and p_filesz:      # PT_LOAD, PT_NOTE
            need = max(need, p_offset + p_filesz)
    return size, need


def core_not_loaded_message(path: str) -> str:
    """Why gdb did not load the core PATH it was given, in one line naming what to do."""
    size, need = elf_bytes_needed(path)
    if size is None:
        try:
            os.stat(path)
        except OSError as e:
            return "gdb could not load the core %s: %s" % (path, e.strerror or e)
    if need is not None and size is not None and need > size:
        return ("gdb could not load the core %s (truncated? %d bytes, headers need %d): use "
                "'python -m gdb_memleak --core %s --allow-truncated' for what is readable" % (path, size, need, path))
    try:
        from ..core.memory.elfcore import CoreFile
        CoreFile(path, allow_truncated=True).close()
    except TargetError as e:
        return "gdb could not load the core %s: %s" % (path, e)
    except Exception:   # noqa: BLE001 - only a diagnosis: gdb's own message says more
        pass
    return ("no core loaded: gdb did not load the core %s it was given, or closed it since (see gdb's messages "
            "above): 'core-file %s' again, or offline 'python -m gdb_memleak --core %s'" % (path, path, path))


def no_target_error(inf) -> TargetError:
    """The most precise reason there is no process or core to analyse."""
    gone = _GONE.get(inf.num) if inf is not None and inf.is_valid() else None
    intents = launch_intents(gdb_command_line())
    closed = _CORES.get(inf.num) if gone and gone.startswith("no core loaded: the core") else None
    if gone and not (closed and intents and intents[-1][0] == "core"
                     and os.path.abspath(os.path.expanduser(intents[-1][1])) != closed):
        return TargetError(gone)    # (a core given after the one that was closed failed: say why below)
    if intents:
        kind, val = intents[-1]
        if kind == "core":
            return TargetError(core_not_loaded_message(os.path.abspath(os.path.expanduser(val))))
        if kind == "pid":
            pid = int(val)
            if process_gone(pid):
                return TargetError("gdb could not attach to process %d: there is no such process (it has exited?); "
                                   "start it again, or open a core" % pid)
            return TargetError("gdb is not attached to process %d: attaching failed or it was detached since "
                               "(see gdb's messages above; not root? check /proc/sys/kernel/yama/ptrace_scope): "
                               "'attach %d'" % (pid, pid))
        if kind == "remote":
            return TargetError("gdb is not connected to the remote target %s: connecting failed or the connection "
                               "closed since (see gdb's messages above): start gdbserver or valgrind --vgdb=yes, "
                               "then 'target remote %s'" % (val, val))
    return TargetError(NO_TARGET)


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


def _bits_arch(arch: str, pointer_size: int) -> str:
    return "%d-bit %s" % (8 * pointer_size, arch)


def _restore_selection(thread, frame):
    """Select again the thread and frame the user had selected (best effort: they may be gone)."""
    try:
        if thread is not None and thread.is_valid():
            thread.switch()
        if frame is not None and frame.is_valid():
            frame.select()
    except (gdb.error, SystemError, RuntimeError):
        pass


class GdbTarget(Target):
    def __init__(self):
        super().__init__()
        inf = gdb.selected_inferior()
        self.inferior = inf
        self._mem = None
        self._corefile = None
        self.threads_without_registers: List[int] = []   # LWPs gdb lists but cannot read registers of
        if not inf.is_valid() or (inf.pid == 0 and "Local core dump file" not in _execute("info target")):
            raise no_target_error(inf)
        self.kind = connection_kind(inf)
        self.pid = inf.pid or None
        conn = getattr(inf, "connection", None)
        self._remote_details = getattr(conn, "details", None) if self.kind == "remote" else None
        self._remote_timeout = remote_timeout()
        self._alive_checked = 0.0
        self._remote_local = False
        if self.kind == "remote":
            vgdb_pid = self._vgdb_pid()
            if vgdb_pid:                # valgrind's gdbserver: a pipe to vgdb on this machine
                self.pid, self._remote_local = vgdb_pid, True
                if process_gone(vgdb_pid):
                    self._disconnect(self._behind_remote_gone())
                    raise TargetError(self._behind_remote_gone())
            else:                       # gdbserver: its process ids are ours only on this host
                self._remote_local = self._remote_on_this_host() and process_state(self.pid) is not None
            self._probe_remote()
        if self.kind == "live" and process_gone(self.pid):
            raise TargetError(exited_message(self.pid))
        _GONE.pop(inf.num, None)
        if self.pid and self.kind != "core":
            _PIDS[inf.num] = self.pid
        try:
            self._describe()
        except BaseException:
            self.close()
            raise

    def _describe(self):
        """Pointer size, byte order, architecture, files; on a core, the core's own layout
        (checked against gdb's architecture) and what is wrong with it."""
        self.pointer_size = gdb.lookup_type("void").pointer().sizeof
        endian = _execute("show endian")
        self.byteorder = "big" if "big endian" in endian else "little"
        self.arch = self._arch_name()
        self.executable = gdb.current_progspace().filename
        self.core_path = None
        if self.kind == "live" and self.pid:
            try:
                self._mem = open("/proc/%d/mem" % self.pid, "rb", buffering=0)
            except OSError:
                self._mem = None
        if self.kind == "core":
            self.core_path = parse_core_path_from_info_target(_execute("info target"))
            if self.core_path:
                _CORES[self.inferior.num] = self.core_path
                from ..core.memory.elfcore import CoreFile
                self._corefile = CoreFile(self.core_path, allow_truncated=True)
                self._check_core_arch()
                if self._corefile.no_file_note:
                    self._name_core_files()
                problems = getattr(self._corefile, "problems", None)
                if problems is not None:
                    self.warnings.extend(problems)
                elif self._corefile.truncated_at is not None:
                    self.warnings.append("core file %s is truncated: segments past byte %d are missing"
                                         % (self.core_path, self._corefile.truncated_at))
                self.pid = self.pid or self._corefile.pid

    def _name_core_files(self):
        """A core without NT_FILE (qemu-user's): its mappings named from gdb's executable and the
        dynamic linker's link_map, the libraries found like gdb finds them (sysroot); gdb
        itself may not have loaded them (it cannot place a PIE whose ELF header page is not in
        the core)."""
        cf = self._corefile
        self.merged_anon = True

        def read(addr, n):
            off = cf.file_offset(addr, n)
            if off is None:
                raise MemoryReadError(addr, n, "not in the core")
            return cf.map[off:off + n]
        exe = self.executable
        if not exe or not os.path.isfile(exe):
            self.warnings.append("the core names no mapped files (no NT_FILE note; qemu-user writes none): load its "
                                 "executable first ('file EXE', and 'set sysroot DIR' for its libraries)")
            return
        self.warnings.extend(cf.name_files_from_link_map(read, exe, exe, self.local_path))
        self._objfile_by_name = None      # looked up again with the names now known

    def _read_named_file(self, addr: int, n: int):
        """Bytes of a file mapping named from the link_map (gdb cannot place a PIE whose ELF header
        page the core lacks, so it does not read its file there), from the file itself."""
        seg = self._corefile.segment_at(addr)
        if seg is not None and addr < seg.vaddr + seg.avail:
            return None               # the core holds (part of) it
        for f in self._corefile.files:
            if f.start <= addr and addr + n <= f.end:
                local = self.local_path(f.path)
                if not local:
                    return None
                try:
                    with open(local, "rb") as fh:
                        data = os.pread(fh.fileno(), n, f.offset + (addr - f.start))
                except OSError:
                    return None
                return memoryview(data) if len(data) == n else None
        return None

    def _sysroot(self) -> Optional[str]:
        """gdb's sysroot when it is a folder of this machine (not 'target:' or empty)."""
        m = re.search(r'"(.*)"', _execute("show sysroot"))
        root = m.group(1) if m else ""
        return root if root and not root.startswith("target:") and os.path.isdir(root) else None

    def close(self):
        """Close the files this target opened (the core, /proc/PID/mem)."""
        for f in (self._mem, self._corefile):
            if f is not None:
                try:
                    f.close()
                except Exception:   # noqa: BLE001 - best effort; a view may still hold the map
                    pass
        self._mem = None
        self._corefile = None

    def _check_core_arch(self):
        """gdb reads a core with the architecture of its executable: a 32-bit core opened with a
        64-bit executable (or any other machine) gives wrong registers and pointer sizes."""
        cf = self._corefile
        if cf.pointer_size == self.pointer_size and cf.arch == self.arch:
            return
        try:
            gdb_arch = self.inferior.architecture().name()
        except (AttributeError, gdb.error):
            gdb_arch = self.arch
        exe = self.executable
        raise TargetError("architecture mismatch: the core %s is a %s core, but gdb reads it as %s (%s, from the "
                          "executable %s): open it with its own executable ('file PROG' then 'core-file %s') or "
                          "with none ('gdb -c %s')" % (
                              self.core_path, _bits_arch(cf.arch, cf.pointer_size),
                              _bits_arch(self.arch, self.pointer_size), gdb_arch, exe or "?", self.core_path,
                              self.core_path))

    def _remote_on_this_host(self) -> bool:
        d = (self._remote_details or "").strip()
        if d.startswith("|"):
            return True
        host = d.rsplit(":", 1)[0] if ":" in d else ""
        host = host.split(":", 1)[-1] if host.startswith(("tcp:", "tcp4:", "tcp6:", "udp:")) else host
        return host.strip("[]") in ("", "localhost", "127.0.0.1", "::1", "ip6-localhost")

    def _vgdb_pid(self) -> Optional[int]:
        """The real PID behind a 'target remote | vgdb --pid=N' pipe (vgdb reports a made-up one)."""
        d = (self._remote_details or "").strip()
        m = re.search(r"--pid[= ](\d+)", d)
        return int(m.group(1)) if m and d.startswith("|") else None

    def _behind_remote_gone(self) -> str:
        return ("the process %d behind the remote target (%s) has exited (or was killed): nothing to analyse; "
                "start it again (under gdbserver or valgrind) and '%s', or open a core"
                % (self.pid, self._remote_details, _remote_command(self._remote_details)))

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

    # -- a target that went away -------------------------------------------
    def check_gone(self, error=None, elapsed: float = 0.0, force: bool = False):
        """After a gdb call on this target failed (or came back empty after ``elapsed`` s): raise
        TargetError when the reason is that the target itself is gone — the live process exited,
        the remote connection closed, or the remote stopped answering within gdb's timeout."""
        if self.kind == "live":
            now = time.monotonic()
            if force or now - self._alive_checked > 0.25:
                self._alive_checked = now
                if process_gone(self.pid) or self.inferior.pid == 0:
                    raise TargetError(exited_message(self.pid))
            return
        if self.kind != "remote":
            return
        msg = str(error) if error is not None else ""
        if self.inferior.pid == 0 or getattr(self.inferior, "connection", None) is None or _CLOSED.search(msg):
            raise TargetError(remote_closed_message(self._remote_details))
        if self._remote_local and process_gone(self.pid):
            self._disconnect(self._behind_remote_gone())
            raise TargetError(self._behind_remote_gone())
        if elapsed >= 0.9 * self._remote_timeout and not isinstance(error, gdb.MemoryError):
            why = remote_silent_message(self._remote_details, self._remote_timeout)
            self._disconnect(why)
            raise TargetError(why)

    def _probe_remote(self):
        """One packet the remote must answer (qC: its current thread) before any real work: a
        remote that stopped answering costs gdb's remote timeout once, not once per read."""
        t0 = time.monotonic()
        try:
            _execute("maint packet qC")
        except gdb.error as e:
            self.check_gone(e, time.monotonic() - t0)

    def _disconnect(self, why: Optional[str] = None):
        """Drop a dead remote connection: every later gdb command would wait for it again."""
        try:
            gdb.execute("disconnect", to_string=True)
        except (gdb.error, RuntimeError):
            pass
        if why:
            _GONE[self.inferior.num] = why

    def _gdb(self, fn, *args):
        """Run a gdb call that talks to the target; a failure caused by the target being gone
        becomes that TargetError, anything else is re-raised."""
        t0 = time.monotonic()
        try:
            return fn(*args)
        except gdb.error as e:
            self.check_gone(e, time.monotonic() - t0)
            raise

    # -- memory ----------------------------------------------------------------
    def read(self, addr: int, n: int):
        cf = self._corefile
        if cf is not None and n > 0:
            # the bytes the core holds, from the file (what gdb would read, without its per-call cost)
            off = cf.file_offset(addr, n)
            if off is not None:
                return cf.map[off:off + n] if n < _BIG_READ else os.pread(cf._fh.fileno(), n, off)
            if cf.files_from_link_map:
                got = self._read_named_file(addr, n)
                if got is not None:
                    return got
        t0 = time.monotonic()
        try:
            return memoryview(self.inferior.read_memory(addr, n))
        except gdb.MemoryError as e:
            if self.kind != "core":
                self.check_gone(e, time.monotonic() - t0)
            raise MemoryReadError(addr, n)
        except gdb.error as e:
            if self.kind != "core":
                self.check_gone(e, time.monotonic() - t0)
            raise MemoryReadError(addr, n, str(e))
        except (OverflowError, ValueError) as e:
            raise MemoryReadError(addr, n, str(e))

    def fast_read_into(self, addr: int, buf) -> bool:
        """Bulk reads skip gdb when the bytes are one file away: the core's data, or the stopped
        process's /proc/PID/mem (what gdb itself reads for a native inferior).  No gdb call here:
        this runs in worker threads."""
        cf = self._corefile
        if cf is not None:
            return cf.pread_into(addr, buf)
        mem = self._mem
        if mem is None:
            return False
        try:
            return os.preadv(mem.fileno(), [buf], addr) == len(buf)
        except (OSError, OverflowError, ValueError):
            return False

    # -- layout ----------------------------------------------------------
    def _local_proc(self) -> Optional[str]:
        if self.kind == "remote" and not self._remote_local:
            return None
        if self.pid and os.path.exists("/proc/%d/smaps" % self.pid):
            return "/proc/%d" % self.pid
        return None

    def _load_regions(self) -> List[Region]:
        if self._corefile is not None:
            return self._sane_core_regions(self._corefile.regions())
        proc = self._local_proc()
        if proc:
            try:
                with open(proc + "/smaps") as fh:
                    regs = parse_smaps(fh.read())
                if regs:
                    return regs
            except OSError:
                pass
            self.check_gone(force=True)
        t0 = time.monotonic()
        try:
            regs = parse_info_proc_mappings(_execute("info proc mappings"))
        except gdb.error as e:
            self.check_gone(e, time.monotonic() - t0, force=True)
            raise TargetError("cannot list the mappings of this target: %s" % e)
        if not regs:
            self.check_gone(None, time.monotonic() - t0, force=True)
            if self.kind == "remote":
                raise TargetError("the remote target (%s) reports no mappings for process %s: has it exited? '%s' "
                                  "again once it runs, or open a core" % (self._remote_details, self.pid,
                                                                         _remote_command(self._remote_details)))
            raise TargetError("the target reports no mappings ('info proc mappings' is empty)")
        return regs

    def _sane_core_regions(self, regs: List[Region]) -> List[Region]:
        """Leave out segments no process can have: past the end of the address space (or of
        64-bit user space), or holding more data than the whole core file."""
        top = 1 << (8 * self.pointer_size)
        fsize = getattr(self._corefile, "file_size", None)
        out = []
        for r in regs:
            why = None
            if r.start >= r.end or r.end > top:
                why = "runs past the end of the %d-bit address space" % (8 * self.pointer_size)
            elif self.pointer_size == 8 and r.start < _HIGH_HALF_64 and r.end > _USER_TOP_64:
                why = "reaches past the end of user space (0x%x)" % _USER_TOP_64
            elif fsize is not None and r.data_end is not None and r.data_end - r.start > fsize:
                why = "holds more data than the core file (%d bytes) could" % fsize
            if why is None:
                out.append(r)
                continue
            # the context printed the target's warnings already: say it now
            w = "core segment 0x%x-0x%x (%s) %s: left out, not analysed" % (
                r.start, r.end, human_size(r.end - r.start), why)
            self.warnings.append(w)
            warn(w)
        return out

    def _load_auxv(self):
        if self._corefile is not None:
            return dict(self._corefile.auxv)
        try:
            return parse_info_auxv(self._gdb(_execute, "info auxv"))
        except gdb.error:
            return {}

    def _core_threads(self) -> Dict[int, ThreadInfo]:
        if self._corefile is None:
            return {}
        try:
            return {t.lwp: t for t in self._corefile.threads() if t.sp}
        except Exception:   # noqa: BLE001 - only a fallback
            return {}

    def _load_threads(self) -> List[ThreadInfo]:
        out: List[ThreadInfo] = []
        missing: List[Tuple[int, str]] = []
        try:
            orig_thread = gdb.selected_thread()
        except (gdb.error, SystemError, RuntimeError):   # the selected thread is gone
            orig_thread = None
        try:
            orig_frame = gdb.selected_frame()
        except (gdb.error, SystemError, RuntimeError):
            orig_frame = None
        names = _GP_REGS.get(self.arch, [])
        mask = (1 << (8 * self.pointer_size)) - 1
        core_threads = None
        try:
            threads = sorted(self.inferior.threads(), key=lambda t: t.num)
        except (gdb.error, SystemError, RuntimeError) as e:
            self.check_gone(e)
            threads = []
        try:
            for th in threads:
                try:
                    if not th.is_valid() or th.is_exited():
                        continue
                    lwp = th.ptid[1] or th.ptid[0]
                    name = th.name
                except (gdb.error, SystemError, RuntimeError):
                    continue
                t0 = time.monotonic()
                try:
                    th.switch()
                    frame = gdb.newest_frame()
                    sp = int(frame.read_register("sp")) & mask
                    pc = int(frame.pc()) & mask
                    if sp == 0:
                        raise ValueError("SP is 0")
                except (gdb.error, SystemError, RuntimeError, ValueError) as e:
                    if isinstance(e, gdb.error):
                        self.check_gone(e, time.monotonic() - t0)
                    if core_threads is None:
                        core_threads = self._core_threads()
                    ct = core_threads.get(lwp)
                    if ct is not None:   # gdb could not, the core's NT_PRSTATUS can
                        regs = {k: v & mask for k, v in ct.regs.items() if k in names}
                        out.append(ThreadInfo(num=th.num, lwp=lwp, sp=ct.sp & mask, pc=ct.pc & mask, name=name,
                                              regs=regs))
                    else:
                        missing.append((lwp, str(e) or type(e).__name__))
                    continue
                regs = {}
                for r in names:
                    try:
                        regs[r] = int(frame.read_register(r)) & mask
                    except (gdb.error, ValueError):
                        pass
                try:
                    fname = frame.name()
                except gdb.error:
                    fname = None
                out.append(ThreadInfo(num=th.num, lwp=lwp, sp=sp, pc=pc, name=name, function=fname, regs=regs))
        finally:
            _restore_selection(orig_thread, orig_frame)
        if missing:
            self._warn_missing_registers(missing, len(out) + len(missing))
        return out

    def _warn_missing_registers(self, missing: List[Tuple[int, str]], total: int):
        lwps = list(dict.fromkeys(lwp for lwp, _ in missing))
        reasons = list(dict.fromkeys(r for _, r in missing))
        self.threads_without_registers = lwps
        what = ("all %d threads" % total) if len(missing) == total else \
            "%d thread%s" % (len(missing), "" if len(missing) == 1 else "s")
        warn("registers of %s unavailable: %s (%s): left out, so their stacks show as orphan stacks and are not "
             "leak roots ('memleak leaks --orphan-stacks-as-roots' scans them)"
             % (what, ", ".join("LWP %d" % x for x in lwps[:6]) + (", ..." if len(lwps) > 6 else ""),
                "; ".join(reasons[:2])))

    def monitor(self, command: str) -> str:
        from ..core.memory.target import VGDB_HINT
        if self.kind != "remote":
            raise TargetError(VGDB_HINT)
        if not getattr(self, "_valgrind_checked", False):
            t0 = time.monotonic()
            try:
                probe = gdb.execute("monitor v.info n_errs_found", to_string=True)
            except gdb.error as e:
                self.check_gone(e, time.monotonic() - t0)
                raise TargetError("%s (the remote stub said: %s)" % (VGDB_HINT, e))
            if "n_errs_found" not in probe and "errors found" not in probe:
                self.check_gone(None, time.monotonic() - t0)
                raise TargetError(VGDB_HINT)
            self._valgrind_checked = True
        t0 = time.monotonic()
        try:
            return gdb.execute("monitor " + command, to_string=True)
        except gdb.error as e:
            self.check_gone(e, time.monotonic() - t0)
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
            if self.kind == "remote":
                self.check_gone(e)
            raise TargetError("continue: %s" % e)
        alive = self.inferior.pid != 0 and any(t.is_valid() for t in self.inferior.threads())
        return alive and bp.hit_count > before

    def on_stop(self, callback):
        """Call ``callback(target)`` with a fresh GdbTarget at every stop; returns a disconnector."""
        def handler(event):
            t = None
            try:
                t = GdbTarget()
                callback(t)
            except Exception as e:   # never break gdb's event loop
                gdb.write("memleak vgdb watch: %s\n" % e, gdb.STDERR)
            finally:
                if t is not None:
                    t.close()
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
        except (gdb.error, SystemError, RuntimeError):
            orig_thread, orig_frame = None, None
        mask = (1 << (8 * self.pointer_size)) - 1
        out = []
        try:
            for th in self.inferior.threads():
                if th.num != thread_num or not th.is_valid():
                    continue
                t0 = time.monotonic()
                try:
                    th.switch()
                    f = gdb.newest_frame()
                except (gdb.error, SystemError, RuntimeError) as e:
                    if isinstance(e, gdb.error):
                        self.check_gone(e, time.monotonic() - t0)
                    break
                level = 0
                while f is not None and level < limit:
                    t0 = time.monotonic()
                    try:
                        sp = int(f.read_register("sp")) & mask
                        name = f.name()
                    except (gdb.error, ValueError) as e:
                        if isinstance(e, gdb.error):
                            self.check_gone(e, time.monotonic() - t0)
                        break
                    out.append((level, sp, f.pc(), name))
                    t0 = time.monotonic()
                    try:
                        f = f.older()
                    except gdb.error as e:
                        self.check_gone(e, time.monotonic() - t0)
                        break
                    level += 1
                break
        finally:
            _restore_selection(orig_thread, orig_frame)
        return out or None

    def symbol_at(self, addr: int):
        """gdb's 'info symbol': 'NAME + OFF in section S of FILE' or 'NAME in section S'."""
        import re
        try:
            text = gdb.execute("info symbol 0x%x" % addr, to_string=True).strip()
        except gdb.error:
            return None
        m = re.match(r"(.+?)(?: \+ (\d+))? in section ", text)
        if not m or text.startswith("No symbol"):
            return None
        return m.group(1), int(m.group(2) or 0)

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
        from ..core.memory.symbols import has_debug_info
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
        if getattr(self, "_objfile_by_name", None) is None:
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
        root = self._sysroot()
        if root:      # like gdb's sysroot: look there only
            cand = os.path.join(root, path.lstrip("/"))
            return cand if os.path.isfile(cand) else None
        return path if os.path.exists(path) else None
