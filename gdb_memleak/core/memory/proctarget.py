"""A process under valgrind, reached without gdb: monitor commands through the standalone
`vgdb --pid=N CMD`, memory through /proc/PID/mem (valgrind's client memory is the process's own
memory), layout from /proc/PID/smaps.  The offline front end's `--vgdb-pid N`."""
from __future__ import annotations

import os
import shutil
import subprocess
from typing import List

from ..errors import DependencyError, MemoryReadError, TargetError
from .target import Region, Target
from ..textparse import parse_smaps


class VgdbProcessTarget(Target):
    kind = "remote"

    def __init__(self, pid: int):
        super().__init__()
        self.pid = pid
        if not os.path.exists("/proc/%d" % pid):
            raise TargetError("no process %d on this machine" % pid)
        if shutil.which("vgdb") is None:
            raise DependencyError("vgdb not found: install valgrind (apt-get install valgrind)")
        try:
            with open("/proc/%d/exe" % pid, "rb") as fh:
                head = fh.read(5)
            self.pointer_size = 8 if head[4:5] == b"\x02" else 4
        except OSError:
            self.pointer_size = 8
        self.arch = "x86-64" if self.pointer_size == 8 else "i386"
        self.executable = None
        try:
            self._mem = open("/proc/%d/mem" % pid, "rb", buffering=0)
        except OSError as e:
            raise TargetError("cannot read the memory of process %d: %s" % (pid, e.strerror))

    def read(self, addr: int, n: int):
        try:
            data = os.pread(self._mem.fileno(), n, addr)
        except (OSError, OverflowError) as e:
            raise MemoryReadError(addr, n, getattr(e, "strerror", None) or str(e))
        if len(data) != n:
            raise MemoryReadError(addr, n)
        return data

    def fast_read_into(self, addr: int, buf) -> bool:
        try:
            return os.preadv(self._mem.fileno(), [buf], addr) == len(buf)
        except (OSError, OverflowError):
            return False

    def _load_regions(self) -> List[Region]:
        try:
            with open("/proc/%d/smaps" % self.pid) as fh:
                return parse_smaps(fh.read())
        except OSError as e:
            raise TargetError("cannot read /proc/%d/smaps: %s" % (self.pid, e.strerror))

    def monitor(self, command: str) -> str:
        try:
            r = subprocess.run(["vgdb", "--pid=%d" % self.pid] + command.split(), capture_output=True,
                               text=True, timeout=3600)
        except subprocess.TimeoutExpired:
            raise TargetError("vgdb did not answer within an hour")
        out = r.stdout + r.stderr
        if r.returncode and "sending command" not in out:
            raise TargetError("vgdb --pid=%d failed: %s" % (self.pid, out.strip().splitlines()[-1] if out.strip()
                                                             else "exit %d" % r.returncode))
        return out
