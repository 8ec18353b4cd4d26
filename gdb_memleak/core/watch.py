"""``python -m gdb_memleak watch --pid PID``: where a running process's memory is growing, and
which thread is touching new memory — sampled from /proc only, never stopping the process.

No gdb, no ptrace, no signal, nothing written to the process: each sample reads
/proc/PID/smaps (every mapping's Rss, Private_Dirty, Swap), /proc/PID/status, every thread's
/proc/PID/task/TID/stat (min_flt, maj_flt, utime, stime) and /proc/meminfo (Committed_AS,
MemAvailable).  The two manual methods of the field reports, automated: diffing two ``pmap``
samples to find the regions that grow (002), and looking for the thread whose min_flt keeps
rising — a minor fault is the first touch of a new page (000).

Regions are matched from sample to sample by start address and kind/path (a region the kernel
extended downwards keeps its end and is matched by that); one that was not there is "new" and
counts from 0 at the sample before it appeared.  Rates are over the whole time a region or a
thread was watched.  Classification is what /proc says, nothing more: ``[heap]``, ``[stack]``,
``[stack:TID]``, file-backed, shared, anonymous; an anonymous rw-p mapping at a HEAP_MAX-aligned
address is hinted ``arena?`` — a guess (gdb's ``memleak maps`` can tell).

Samples go to ``--out DIR`` as ``sample-0001.json`` … (schema ``gdb_memleak.sample/1``, files
0600, folder 0700, no symlink followed), ``--json FILE`` gets a summary at the end.
"""
from __future__ import annotations

import argparse
import datetime
import errno
import json
import math
import os
import re
import resource
import signal
import sys
import threading
import time
from typing import Dict, List, Optional, Tuple

from .errors import MemleakError, UsageError

SCHEMA = "gdb_memleak.sample/1"
SUMMARY_SCHEMA = "gdb_memleak.watch/1"
PROG = "python -m gdb_memleak watch"
MIB = 1 << 20
MIN_INTERVAL = 0.05
KEEP_GONE = 4096          # regions/threads that went away, kept for the summary (oldest dropped)
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_STATUS_BYTES = ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmSwap", "VmSize", "VmData", "VmHWM")
_SAMPLE_NAME = re.compile(r"^sample-\d+\.json$")


class ProcessGone(Exception):
    """The watched process exited (or was reaped) while we were reading it."""


