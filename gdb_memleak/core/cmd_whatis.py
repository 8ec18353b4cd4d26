"""memleak whatis ADDR: what an address is (mapping, stack owner and frame, heap chunk and
class, symbol, code around it)."""
from __future__ import annotations

from .command import Command, add_json_argument
from .errors import UsageError
from .render import write_json
from .whatis import whatis


class WhatisCommand(Command):
    name = "whatis"
    summary = "Say what an address is: mapping, owning thread/frame, heap chunk and class, symbol, code."

    def add_arguments(self, p):
        p.add_argument("address", metavar="ADDR", nargs="+", help="an address (a gdb expression inside gdb)")
        add_json_argument(p)

    def run(self, ctx, args):
        addr = ctx.evaluate(" ".join(args.address))
        if addr < 0 or addr >= 1 << (8 * ctx.target.pointer_size):
            raise UsageError("not an address for this %d-bit target: %s" % (8 * ctx.target.pointer_size,
                                                                            " ".join(args.address)))
        res = whatis(ctx.target, addr)
        ctx.write("0x%x: %s\n" % (addr, "\n  ".join(res["lines"])))
        if args.json:
            write_json(args.json, res)
