"""memleak dump: regions to files (0600) plus manifest.json."""
from __future__ import annotations

import datetime
import hashlib
import os

from .maps import parse_kinds
from .base import Command, add_json_argument, add_range_arguments, clip_range, resolve_range
from ..errors import MemleakError, UsageError
from ..files import FileSet, WriteError, write_all
from ..maps import ANON_KINDS, classify
from ..memory.stream import iter_chunks
from ..progress import Progress
from ..render import table, write_json
from ..textparse import human_size
from ..vocabulary import plural

CHUNK = 4 << 20


def dump_range(target, start, end, files, name, force, progress=None):
    """Write [start, end) to the file ``name`` of ``files`` (a FileSet); unreadable pages become
    holes (zeros) and are returned."""
    skipped = []
    h = hashlib.sha256()
    path = os.path.join(files.folder, name)
    fd = files.create(name, force)
    written = 0
    try:
        pos = start
        for addr, data in iter_chunks(target, start, end, CHUNK, progress, skipped):
            if addr > pos:  # a hole: keep file offsets equal to address offsets
                h.update(bytes(addr - pos))
                os.lseek(fd, addr - start, os.SEEK_SET)
            h.update(memoryview(data))
            written = write_all(fd, data, path, written)
            pos = addr + len(data)
        if pos < end:
            h.update(bytes(end - pos))
        try:
            os.ftruncate(fd, end - start)
        except OSError as e:
            raise WriteError(path, e, written)
    finally:
        os.close(fd)
    return h.hexdigest(), skipped, written


class DumpCommand(Command):
    name = "dump"
    summary = "Write anonymous regions (or START END) to files 0600 with a manifest.json."

    def add_arguments(self, p):
        add_range_arguments(p)
        p.add_argument("--kind", metavar="KIND[,KIND]",
                       help="regions of these kinds (default: heap,anon; writable parts only)")
        p.add_argument("-o", "--output", metavar="DIR", default=None,
                       help="folder for the files (default: ./memleak-dump-PID)")
        p.add_argument("--force", action="store_true",
                       help="dump beyond 'max-dump-size' and overwrite existing files")
        add_json_argument(p)

    def run(self, ctx, args):
        t = ctx.target
        rng = resolve_range(ctx, args)
        maps = classify(t)
        jobs = []
        if rng is not None:
            if args.kind:
                raise UsageError("give either START END or --kind, not both")
            # one file per mapped piece: unmapped space is never read nor written
            jobs = [(a, b, m.kind) for a, b, m in clip_range(rng, maps)]
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
        folder = os.path.abspath(args.output or "memleak-dump-%s" % (t.pid if t.pid else "target"))
        manifest_path = os.path.join(folder, "manifest.json")
        if os.path.lexists(manifest_path) and not args.force:
            raise MemleakError("%s exists: pass --force to overwrite, or choose another --output" % manifest_path)
        files = FileSet(folder)
        prog = Progress("dump", total, ctx.progress_sink())
        entries = []
        written = 0
        try:
            for start, end, kind in jobs:
                name = "%s-%x-%x.bin" % (kind, start, end)
                try:
                    sha, skipped, n = dump_range(t, start, end, files, name, args.force, prog)
                except WriteError as e:
                    raise MemleakError("cannot write %s: %s (%d bytes were written; the dump's files were removed)"
                                       % (e.path, e.strerror, written + e.written)) from None
                written += n
                entries.append({"file": name, "start": hex(start), "end": hex(end), "kind": kind, "size": end - start,
                                "sha256": sha,
                                "skipped": [{"start": hex(a), "end": hex(b), "reason": r} for a, b, r in skipped]})
            prog.finish()
            # last, atomically: a manifest means a complete dump
            manifest = {"target": t.describe(), "created": datetime.datetime.now().isoformat(timespec="seconds"),
                        "regions": entries}
            write_json(manifest_path, manifest)
        except BaseException:
            files.discard()          # a failed or interrupted dump leaves nothing behind
            raise
        finally:
            files.close()
        rows = [[e["file"], e["kind"], human_size(e["size"]),
                 human_size(sum(int(s["end"], 16) - int(s["start"], 16) for s in e["skipped"]))] for e in entries]
        ctx.write(table(rows, ["file", "kind", "size", "skipped"]) + "\n")
        nskip = sum(len(e["skipped"]) for e in entries)
        ctx.write("%s, %s written to %s%s\n" % (
            plural(len(entries), "region"), human_size(total), folder,
            "; %s left as zeros, listed in manifest.json" % plural(nskip, "unreadable range") if nskip else ""))
        if args.json:
            write_json(args.json, dict(manifest, folder=folder))
