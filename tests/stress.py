"""Stress fixtures: tests/fixtures/stress_heap.c builds one glibc heap layout per scenario and prints
its own ground truth (one JSON line) before READY.

    exe = build_stress(workdir, "64")                       # "64", "32", "static", "static-pie"
    run, truth = run_stress(workdir, ["multiheap"])         # a live process at READY (run.kill() it)
    exe, core, truth = stress_core(workdir, ["corrupt", "tcache_cycle"], run=1)

Scenarios (argv): ``multiheap``, ``manythreads``, ``tunables`` (run with GLIBC_TUNABLES through
``env``), ``trim_align``, ``selfmap``, ``corrupt KIND`` (KIND in CORRUPT_KINDS); options
``seed=N threads=N rounds=N heaps=N dontdump=0|1``.  ``run=N`` passes ``seed=N`` (other sizes); addresses differ
from run to run anyway (ASLR stays on).

Truth fields common to every scenario:
  scenario, argv, pid, pointer_size, seed, heap_max, heap_info_size, exe_base,
  tunables {GLIBC_TUNABLES, parsed},
  live {count, bytes_requested, roots, table}   every block allocated and still referenced, from
                                                the global ``stress_live`` (roots) or through a
                                                pointer chain of live blocks
  leaked {count, direct, indirect, bytes_requested, by_shape, addresses, direct_addresses,
          indirect_addresses, next_chunk_free_or_top}
        addresses are malloc's return values (hex strings); direct/indirect as memcheck counts them
        (the lowest address of a leaked cycle is direct).  next_chunk_free_or_top: leaked blocks
        whose last usable word is the header of a free or top chunk, i.e. glibc's own top/bin
        pointers (main_arena is in libc's .data, a root) point into their usable size; they are
        leaked all the same
  freed {count}, threads_alive (main included), ncpu {online, sched},
  arenas_expected_min, arenas_expected_max   (glibc 2.36 arena_get2 with __get_nprocs)
  dontdump {regions, bytes}                  thread-arena PROT_NONE reserves madvise(MADV_DONTDUMP)'d
                                             before READY (dontdump=0 keeps them: gdb 13's gcore
                                             writes PROT_NONE mappings in full, 64 MiB each)
  marks {name: [addresses]}                  named blocks: heap_start_object, tail_object,
                                             live_chain_member, live_lastword_target,
                                             leaked_lastword_target, freed, aligned_*, realloc_* ...
and per scenario: arena (multiheap: glibc's heap_info chain newest first, creation order),
threads / arenas_observed / tcache_tail / probes (manythreads, tunables), trim (trim_align),
selfmap (selfmap), corruption {kind, corrupted_at, expect} (corrupt).
"""
from __future__ import annotations

import json
import os
import re
import subprocess

from conftest import Running, build

SRC = "stress_heap.c"
VARIANTS = {"64": (), "32": ("-m32",), "static": ("-static",), "static-pie": ("-static-pie",)}
SCENARIOS = ("multiheap", "manythreads", "tunables", "trim_align", "selfmap", "corrupt")
CORRUPT_KINDS = ("tcache_cycle", "tcache_wild", "zero_size", "heapinfo_self", "fastbin_cycle", "fake_tcache")
# GLIBC_TUNABLES values the tunables scenario is meant for (glibc 2.36 names, `ld.so --list-tunables`).
# Through the tunable, mmap_threshold has no upper bound in 2.36 (mallopt's HEAP_MAX/2 check is not
# applied: 32 MiB takes effect on i386 too) and turns the dynamic threshold off; it only matters
# once top cannot serve a request.  tcache_count above 65535 is ignored; arena_max >= 1.
TUNABLES = (
    "glibc.malloc.tcache_count=0",
    "glibc.malloc.tcache_count=3",
    "glibc.malloc.arena_max=1",
    "glibc.malloc.arena_max=2",
    "glibc.malloc.mmap_threshold=4096",
    "glibc.malloc.mmap_threshold=33554432",
)


def build_stress(workdir, variant="64"):
    """Compile the stress fixture for VARIANT into WORKDIR (cached: built once per workdir)."""
    if variant not in VARIANTS:
        raise ValueError("variant %r not in %s" % (variant, sorted(VARIANTS)))
    return build(workdir, SRC, "stress_heap-" + variant, VARIANTS[variant])


def _argv(exe, scenario_args, env, run):
    args = [str(a) for a in scenario_args]
    if run and not any(a.startswith("seed=") for a in args):
        args.append("seed=%d" % run)
    env = dict(env or {})
    pre = ["env"]
    if "GLIBC_TUNABLES" not in env:
        pre += ["-u", "GLIBC_TUNABLES"]         # an inherited value would change the layout
    pre += ["%s=%s" % kv for kv in sorted(env.items())]
    return pre + [exe] + args                   # env execs: the pid stays the fixture's


def run_stress(workdir, scenario_args, variant="64", env=None, run=0):
    """Start the fixture and return (Running, truth) at its READY point.  ENV (a dict) is added to
    the inherited environment; RUN > 0 selects another size sequence (seed=RUN)."""
    exe = build_stress(workdir, variant)
    r = Running(_argv(exe, scenario_args, env, run))
    if r.truth is None:
        r.kill()
        raise RuntimeError("stress fixture %s printed no truth" % (scenario_args,))
    if r.truth.get("pid") != r.pid:
        r.kill()
        raise RuntimeError("truth pid %s is not the fixture's %s" % (r.truth.get("pid"), r.pid))
    return r, r.truth