class _HelpShown(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# pure parsers (bytes in, data out)

def parse_smaps(data: bytes) -> List[Tuple[int, int, str, Optional[str], int, int, int]]:
    """/proc/PID/smaps -> [(start, end, perms, path or None, rss, private_dirty, swap)] in bytes.

    One C-level split on the line every mapping has after its header (``Size:``), then a few
    ``find`` per mapping: about 3 ms for 1,000 mappings where a per-line loop takes 7 ms."""
    out = []
    parts = data.split(b"\nSize:")
    prev = parts[0]
    paths: Dict[bytes, str] = {}
    for body in parts[1:]:
        h = prev[prev.rfind(b"\n") + 1:]
        prev = body
        f = h.split(None, 5)
        if len(f) < 5:
            continue
        s, _, e = f[0].partition(b"-")
        try:
            start, end = int(s, 16), int(e, 16)
        except ValueError:
            continue
        raw = f[5].strip() if len(f) > 5 else b""
        path = None
        if raw:
            path = paths.get(raw)
            if path is None:
                path = paths[raw] = raw.decode("utf-8", "backslashreplace")
        j = body.find(b"\nRss:")
        rss = int(body[j + 5:body.find(b"k", j)]) << 10 if j >= 0 else 0
        j = body.find(b"\nPrivate_Dirty:")
        pd = int(body[j + 15:body.find(b"k", j)]) << 10 if j >= 0 else 0
        j = body.find(b"\nSwap:")
        sw = int(body[j + 6:body.find(b"k", j)]) << 10 if j >= 0 else 0
        out.append((start, end, f[1].decode("ascii", "replace"), path, rss, pd, sw))
    return out


def parse_status(data: bytes) -> dict:
    """/proc/PID/status -> {"State": "S (sleeping)", "Threads": n, VmRSS…: bytes}."""
    out = {}
    for line in data.split(b"\n"):
        k, sep, v = line.partition(b":")
        if not sep:
            continue
        key = k.decode("ascii", "replace")
        if key in _STATUS_BYTES:
            f = v.split()
            try:
                out[key] = int(f[0]) * (1024 if len(f) > 1 and f[1] == b"kB" else 1)
            except (ValueError, IndexError):
                pass
        elif key in ("Threads", "Tgid"):
            try:
                out[key] = int(v)
            except ValueError:
                pass
        elif key == "State":
            out[key] = v.strip().decode("ascii", "replace")
    return out


def parse_task_stat(data: bytes) -> Optional[tuple]:
    """/proc/PID/task/TID/stat -> (comm, state, minflt, majflt, utime_ticks, stime_ticks,
    starttime).  The comm is between the first '(' and the *last* ')': it may hold spaces and
    parentheses itself."""
    lp, rp = data.find(b"("), data.rfind(b")")
    if lp < 0 or rp < lp:
        return None
    rest = data[rp + 2:].split()
    if len(rest) < 20:
        return None
    comm = data[lp + 1:rp].decode("utf-8", "backslashreplace")
    return (comm, rest[0].decode("ascii", "replace"), int(rest[7]), int(rest[9]), int(rest[11]),
            int(rest[12]), int(rest[19]))


def parse_meminfo(data: bytes) -> dict:
    """/proc/meminfo -> {"Committed_AS", "MemAvailable", "CommitLimit"} in bytes (those present)."""
    out = {}
    data = b"\n" + data
    for key in ("Committed_AS", "MemAvailable", "CommitLimit"):
        j = data.find(b"\n" + key.encode() + b":")
        if j < 0:
            continue
        e = data.find(b"\n", j + 1)
        f = data[j + 1:e if e >= 0 else len(data)].split()
        try:
            out[key] = int(f[1]) * (1024 if len(f) > 2 and f[2] == b"kB" else 1)
        except (ValueError, IndexError):
            pass
    return out


def classify(start: int, end: int, perms: str, path: Optional[str], arena_align: int) -> Tuple[str, Optional[str]]:
    """(kind, hint) of one mapping from what /proc shows, no more.  Kinds: main-heap, stack,
    thread-stack, file, shm, anon, vdso, vvar, vsyscall, other."""
    if path:
        if path[0] == "/":
            if path.startswith(("/SYSV", "/dev/shm/", "/memfd:")):
                return "shm", None
            return "file", ("deleted" if path.endswith(" (deleted)") else None)
        if path == "[heap]":
            return "main-heap", None
        if path == "[stack]":
            return "stack", None
        if path.startswith("[stack:"):
            return "thread-stack", "tid " + path[7:-1]
        if path in ("[vdso]", "[vsyscall]"):
            return path[1:-1], None
        if path.startswith("[vvar"):
            return "vvar", None
        if path.startswith("[anon_shmem:"):
            return "shm", None
        if path.startswith("[anon:"):
            return "anon", None
        return "other", None
    if perms[3:4] == "s":
        return "shm", None
    if perms[:3] == "---":
        return "anon", "no access (reserve or guard)"
    if perms[:2] == "rw" and arena_align and start % arena_align == 0 and end - start <= arena_align:
        return "anon", "arena?"
    return "anon", None


# ---------------------------------------------------------------------------------------------
# formatting

def _size(n) -> str:
    if n is None:
        return "-"
    neg, n = n < 0, abs(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            s = ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
            return "-" + s if neg else s
        n /= 1024.0
    return str(n)


def _delta(n) -> str:
    return "-" if n is None else ("+" if n >= 0 else "-") + _size(abs(n))


def _rate(bytes_per_s) -> str:
    return "-" if bytes_per_s is None else "%+.1f" % (bytes_per_s * 60 / MIB)


def _per_min(bytes_per_s):
    return None if bytes_per_s is None else round(bytes_per_s * 60 / MIB, 3)


def _table(headers, rows) -> List[str]:
    rows = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return [fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]


# ---------------------------------------------------------------------------------------------
# what we keep between samples

class _Region:
    __slots__ = ("start", "end", "perms", "kind", "path", "hint", "rss0", "t0", "rss", "t", "prev_rss",
                 "prev_t", "new", "present", "frag")

    def __init__(self, m, kind, hint, t, prev_t):
        start, end, perms, path, rss, _pd, _sw = m
        self.start, self.end, self.perms, self.path, self.kind, self.hint = start, end, perms, path, kind, hint
        if prev_t is None:                       # there at the first sample: the baseline
            self.rss0, self.t0, self.new = rss, t, False
        else:                                    # appeared since the previous sample: from nothing
            self.rss0, self.t0, self.new = 0, prev_t, True
        self.prev_rss, self.prev_t = self.rss0, self.t0
        self.rss, self.t, self.present = rss, t, True

    def rate(self):
        return (self.rss - self.rss0) / (self.t - self.t0) if self.t > self.t0 else None

    def last_rate(self):
        return (self.rss - self.prev_rss) / (self.t - self.prev_t) if self.t > self.prev_t else None


class _Thread:
    __slots__ = ("tid", "comm", "starttime", "min0", "maj0", "cpu0", "t0", "minflt", "majflt", "cpu", "t",
                 "prev_min", "prev_t", "present")

    def __init__(self, tid, st, t, prev_t):
        comm, _state, minflt, majflt, ut, stt, starttime = st
        self.tid, self.comm, self.starttime = tid, comm, starttime
        if prev_t is None:
            self.min0, self.maj0, self.cpu0, self.t0 = minflt, majflt, ut + stt, t
        else:                                    # a thread born since the last sample: counters from 0
            self.min0, self.maj0, self.cpu0, self.t0 = 0, 0, 0, prev_t
        self.prev_min, self.prev_t = self.min0, self.t0
        self.minflt, self.majflt, self.cpu, self.t, self.present = minflt, majflt, ut + stt, t, True

    def update(self, st, t):
        self.prev_min, self.prev_t = self.minflt, self.t
        self.comm, _s, self.minflt, self.majflt, ut, stt, _st = st
        self.cpu, self.t = ut + stt, t

    def dt(self):
        return self.t - self.t0

    def minflt_rate(self):
        return (self.minflt - self.min0) / self.dt() if self.dt() > 0 else None

    def last_minflt_rate(self):
        return (self.minflt - self.prev_min) / (self.t - self.prev_t) if self.t > self.prev_t else None

    def majflt_rate(self):
        return (self.majflt - self.maj0) / self.dt() if self.dt() > 0 else None

    def cpu_percent(self):
        return 100.0 * (self.cpu - self.cpu0) / _CLK_TCK / self.dt() if self.dt() > 0 else None


# ---------------------------------------------------------------------------------------------
# reading /proc

def _read_fd(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while True:
        b = os.read(fd, 1 << 16)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def _denied(path: str) -> MemleakError:
    return MemleakError("cannot read %s: permission denied (watch reads /proc as the process's own user "
                        "or as root; no ptrace, but the kernel applies its ptrace read check)" % path)


class Watcher:
    def __init__(self, pid: int):
        self.pid = pid
        self.proc = "/proc/%d" % pid
        self._fds: Dict[str, int] = {}
        self.pidfd = None
        if not os.path.isdir(self.proc):
            raise MemleakError("no process with pid %d" % pid)
        pidfd_open = getattr(os, "pidfd_open", None)  # Python >= 3.9, Linux >= 5.3
        if pidfd_open is not None:
            try:
                self.pidfd = pidfd_open(pid)             # wakes us when it exits; immune to pid reuse
            except ProcessLookupError:
                raise MemleakError("no process with pid %d" % pid)
            except OSError:                              # ENOSYS, or EINVAL for a thread id
                self.pidfd = None
        try:
            status = parse_status(self._read("status"))
            if status.get("State", "")[:1] in ("Z", "X"):
                raise MemleakError("process %d has exited (a zombie its parent has not reaped): nothing to watch" % pid)
            if status.get("Tgid", pid) != pid:
                raise UsageError("%d is a thread of process %d: give --pid %d" % (pid, status["Tgid"], status["Tgid"]))
            try:
                self.exe = os.readlink(self.proc + "/exe")
            except PermissionError:
                raise _denied(self.proc + "/exe")
            except FileNotFoundError:
                if os.path.isdir(self.proc):
                    raise MemleakError("process %d has no executable (a kernel thread?): nothing to watch" % pid)
                raise ProcessGone()
            smaps = self._read("smaps")
            if not smaps.strip():
                raise MemleakError("process %d has no memory mappings (exiting, or a kernel thread?)" % pid)
            self.task_fd = self._open_dir(self.proc + "/task")
        except ProcessGone:
            self.close()
            raise MemleakError("no process with pid %d (it exited)" % pid)
        except BaseException:
            self.close()
            raise
        from .memory.modules import file_build_id
        self.arena_align = 64 << 20
        try:
            with open(self.proc + "/exe", "rb") as fh:
                head = fh.read(5)
            if head[:4] == b"\x7fELF" and head[4:5] == b"\x01":
                self.arena_align = 1 << 20       # glibc HEAP_MAX_SIZE on 32-bit
        except OSError:
            pass
        self.build_id = file_build_id(self.proc + "/exe")

    # -- files
    def _open(self, name: str) -> int:
        fd = self._fds.get(name)
        if fd is None:
            path = "/proc/meminfo" if name == "meminfo" else "%s/%s" % (self.proc, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except (FileNotFoundError, ProcessLookupError):
                raise ProcessGone()
            except PermissionError:
                raise _denied(path)
            except OSError as e:
                raise MemleakError("cannot open %s: %s" % (path, e.strerror))
            self._fds[name] = fd
        return fd

    def _open_dir(self, path: str) -> int:
        try:
            return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError):
            raise ProcessGone()
        except PermissionError:
            raise _denied(path)

    def _read(self, name: str) -> bytes:
        """The whole file, read again through a descriptor kept open (smaps and status opened on
        this process stay on it: a recycled pid never mixes in)."""
        fd = self._open(name)
        try:
            return _read_fd(fd)
        except (ProcessLookupError, FileNotFoundError):
            raise ProcessGone()
        except PermissionError:
            raise _denied("%s/%s" % (self.proc, name))
        except OSError as e:
            if e.errno == errno.ESRCH:
                raise ProcessGone()
            raise MemleakError("cannot read %s/%s: %s" % (self.proc, name, e.strerror))

    def _stat_of(self, tid: int):
        try:
            fd = os.open("%d/stat" % tid, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.task_fd)
        except OSError:
            return None
        try:
            return parse_task_stat(os.read(fd, 4096))
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)

    def exited(self, timeout: float = 0.0) -> bool:
        """Wait up to ``timeout`` s; True as soon as the process has exited (pidfd readable)."""
        if self.pidfd is None:
            if timeout > 0:
                time.sleep(timeout)
            return not os.path.exists(self.proc)
        import select
        p = select.poll()
        p.register(self.pidfd, select.POLLIN)
        return bool(p.poll(max(0, int(math.ceil(timeout * 1000)))))

    def close(self) -> None:
        for fd in list(self._fds.values()) + [getattr(self, "task_fd", None), self.pidfd]:
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fds = {}
        self.task_fd = self.pidfd = None

    # -- one sample
    def take(self):
        """(wall time, monotonic, maps, status, {tid: stat tuple}, meminfo); ProcessGone when the
        process is (or became, during the reading) a zombie or is gone."""
        wall, t = time.time(), time.monotonic()
        status = parse_status(self._read("status"))
        if status.get("State", "")[:1] in ("Z", "X"):
            raise ProcessGone()
        smaps = self._read("smaps")
        if not smaps:
            # exec() gave the process a new mm (our descriptor holds the old one), or it is exiting
            os.close(self._fds.pop("smaps"))
            smaps = self._read("smaps")
            if not smaps:
                raise ProcessGone()
        maps = parse_smaps(smaps)
        threads = {}
        try:
            tids = os.listdir(self.task_fd)
        except (FileNotFoundError, ProcessLookupError):
            raise ProcessGone()
        for name in tids:
            tid = int(name)
            st = self._stat_of(tid)
            if st is not None:
                threads[tid] = st
        meminfo = parse_meminfo(self._read("meminfo"))
        if self.exited(0):
            raise ProcessGone()                  # it exited while we read: that sample may be torn
        return wall, t, maps, status, threads, meminfo


# ---------------------------------------------------------------------------------------------
# the run

class Session:
    def __init__(self, w: Watcher, args):
        self.w, self.args = w, args
        self.regions: Dict[tuple, _Region] = {}        # present, by (start, kind, path)
        self.gone_regions: Dict[tuple, _Region] = {}   # went away (revived if they come back)
        self.threads: Dict[int, _Thread] = {}
        self.gone_threads: Dict[int, _Thread] = {}
        self.n = 0
        self.first = self.last = None                  # (t, status, meminfo)
        self.prev_t = None
        self.nmaps = 0
        self._frags: Dict[tuple, str] = {}
        self._frame_lines = 0
        self.clock0 = None                             # (monotonic, own CPU s) when the loop started
        self.target = {"kind": "live", "pid": w.pid, "exe": w.exe, "build_id": w.build_id}
        self._target_json = json.dumps(self.target)

    # -- bookkeeping
    def update(self, t, maps, status, threads, meminfo):
        prev_t = self.prev_t
        align = self.w.arena_align
        old = self.regions
        cur: Dict[tuple, _Region] = {}
        unmatched = []
        for m in maps:
            kind, hint = classify(m[0], m[1], m[2], m[3], align)
            key = (m[0], kind, m[3])
            r = old.pop(key, None)
            if r is None:
                unmatched.append((m, kind, hint, key))
                continue
            self._move(r, m, hint, t)
            cur[key] = r
        if unmatched:
            by_end = {(r.end, r.kind, r.path): k for k, r in old.items()}
            for m, kind, hint, key in unmatched:
                k = by_end.pop((m[1], kind, m[3]), None)
                r = old.pop(k, None) if k is not None else None
                if r is None:
                    r = self.gone_regions.pop(key, None)      # back at the same place: same region
                    if r is not None:
                        r.present = True
                if r is None:
                    r = _Region(m, kind, hint, t, prev_t)
                else:
                    self._move(r, m, hint, t)
                cur[key] = r
        for key, r in old.items():               # not there any more
            r.present = False
            r.prev_rss, r.prev_t, r.rss, r.t = r.rss, r.t, 0, t
            self.gone_regions[key] = r
        while len(self.gone_regions) > KEEP_GONE:
            del self.gone_regions[next(iter(self.gone_regions))]
        self.regions = cur
        self.nmaps = len(maps)

        for tid, st in threads.items():
            th = self.threads.get(tid)
            if th is not None and th.starttime != st[6]:   # tid reused by a new thread
                th.present = False
                self.gone_threads[tid] = th
                th = None
            if th is None:
                self.threads[tid] = _Thread(tid, st, t, prev_t)
            else:
                th.update(st, t)
        for tid in [tid for tid in self.threads if tid not in threads]:
            th = self.threads.pop(tid)
            th.present = False
            self.gone_threads[tid] = th
        while len(self.gone_threads) > KEEP_GONE:
            del self.gone_threads[next(iter(self.gone_threads))]

        if self.first is None:
            self.first = (t, status, meminfo)
        self.last = (t, status, meminfo)
        self.prev_t = t

    @staticmethod
    def _move(r, m, hint, t):
        r.prev_rss, r.prev_t = r.rss, r.t
        r.start, r.end, r.perms, r.rss, r.t, r.hint = m[0], m[1], m[2], m[4], t, hint

    # -- the sample document
    def sample_json(self, wall, t, maps, status, threads, meminfo) -> bytes:
        align = self.w.arena_align
        frags, old = {}, self._frags
        parts = []
        for m in maps:
            f = old.get(m)
            if f is None:
                start, end, perms, path, rss, pd, sw = m
                kind, hint = classify(start, end, perms, path, align)
                f = ('{"start":"0x%x","end":"0x%x","size":%d,"perms":%s,"kind":"%s","path":%s,"hint":%s,'
                     '"rss":%d,"private_dirty":%d,"swap":%d}' % (
                         start, end, end - start, json.dumps(perms), kind, json.dumps(path), json.dumps(hint),
                         rss, pd, sw))
            frags[m] = f
            parts.append(f)
        self._frags = frags
        status = {k: v for k, v in status.items() if k != "Tgid"}
        ths = [{"tid": tid, "comm": st[0], "minflt": st[2], "majflt": st[3], "utime": round(st[4] / _CLK_TCK, 2),
                "stime": round(st[5] / _CLK_TCK, 2)} for tid, st in sorted(threads.items())]
        when = datetime.datetime.fromtimestamp(wall).astimezone().isoformat(timespec="seconds")
        doc = ('{"schema":"%s","time":"%s","monotonic":%r,"target":%s,\n"maps":[\n%s],\n"status":%s,\n'
               '"threads":%s,\n"meminfo":%s}\n' % (
                   SCHEMA, when, round(t, 6), self._target_json, ",\n".join(parts),
                   json.dumps(status), json.dumps(ths), json.dumps(meminfo)))
        return doc.encode()

    # -- reports
    def totals(self) -> dict:
        if self.first is None:
            return {}
        (t0, s0, m0), (t1, s1, m1) = self.first, self.last
        dt = t1 - t0
        out = {}
        for key, name in (("VmRSS", "rss"), ("RssAnon", "anon"), ("RssFile", "file"), ("RssShmem", "shmem"),
                          ("VmSwap", "swap"), ("VmSize", "vmsize")):
            a, b = s0.get(key), s1.get(key)
            out[name] = b
            out[name + "_delta"] = (b - a) if a is not None and b is not None else None
            out[name + "_mib_per_min"] = _per_min(out[name + "_delta"] / dt) if dt > 0 and out[name + "_delta"] is not None else None
        for key, name in (("Committed_AS", "committed_as"), ("MemAvailable", "mem_available")):
            a, b = m0.get(key), m1.get(key)
            out[name] = b
            out[name + "_delta"] = (b - a) if a is not None and b is not None else None
            out[name + "_mib_per_min"] = _per_min(out[name + "_delta"] / dt) if dt > 0 and out[name + "_delta"] is not None else None
        return out

    def growing(self) -> List[_Region]:
        rs = [r for r in self.regions.values() if r.rss > r.rss0]
        rs.sort(key=lambda r: (-(r.rss - r.rss0), r.start))
        return rs

    def ranked_threads(self, with_gone=False) -> List[_Thread]:
        ths = list(self.threads.values()) + (list(self.gone_threads.values()) if with_gone else [])
        ths.sort(key=lambda th: (-(th.minflt_rate() or 0), -(th.minflt - th.min0), th.tid))
        return ths

    def summary(self, ended: str, wall_s: float, cpu_s: float) -> dict:
        seconds = (self.last[0] - self.first[0]) if self.first else 0.0

        def region(r):
            return {"start": "0x%x" % r.start, "end": "0x%x" % r.end, "perms": r.perms, "kind": r.kind,
                    "path": r.path, "hint": r.hint, "new": r.new, "rss_first": r.rss0, "rss": r.rss,
                    "rss_delta": r.rss - r.rss0, "mib_per_min": _per_min(r.rate())}
        gone = sorted(self.gone_regions.values(), key=lambda r: -r.prev_rss)
        return {
            "schema": SUMMARY_SCHEMA, "target": self.target, "samples": self.n, "seconds": round(seconds, 3),
            "interval": self.args.interval, "ended": ended, "samples_dir": self.args.out,
            "mappings": self.nmaps,
            "growth": [region(r) for r in self.growing()],
            "gone": [{"start": "0x%x" % r.start, "end": "0x%x" % r.end, "kind": r.kind, "path": r.path,
                      "rss_last_seen": r.prev_rss} for r in gone],
            "threads": [{"tid": th.tid, "comm": th.comm, "minflt_per_s": _round(th.minflt_rate()),
                         "minflt_delta": th.minflt - th.min0, "majflt_per_s": _round(th.majflt_rate()),
                         "cpu_percent": _round(th.cpu_percent()), "exited": not th.present}
                        for th in self.ranked_threads(with_gone=True)],
            "totals": self.totals(),
            "cost": {"cpu_s": round(cpu_s, 3), "wall_s": round(wall_s, 3),
                     "cpu_percent": round(100.0 * cpu_s / wall_s, 2) if wall_s > 0 else None},
        }

    def frame(self, top: int) -> List[str]:
        """The full table."""
        w, tot = self.w, self.totals()
        seconds = (self.last[0] - self.first[0]) if self.first else 0.0
        lines = ["watch pid %d (%s): %d sample%s every %g s over %.1f s, %d mappings, %d thread%s%s" % (
            w.pid, w.exe, self.n, "" if self.n == 1 else "s", self.args.interval, seconds, self.nmaps,
            len(self.threads), "" if len(self.threads) == 1 else "s", self.cost_text())]
        rows = []
        for label, key in (("RSS", "rss"), ("RSS - shared (RssAnon)", "anon"), ("RssFile", "file"),
                           ("RssShmem", "shmem"), ("VmSwap", "swap"), ("Committed_AS (system)", "committed_as"),
                           ("MemAvailable (system)", "mem_available")):
            rate = tot.get(key + "_mib_per_min")
            rows.append([label, _size(tot.get(key)), _delta(tot.get(key + "_delta")),
                         "-" if rate is None else "%+.1f" % rate])
        lines += _table(["total", "now", "change", "MiB/min"], rows)
        grow = self.growing()
        lines.append("")
        lines.append("regions that grew: %d of %d mappings (matched by start and kind; new = appeared while "
                     "watched)" % (len(grow), self.nmaps))
        if grow:
            rows = [["0x%x" % r.start, "0x%x" % r.end, r.perms, r.kind, _size(r.rss), _delta(r.rss - r.rss0),
                     _rate(r.rate()), _rate(r.last_rate()),
                     " ".join(x for x in (("new" if r.new else ""), r.path or "", r.hint or "") if x)]
                    for r in grow[:top]]
            lines += _table(["start", "end", "perms", "kind", "rss", "change", "MiB/min", "last", "new/path/hint"], rows)
            if len(grow) > top:
                lines.append("... %d more (--top)" % (len(grow) - top))
        lines.append("")
        ths = self.ranked_threads()
        lines.append("threads by minor-fault rate (a minor fault is the first touch of a new page): %d" % len(ths))
        rows = [[th.tid, th.comm, _fmt(th.minflt_rate(), "%.0f"), _fmt(th.last_minflt_rate(), "%.0f"),
                 th.minflt - th.min0, _fmt(th.majflt_rate(), "%.1f"), _fmt(th.cpu_percent(), "%.0f")]
                for th in ths[:max(3, top // 2)]]
        lines += _table(["tid", "comm", "minflt/s", "last", "minflt", "majflt/s", "cpu%"], rows)
        return lines

    def cost_text(self) -> str:
        """The watcher's own CPU use so far (reading smaps walks every resident page: the cost grows
        with the process's RSS in 4 KiB pages, not only with its number of mappings)."""
        if self.clock0 is None:
            return ""
        wall = time.monotonic() - self.clock0[0]
        return "; watcher CPU %.1f%%" % (100.0 * (_cpu_self() - self.clock0[1]) / wall) if wall > 0 else ""

    def line(self) -> str:
        """One line per sample (output not a terminal)."""
        tot = self.totals()
        s = "#%d %.1fs rss %s (%s MiB/min) anon %s (%s) Committed_AS %s (%s)" % (
            self.n, (self.last[0] - self.first[0]), _size(tot.get("rss")), _fmtr(tot.get("rss_mib_per_min")),
            _size(tot.get("anon")), _fmtr(tot.get("anon_mib_per_min")), _size(tot.get("committed_as")),
            _fmtr(tot.get("committed_as_mib_per_min")))
        grow = self.growing()
        if grow:
            r = grow[0]
            s += " | top region 0x%x %s%s %s (%s MiB/min)" % (r.start, r.kind, " new" if r.new else "",
                                                              _delta(r.rss - r.rss0), _rate(r.rate()))
        ths = self.ranked_threads()
        if ths and self.n > 1:
            th = ths[0]
            s += " | top thread %d %s %s minflt/s" % (th.tid, json.dumps(th.comm), _fmt(th.minflt_rate(), "%.0f"))
        return s


def _round(x, nd=2):
    return None if x is None else round(x, nd)


def _fmt(x, f):
    return "-" if x is None else f % x


def _fmtr(x):
    return "-" if x is None else "%+.1f" % x


# ---------------------------------------------------------------------------------------------
# arguments

class _Parser(argparse.ArgumentParser):
    def __init__(self, out, **kw):
        super().__init__(**kw)
        self._out = out

    def error(self, message):
        raise UsageError("%s: %s (see --help)" % (self.prog, message))

    def exit(self, status=0, message=None):
        if status:
            raise UsageError((message or "bad arguments").strip())
        raise _HelpShown()

    def _print_message(self, message, file=None):
        if message:
            self._out.write(message)


def _interval(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not math.isfinite(v) or v < MIN_INTERVAL:
        raise argparse.ArgumentTypeError("--interval must be a number of seconds >= %g, not %r" % (MIN_INTERVAL, text))
    return v


def _positive(name):
    def conv(text):
        try:
            v = int(text)
        except ValueError:
            v = 0
        if v < 1:
            raise argparse.ArgumentTypeError("%s must be a whole number >= 1, not %r" % (name, text))
        return v
    return conv


def build_parser(out) -> argparse.ArgumentParser:
    p = _Parser(out, prog=PROG,
                description="Watch a live process's memory from /proc (no gdb, no ptrace, never stopped): the "
                            "regions that grow, their MiB/min, totals, and the threads whose minor faults rise.",
                epilog="Ends after --count samples, when the process exits (exit 0) or on Ctrl-C (exit 130); "
                       "the --json summary is written in every case.")
    p.add_argument("--pid", required=True, type=_positive("--pid"), help="the process to watch")
    p.add_argument("--interval", type=_interval, default=1.0, metavar="S", help="seconds between samples (default 1)")
    p.add_argument("--count", type=_positive("--count"), metavar="N", help="stop after N samples (default: run on)")
    p.add_argument("--out", metavar="DIR", help="write every sample to DIR/sample-0001.json ... (0600; DIR made 0700)")
    p.add_argument("--force", action="store_true", help="--out DIR may hold samples of an earlier run: remove them")
    p.add_argument("--json", metavar="FILE", help="write a summary to FILE at the end (0600)")
    p.add_argument("--top", type=_positive("--top"), default=10, metavar="N", help="regions shown (default 10)")
    return p


def _prepare_out(folder: str, force: bool) -> None:
    from .files import open_folder
    fd = open_folder(folder, create=True)
    try:
        old = sorted(n for n in os.listdir(fd) if _SAMPLE_NAME.match(n))
        if old and not force:
            raise UsageError("%s already holds samples (%s): give another --out, or --force to remove them"
                             % (folder, old[0]))
        for n in old:
            try:
                os.unlink(n, dir_fd=fd)
            except OSError as e:
                raise MemleakError("cannot remove %s/%s: %s" % (folder, n, e.strerror))
    finally:
        os.close(fd)


def _check_json_target(path: str) -> None:
    from .files import open_folder, split
    folder, _name = split(path)
    os.close(open_folder(folder))
    if os.path.isdir(path):
        raise UsageError("--json %s is a folder" % path)


def _cpu_self() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main(argv: List[str], out=sys.stdout, err=sys.stderr) -> int:
    """Run ``watch`` with ``argv`` (the arguments after ``watch``); returns the exit code:
    0 (count reached or the process exited), 1 error, 2 usage error, 130 interrupted."""
    try:
        try:
            args = build_parser(out).parse_args(argv)
        except _HelpShown:
            return 0
        w = Watcher(args.pid)
        try:
            if args.out:
                _prepare_out(args.out, args.force)
            if args.json:
                _check_json_target(args.json)
        except BaseException:
            w.close()
            raise
    except UsageError as e:
        err.write("error: %s\n" % e)
        return 2
    except MemleakError as e:
        err.write("error: %s\n" % e)
        return 1
    except KeyboardInterrupt:
        err.write("interrupted after 0 samples\n")
        return 130
    try:
        return _run(w, args, out, err)
    except MemleakError as e:
        err.write("error: %s\n" % e)
        return 1
    except KeyboardInterrupt:                    # a second Ctrl-C while the summary was written
        err.write("interrupted\n")
        return 130
    finally:
        w.close()


def _run(w: Watcher, args, out, err) -> int:
    from .files import write_file
    s = Session(w, args)
    tty = bool(getattr(out, "isatty", None) and out.isatty())
    wall0, cpu0 = time.monotonic(), _cpu_self()
    s.clock0 = (wall0, cpu0)
    ended, error = None, None
    main_thread = threading.current_thread() is threading.main_thread()
    old_term = None
    if main_thread:
        def on_term(signum, frame):
            raise KeyboardInterrupt()
        old_term = signal.signal(signal.SIGTERM, on_term)
    guard = {signal.SIGINT, signal.SIGTERM}
    t_first = None
    warned = False
    try:
        while True:
            try:
                wall, t, maps, status, threads, meminfo = w.take()
            except ProcessGone:
                ended = "process exited"
                break
            if t_first is None:
                t_first = t
            doc = s.sample_json(wall, t, maps, status, threads, meminfo) if args.out else None
            # a sample is recorded whole or not at all: Ctrl-C waits until it is on disk and counted
            if main_thread:
                signal.pthread_sigmask(signal.SIG_BLOCK, guard)
            try:
                if doc is not None:
                    write_file(os.path.join(args.out, "sample-%04d.json" % (s.n + 1)), doc)
                s.update(t, maps, status, threads, meminfo)
                s.n += 1
            finally:
                if main_thread:
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, guard)
            _show(s, args, out, tty)
            if s.n == 3 or (s.n > 3 and s.n % 50 == 0 and not warned):
                warned = _warn_cost(s, args, err) or warned
            if args.count and s.n >= args.count:
                ended = "count"
                break
            now = time.monotonic()
            k = max(s.n, int((now - t_first) / args.interval) + 1)     # skip slots we overran
            if w.exited(t_first + k * args.interval - now):
                ended = "process exited"
                break
    except KeyboardInterrupt:
        ended = "interrupted"
    except MemleakError as e:
        ended, error = "error", e
    finally:
        if main_thread and old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    wall_s, cpu_s = time.monotonic() - wall0, _cpu_self() - cpu0
    if not tty and s.n:
        out.write("\n".join(s.frame(args.top)) + "\n")
    try:
        out.flush()
    except (OSError, ValueError):
        pass
    if args.json:
        from .render import write_json
        write_json(args.json, s.summary(ended, wall_s, cpu_s))
    where = []
    if args.out and s.n:
        where.append("samples in %s" % args.out)
    if args.json:
        where.append("summary in %s" % args.json)
    tail = (" (%s)" % ", ".join(where)) if where else ""
    if ended == "error":
        err.write("error: %s (after %d samples%s)\n" % (error, s.n, (", " + ", ".join(where)) if where else ""))
        return 1
    if ended == "interrupted":
        err.write("interrupted after %d samples%s\n" % (s.n, tail))
        return 130
    if ended == "process exited":
        err.write("process %d exited after %d samples%s\n" % (w.pid, s.n, tail))
        return 0
    err.write("stopped after %d samples (--count %d)%s\n" % (s.n, args.count, tail))
    return 0


WARN_PERCENT = 5.0


def _warn_cost(s: Session, args, err) -> bool:
    """One warning when the watcher itself uses more than WARN_PERCENT of a CPU: reading smaps
    walks every resident page (≈ 40 ms per GiB of 4 KiB pages) under the process's mmap lock."""
    wall = time.monotonic() - s.clock0[0]
    cpu = _cpu_self() - s.clock0[1]
    if wall <= 0 or 100.0 * cpu / wall <= WARN_PERCENT:
        return False
    per = cpu / s.n
    err.write("warning: watch uses %.0f%% of a CPU (%.0f ms per sample: reading smaps walks every resident page, "
              "holding the process's mmap lock for reading); --interval %g would keep it under 2%%\n" % (
                  100.0 * cpu / wall, per * 1000, max(args.interval, math.ceil(per / 0.02 * 10) / 10)))
    err.flush()
    return True


def _show(s: Session, args, out, tty: bool) -> None:
    try:
        if tty:
            import shutil
            rows = shutil.get_terminal_size((100, 40)).lines - 1
            lines = s.frame(args.top)[:max(rows, 5)]
            up = "\x1b[%dF\x1b[J" % s._frame_lines if s._frame_lines else ""
            out.write(up + "\n".join(lines) + "\n")
            s._frame_lines = len(lines)
        else:
            out.write(s.line() + "\n")
        out.flush()
    except BrokenPipeError:
        raise MemleakError("output closed")
