"""memleak whatis ADDR: what an address is (mapping, stack owner and frame, heap chunk and
class, symbol, code around it)."""
from __future__ import annotations

from .base import Command, add_json_argument
from ..errors import MemleakError, UsageError
from ..render import write_json
from ..whatis import whatis


class WhatisCommand(Command):
    name = "whatis"
    summary = "Say what an address is: mapping, owning thread/frame, heap chunk and class, symbol, code."

    def add_arguments(self, p):
        p.add_argument("address", metavar="ADDR", nargs="+",
                       help="addresses (gdb expressions inside gdb, as for 'x': a pointer's value, or the "
                            "address of a variable, array or struct; quote expressions with spaces)")
        add_json_argument(p)

    def run(self, ctx, args):
        # several addresses, each its own expression; if they do not all parse alone, the words
        # are one expression ('$rsp + 8' unquoted)
        try:
            addrs = [ctx.evaluate(a) for a in args.address]
        except MemleakError:
            if len(args.address) == 1:
                raise
            addrs = [ctx.evaluate(" ".join(args.address))]
        top = 1 << (8 * ctx.target.pointer_size)
        results = []
        for addr in addrs:
            if addr < 0 or addr >= top:
                raise UsageError("not an address for this %d-bit target: 0x%x" % (8 * ctx.target.pointer_size, addr))
            res = whatis(ctx.target, addr)
            ctx.write("0x%x: %s\n" % (addr, "\n  ".join(res["lines"])))
            results.append(res)
        if args.json:
            write_json(args.json, results[0] if len(results) == 1 else {"results": results})
