"""The census's raw-read baseline, run in the process it measures (offline Python, or gdb's Python
via `python exec(open(...).read())` with BENCH_OUT set): the ranges `vtable-census --heap` scans,
read in the same chunks (census.CHUNK), with the same scan threads (memory/stream.map_chunks:
one `preadv` per chunk into a reused buffer) and no analysis; interleaved with the census itself
(core/census.census, the function the command runs after its set-up), REPEAT times each.
Writes JSON: {"bytes", "chunk", "threads", "kernel", "raw": [s...], "census": [s...], "load": [...]}.

    python scripts/bench_rawread.py CORE OUT [REPEAT]          (offline)
"""
import json
import os
import sys
import time


def measure(target, out, repeat=5):
    from gdb_memleak.core import census as C
    from gdb_memleak.core import native
    from gdb_memleak.core.heap import heap_ranges
    from gdb_memleak.core.maps import classify
    from gdb_memleak.core.memory.stream import map_chunks, scan_workers
    from gdb_memleak.core.vtables import build_index
    maps = classify(target)
    ranges = heap_ranges(target, maps)
    ps = target.pointer_size
    ranges = [(s - s % ps, e) for s, e in ranges]
    index = build_index(target)

    class Buf:
        def __init__(self):
            self.buf = bytearray(C.CHUNK)

    def nothing(addr, data, sc):
        return None

    doc = {"bytes": sum(e - s for s, e in ranges), "chunk": C.CHUNK, "threads": scan_workers(),
           "kernel": native.status(), "raw": [], "census": [], "load": []}
    C.census(target, index, ranges, None, 0, None, maps)          # warm: page cache, kernel built
    for _ in range(repeat):
        with open("/proc/loadavg") as fh:
            doc["load"].append(fh.read().split()[0])
        t = time.monotonic()
        for _r in map_chunks(target, ranges, C.CHUNK, nothing, Buf):
            pass
        doc["raw"].append(time.monotonic() - t)
        t = time.monotonic()
        C.census(target, index, ranges, None, 0, None, maps)
        doc["census"].append(time.monotonic() - t)
    with open(out, "w") as fh:
        json.dump(doc, fh)
    return doc


if __name__ == "__main__" and "gdb" not in sys.modules:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from gdb_memleak.core.memory.elfcore import CoreTarget
    measure(CoreTarget(sys.argv[1]), sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 5)
elif "gdb" in sys.modules and os.environ.get("BENCH_OUT"):
    from gdb_memleak.gdbext.target import GdbTarget
    measure(GdbTarget(), os.environ["BENCH_OUT"], int(os.environ.get("BENCH_REPEAT", "5")))
