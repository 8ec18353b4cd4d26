"""memleak dump: regions to files (0600) plus manifest.json."""
from __future__ import annotations

import datetime
import errno
import hashlib
import os

from .cmd_maps import parse_kinds
from .command import Command, add_range_arguments, resolve_range
from .errors import MemleakError, UsageError
from .maps import ANON_KINDS, classify
from .progress import Progress, iter_chunks
from .render import table, write_json
from .textparse import human_size

CHUNK = 4 << 20


def _open_new(path: str, force: bool) -> int:
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= os.O_TRUNC if force else os.O_EXCL
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        if e.errno == errno.EEXIST:
            raise MemleakError("%s exists: pass --force to overwrite" % path)
        if e.errno == errno.ELOOP:
            raise MemleakError("%s is a symbolic link: refusing to follow it" % path)
        raise MemleakError("cannot create %s: %s" % (path, e.strerror))
    os.fchmod(fd, 0o600)
    return fd


def prepare_folder(folder: str) -> str:
    """Create the dump folder 0700 (or reuse it); refuse a folder that is a symlink."""
    folder = os.path.abspath(folder)
    if os.path.islink(folder):
        raise MemleakError("%s is a symbolic link: give the real folder" % folder)
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    except OSError as e:
        raise MemleakError("cannot create folder %s: %s" % (folder, e.strerror))
    if not os.path.isdir(folder):
        raise MemleakError("%s is not a folder" % folder)
    return folder


def dump_range(target, start, end, path, force, progress=None):
    """Write [start, end) to ``path``; unreadable pages become holes (zeros) and are returned."""
    skipped = []
    h = hashlib.sha256()
    fd = _open_new(path, force)
    try:
        pos = start
        for addr, data in iter_chunks(target, start, end, CHUNK, progress, skipped):
            if addr > pos:  # a hole: keep file offsets equal to address offsets
                h.update(bytes(addr - pos))
                os.lseek(fd, addr - start, os.SEEK_SET)
            mv = memoryview(data)
            h.update(mv)
            while len(mv):
                n = os.write(fd, mv)
                mv = mv[n:]
            pos = addr + len(data)
        if pos < end:
            h.update(bytes(end - pos))
        os.ftruncate(fd, end - start)
    finally:
        os.close(fd)
    return h.hexdigest(), skipped


class DumpCommand(Command):
    name = "dump"
    summary = "Write anonymous regions (or START END) to files 0600 with a manifest.json."

    def add_arguments(self, p):
        add_range_arguments(p)
        p.add_argument("--kind", metavar="KIND[,KIND]",
                       help="regions of these kinds (default: heap,arena,anon; writable parts only)")
        p.add_argument("-o", "--output", metavar="DIR", default=None,
                       help="folder for the files (default: ./memleak-dump-PID)")
        p.add_argument("--force", action="store_true",
                       help="dump beyond 'max-dump-size' and overwrite existing files")

    def run(self, ctx, args):
        t = ctx.target
        rng = resolve_range(ctx, args)
        maps = classify(t)
        jobs = []
        if rng is not None:
            if args.kind:
                raise UsageError("give either START END or --kind, not both")
            start, end = rng
            kinds = [m.kind for m in maps if m.start < end and start < m.end]
            if not kinds:
                raise MemleakError("0x%x-0x%x is not mapped in the target (see 'memleak maps')" % (start, end))
            jobs.append((start, end, kinds[0] if len(set(kinds)) == 1 else "mixed"))
        else:
            kinds = parse_kinds(args.kind) or list(ANON_KINDS)
            explicit = bool(args.kind)
            for m in maps:
                if m.kind in kinds and (explicit or "w" in m.perms[:3]):
                    jobs.append((m.start, m.end, m.kind))
            if not jobs:
                raise MemleakError("no mapping of kind %s to dump" % ",".join(kinds))
        total = sum(e - s for s, e, _ in jobs)
        limit = ctx.settings.max_dump_size
        if total > limit and not args.force:
            raise MemleakError("refusing to dump %s (%d bytes) over max-dump-size %s: pass --force or raise "
                               "'set memleak max-dump-size'" % (human_size(total), total, human_size(limit)))
        folder = prepare_folder(args.output or "memleak-dump-%s" % (t.pid if t.pid else "target"))
        manifest_path = os.path.join(folder, "manifest.json")
        if os.path.lexists(manifest_path) and not args.force:
            raise MemleakError("%s exists: pass --force to overwrite, or choose another --output" % manifest_path)
        prog = Progress("dump", total, ctx.progress_sink())
        entries = []
        for start, end, kind in jobs:
            name = "%s-%x-%x.bin" % (kind, start, end)
            sha, skipped = dump_range(t, start, end, os.path.join(folder, name), args.force, prog)
            entries.append({"file": name, "start": hex(start), "end": hex(end), "kind": kind, "size": end - start,
                            "sha256": sha,
                            "skipped": [{"start": hex(a), "end": hex(b), "reason": r} for a, b, r in skipped]})
        prog.finish()
        write_json(manifest_path, {"target": t.describe(),
                                   "created": datetime.datetime.now().isoformat(timespec="seconds"),
                                   "regions": entries}, mode=0o600)
        rows = [[e["file"], e["kind"], human_size(e["size"]),
                 human_size(sum(int(s["end"], 16) - int(s["start"], 16) for s in e["skipped"]))] for e in entries]
        ctx.write(table(rows, ["file", "kind", "size", "skipped"]) + "\n")
        nskip = sum(len(e["skipped"]) for e in entries)
        ctx.write("%d region(s), %s written to %s%s\n" % (
            len(entries), human_size(total), folder,
            "; %d unreadable range(s) left as zeros, listed in manifest.json" % nskip if nskip else ""))