def core_name(scenario_args, variant="64", env=None, run=0):
    parts = [variant] + [str(a) for a in scenario_args]
    for k, v in sorted((env or {}).items()):
        parts.append("%s-%s" % (k, v))
    if run:
        parts.append("run%d" % run)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "stress-" + "-".join(parts))


def stress_core(workdir, scenario_args, variant="64", env=None, name=None, run=0):
    """gcore the fixture at READY, kill it, return (exe, core_path, truth).  Cached in WORKDIR by
    NAME (default: from variant, args, env and run): NAME.core and NAME.json."""
    exe = build_stress(workdir, variant)
    name = name or core_name(scenario_args, variant, env, run)
    core = os.path.join(str(workdir), name + ".core")
    meta = os.path.join(str(workdir), name + ".json")
    if os.path.exists(core) and os.path.exists(meta):
        with open(meta) as fh:
            return exe, core, json.load(fh)
    r, truth = run_stress(workdir, scenario_args, variant, env, run)
    prefix = os.path.join(str(workdir), name + ".tmp")
    try:
        path = r.gcore(prefix)
    except BaseException:
        for f in os.listdir(str(workdir)):
            if f.startswith(name + ".tmp"):
                os.unlink(os.path.join(str(workdir), f))
        raise
    finally:
        r.kill()
    os.replace(path, core)
    with open(meta + ".tmp", "w") as fh:
        json.dump(truth, fh)
    os.replace(meta + ".tmp", meta)
    return exe, core, truth


def drop_core(workdir, name):
    """Delete a cached core (and its truth) made by stress_core."""
    for ext in (".core", ".json"):
        p = os.path.join(str(workdir), name + ext)
        if os.path.exists(p):
            os.unlink(p)


def leaked_set(truth):
    return set(truth["leaked"]["addresses"])


def read_maps(pid):
    """[(start, end, perms, offset, path)] from /proc/PID/maps."""
    out = []
    with open("/proc/%d/maps" % pid) as fh:
        for line in fh:
            f = line.split(None, 5)
            a, b = (int(x, 16) for x in f[0].split("-"))
            out.append((a, b, f[1], int(f[2], 16), f[5].strip() if len(f) > 5 else ""))
    return out



def read_mem(pid, addr, size):
    """SIZE bytes of process PID at ADDR (/proc/PID/mem: root, or our own child)."""
    with open("/proc/%d/mem" % pid, "rb", buffering=0) as fh:
        fh.seek(addr)
        return fh.read(size)


def read_word(pid, addr, pointer_size):
    return int.from_bytes(read_mem(pid, addr, pointer_size), "little")


HEAP_MAX = {8: 64 << 20, 4: 1 << 20}
HEAP_INFO_SIZE = {8: 48, 4: 24}

# Runs inside `gdb -p PID`: `info proc mappings`, then heap_info {ar_ptr, prev, size, mprotect_size}
# at every HEAP_MAX-aligned address of anonymous rw-p memory, grouped by arena.  An arena counts
# only when exactly one of its heaps has prev == 0 and holds the malloc_state right after heap_info.
_GDB_ARENAS = r'''
import gdb, json, struct
out = gdb.execute("info proc mappings", to_string=True)
maps = []
for line in out.splitlines():
    f = line.split()
    if len(f) >= 5 and f[0].startswith("0x"):
        maps.append((int(f[0], 16), int(f[1], 16), f[4], f[5] if len(f) > 5 else ""))
inf = gdb.selected_inferior()
fmt = "<4Q" if PS == 8 else "<4I"
heaps = {}
for s, e, perms, path in maps:
    if perms != "rw-p" or path:
        continue
    b = (s + HM - 1) & ~(HM - 1)
    while b + 4 * PS <= e:
        try:
            ar, prev, size, mprot = struct.unpack(fmt, bytes(inf.read_memory(b, 4 * PS)))
        except gdb.MemoryError:
            ar = 0
        if ar and 0 < size <= mprot <= HM and prev % HM == 0:
            heaps.setdefault(ar, []).append({"base": b, "prev": prev, "size": size, "mprotect_size": mprot})
        b += HM
arenas = {}
for ar, hs in heaps.items():
    first = [h for h in hs if h["prev"] == 0]
    if len(first) == 1 and first[0]["base"] + HIS == ar:
        arenas["%#x" % ar] = hs
print("STRESS-ARENAS " + json.dumps({"arenas": arenas, "mappings": maps}))
'''


def gdb_arenas(workdir, pid, pointer_size):
    """Thread arenas of live process PID found by gdb alone (no debug info needed):
    ({arena address: [{"base", "prev", "size", "mprotect_size"}]}, [(start, end, perms, path)])."""
    script = os.path.join(str(workdir), "stress_gdb_arenas.py")
    with open(script, "w") as fh:
        fh.write(_GDB_ARENAS)
    r = subprocess.run(["gdb", "-nx", "-batch", "-p", str(pid),
                        "-ex", "python PS=%d; HM=%d; HIS=%d" % (pointer_size, HEAP_MAX[pointer_size],
                                                                HEAP_INFO_SIZE[pointer_size]),
                        "-ex", "source " + script], capture_output=True, text=True, timeout=120)
    for line in r.stdout.splitlines():
        if line.startswith("STRESS-ARENAS "):
            doc = json.loads(line[len("STRESS-ARENAS "):])
            return doc["arenas"], [tuple(m) for m in doc["mappings"]]
    raise RuntimeError("gdb found no arenas in %d: %s" % (pid, r.stderr[-2000:]))
