"""memleak maps: every mapping, classified."""
from __future__ import annotations

from .base import Command, add_json_argument
from ..errors import UsageError
from ..maps import HEAP_KINDS, KINDS, classify, select, totals
from ..render import table, write_json
from ..textparse import human_size, parse_size


# "heap" is all memory malloc owns, in every command: the main heap and every arena heap; the
# parts keep their own names
KIND_GROUPS = {"heap": HEAP_KINDS, "arena": ("arena-heap",)}   # "arena": an older name, still accepted
KIND_CHOICES = ("heap",) + KINDS   # what --kind offers (completion, help)


def parse_kinds(text):
    if not text:
        return None
    kinds = []
    for k in (k.strip() for k in text.split(",")):
        if not k:
            continue
        if k in KIND_GROUPS:
            kinds.extend(KIND_GROUPS[k])
        elif k in KINDS:
            kinds.append(k)
        else:
            raise UsageError("unknown kind %s; kinds are: %s (heap = main-heap + arena-heap)" % (
                k, ", ".join(KIND_CHOICES)))
    return list(dict.fromkeys(kinds))


class MapsCommand(Command):
    name = "maps"
    summary = ("List every mapping classified: main heap, arena heap, anon, stack, thread stack, TLS, guard, "
               "shm, file, vdso.")

    def add_arguments(self, p):
        p.add_argument("--kind", metavar="KIND[,KIND]", help="only these kinds (%s; heap = main-heap + arena-heap)" % ",".join(KIND_CHOICES))
        p.add_argument("--min-size", metavar="SIZE", default="0", help="only mappings of at least SIZE (64K, 1M, …)")
        p.add_argument("--sort", choices=("addr", "size", "rss"), default="addr", help="row order (default addr)")
        add_json_argument(p)

    def run(self, ctx, args):
        kinds = parse_kinds(args.kind)
        try:
            min_size = parse_size(args.min_size)
        except ValueError as e:
            raise UsageError(str(e))
        t = ctx.target
        rows = select(classify(t), kinds, min_size)
        if args.sort == "size":
            rows.sort(key=lambda m: -m.size)
        elif args.sort == "rss":
            rows.sort(key=lambda m: -(m.rss or 0))
        live = any(m.rss is not None for m in rows)
        headers = ["start", "end", "size", "perms", "kind", "owner/path"] + (["rss", "dirty"] if live else [])
        body = []
        for m in rows:
            r = ["0x%x" % m.start, "0x%x" % m.end, human_size(m.size), m.perms, m.kind,
                 (m.name or "") + ("" if m.note is None or m.name == m.note else " (%s)" % m.note)]
            if live:
                r += [human_size(m.rss), human_size(m.private_dirty)]
            body.append(r)
        ctx.write(table(body, headers) + "\n")
        tot = totals(rows)
        trows = [[k, v["count"], human_size(v["size"])] + ([human_size(v["rss"])] if live else [])
                 for k, v in sorted(tot.items(), key=lambda kv: -kv[1]["size"])]
        all_size = sum(v["size"] for v in tot.values())
        trows.append(["total", sum(v["count"] for v in tot.values()), human_size(all_size)]
                     + ([human_size(sum(v["rss"] or 0 for v in tot.values()))] if live else []))
        ctx.write("\n" + table(trows, ["kind", "count", "size"] + (["rss"] if live else [])) + "\n")
        if args.json:
            write_json(args.json, {
                "target": t.describe(),
                "mappings": [m.to_json() for m in rows],
                "totals": {k: {"count": v["count"], "size": v["size"], "rss": v["rss"]} for k, v in tot.items()},
            })
