"""Cores of other architectures, offline and in gdb-multiarch: tests/fixtures/crossarch.cpp built
for 32-bit ARM and AArch64 (Debian's cross g++, run under qemu-user, which writes the core: no
NT_FILE note, no ELF header pages, one segment per run of pages with the same protection) and
for i386 (g++ -m32, a kernel core).  Every analysis must give the fixture's exact truth, and the
heap must give glibc's own numbers (the fixture's mallinfo2() taken right before the crash).
There is no libc debug info for the cross libcs (Debian ships no libc6-dbg-armhf-cross /
-arm64-cross; libc6-dbg:armhf belongs to libc6:armhf, another build than the cross toolchain's
libc), so mallinfo2 and the fixture's own counts are the oracle."""
from __future__ import annotations

import glob
import json
import os
import resource
import shutil
import subprocess

import pytest

from conftest import FIXTURES, GDBINIT, PY, ROOT, cross_env, load_json

SRC = os.path.join(FIXTURES, "crossarch.cpp")
# arch: (compiler argv, qemu, sysroot)
ARCHS = {
    "arm": (["arm-linux-gnueabihf-g++"], "qemu-arm", "/usr/arm-linux-gnueabihf"),
    "aarch64": (["aarch64-linux-gnu-g++"], "qemu-aarch64", "/usr/aarch64-linux-gnu"),
    "i386": (["g++", "-m32"], None, None),
}
CLASSES_LIVE = ("xa::Session", "xa::Multi", "xa::Cache")
CLASSES_LEAKED = ("xa::Node", "xa::Leaky", "xa::Buffer")


def _core_limit():
    os.setsid()
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def _make_core(workdir, arch, flags=()):
    cc, qemu, sysroot = ARCHS[arch]
    if shutil.which(cc[0]) is None:
        pytest.skip("%s not installed (make install installs the cross compilers)" % cc[0])
    if qemu and shutil.which(qemu) is None:
        pytest.skip("%s not installed (make install installs qemu-user)" % qemu)
    d = os.path.join(str(workdir), "crossarch-%s%s" % (arch, "".join(flags)))
    os.makedirs(d, exist_ok=True)
    exe = os.path.join(d, "xa-" + arch)
    r = subprocess.run(cc + ["-g", "-O0", "-pthread", *flags, SRC, "-o", exe], capture_output=True, text=True,
                       env=cross_env() if qemu else None)
    if r.returncode:
        pytest.fail("%s build failed: %s" % (arch, r.stderr[-2000:]))
    truth_path = os.path.join(d, "truth.json")
    if qemu:
        argv = [qemu, "-L", sysroot, exe, truth_path, "qemu"]
    else:
        with open("/proc/sys/kernel/core_pattern") as fh:
            pattern = fh.read().strip()
        if pattern.startswith("|") or "/" in pattern:
            pytest.skip("kernel cores go to %r, not to the working folder" % pattern)
        argv = [exe, truth_path]
    for old in glob.glob(os.path.join(d, "*core*")):
        os.unlink(old)
    p = subprocess.run(argv, cwd=d, preexec_fn=_core_limit, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0, "the fixture did not abort"
    cores = glob.glob(os.path.join(d, "qemu_*.core")) if qemu else \
        [c for c in glob.glob(os.path.join(d, "core*")) if os.path.isfile(c)]
    if not cores:
        pytest.skip("no core was written for %s (rc %s): %s" % (arch, p.returncode, p.stderr[-300:]))
    assert len(cores) == 1, cores
    with open(truth_path) as fh:
        truth = json.load(fh)
    return exe, cores[0], sysroot, truth


@pytest.fixture(scope="module", params=sorted(ARCHS))
def xcore(request, tmp_path_factory):
    exe, core, sysroot, truth = _make_core(tmp_path_factory.mktemp("xa"), request.param)
    return request.param, exe, core, sysroot, truth


def offline(exe, core, sysroot, *cmd, ok=True):
    out = os.path.join(os.path.dirname(core), "out.json")
    if os.path.exists(out):
        os.unlink(out)
    argv = [PY, "-m", "gdb_memleak", "--core", core, "--exe", exe, "--no-progress"]
    if sysroot:
        argv += ["--sysroot", sysroot]
    r = subprocess.run(argv + list(cmd) + ["--json", out], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    if ok:
        assert r.returncode == 0, r.stderr + r.stdout
        return load_json(out)
    return r


def check_truth(arch, res, truth):
    """Every command's JSON (``res``: command -> JSON) against the fixture's truth."""
    ps = 4 if arch in ("arm", "i386") else 8
    census = res["census"]
    assert census["target"]["arch"] == arch and census["target"]["pointer_size"] == ps == truth["pointer_size"]
    counts = {c["name"]: c["count"] for c in census["classes"] if c["name"].startswith("xa::")}
    want = dict(truth["live"])
    for name, n in truth["leaked"].items():
        want[name] = want.get(name, 0) + n
    assert counts == want, (counts, want)

    leaks = res["leaks"]
    by_class = {c["name"]: c for c in leaks["by_class"]}
    for name, n in truth["leaked"].items():
        assert by_class[name]["chunks"] == n, (name, by_class[name])
    assert by_class["xa::Node"]["direct_chunks"] == 1       # a chain: its head
    for name in CLASSES_LIVE:
        assert name not in by_class
    n_leaked = sum(truth["leaked"].values()) + truth["leaked_raw"]["buffer_data"] + truth["leaked_raw"]["big"]
    assert leaks["leaked"]["chunks"] == n_leaked
    assert leaks["leaked"]["indirect_chunks"] == truth["indirect"]
    assert leaks["leaked"]["direct_chunks"] == n_leaked - truth["indirect"]
    big = [e for e in leaks["by_size"] if e["size"] >= truth["big"]]
    assert [(e["chunks"]) for e in big] == [1], leaks["by_size"]

    heap = res["heap"]
    mi = truth["mallinfo2"]
    arenas = heap["arenas"]
    assert heap["discovery"] == "arena ring" and not heap["findings"], heap["findings"]
    assert len(arenas) == truth["arenas"]
    assert sum(a["system_mem"] for a in arenas) == mi["arena"]
    assert sum(a["fastbin_chunks"] for a in arenas) == mi["smblks"] == 2 * truth["fastbin_per_worker"]
    assert sum(a["fastbin_bytes"] for a in arenas) == mi["fsmblks"]
    assert sum(a["top_size"] + a["bin_bytes"] + a["fastbin_bytes"] for a in arenas) == mi["fordblks"]
    assert sum(1 + a["bin_chunks"] for a in arenas) == mi["ordblks"]
    # mallinfo counts tcache chunks and each heap's headers (heap_info, malloc_state) as in use
    headers = sum(int(h["first_chunk"], 16) - int(h["start"], 16) for a in arenas for h in a["heaps"])
    assert sum(a["in_use_bytes"] + a["tcache_bytes"] for a in arenas) + headers == mi["uordblks"]
    assert not any(a["unknown_chunks"] for a in arenas)
    assert (heap["mmapped"]["chunks"], heap["mmapped"]["mapped_bytes"]) == (mi["hblks"], mi["hblkhd"]) == \
        (heap["mmapped"]["n_mmaps"], heap["mmapped"]["mmapped_mem"])
    tc = {t["lwp"]: t for t in heap["tcaches"]}
    assert len(tc) == truth["threads"], heap["tcaches"]
    for lwp in truth["worker_tids"]:
        assert tc[lwp]["chunks"] == truth["tcache_per_worker"], tc[lwp]
        assert tc[lwp]["bytes"] == truth["tcache_per_worker"] * _chunk(arch, truth["freed_size"])

    threads = res["threads"]
    assert threads["totals"]["threads"] == truth["threads"]
    lwps = {t["lwp"] for t in threads["threads"]}
    assert lwps == set(truth["worker_tids"]) | {truth["pid"]}
    assert all(t["stack_start"] is not None for t in threads["threads"])
    assert [o["reason"] for o in threads["orphan_stacks"]] == ["exited-unjoined"] * truth["exited_unjoined"]
    workers = [t for t in threads["threads"] if t["lwp"] in truth["worker_tids"]]
    for t in workers:       # each worker's own 256 KiB stack, split from what qemu merged with it
        assert t["stack_size"] == 256 << 10, t
        assert t["guard"]

    maps = res["maps"]
    kinds = {}
    for m in maps["mappings"]:
        kinds.setdefault(m["kind"], []).append(m)
    assert len([m for m in kinds["arena-heap"] if "w" in m["perms"]]) == truth["arenas"] - 1
    assert len(kinds["main-heap"]) == 1
    assert len(kinds["thread-stack"]) == len(workers) + truth["exited_unjoined"]
    libs = {os.path.basename(m["path"]) for m in kinds["file"]}
    assert "libc.so.6" in libs and any(n.startswith("libstdc++.so.6") for n in libs), libs


def _chunk(arch, size):
    ps = 4 if arch in ("arm", "i386") else 8
    align = 8 if arch == "arm" else 16
    return max(4 * ps if align == 2 * ps else 16, (size + ps + align - 1) & ~(align - 1))


COMMANDS = {"census": ("vtable-census", "--heap", "--at-chunk-start"), "leaks": ("leaks",), "heap": ("heap",),
            "threads": ("threads",), "maps": ("maps",)}


def test_offline_exact(xcore):
    """maps, vtable-census (symbols), heap, leaks and threads offline equal the fixture's truth."""
    arch, exe, core, sysroot, truth = xcore
    res = {k: offline(exe, core, sysroot, *cmd) for k, cmd in COMMANDS.items()}
    check_truth(arch, res, truth)
    if arch != "i386":
        # qemu-user's core: named from the link_map, checked by the auxv (no build-id to check)
        assert any("auxiliary vector" in w for w in res["maps"]["target"].get("warnings", []))


def test_offline_stripped_rtti(xcore, tmp_path):
    """A stripped executable: the classes are named from RTTI, with the same counts."""
    arch, exe, core, sysroot, truth = xcore
    strip = {"arm": "arm-linux-gnueabihf-strip", "aarch64": "aarch64-linux-gnu-strip"}.get(arch, "strip")
    if shutil.which(strip) is None:
        pytest.skip("no %s" % strip)
    stripped = str(tmp_path / "stripped")
    subprocess.run([strip, "-o", stripped, exe], check=True)
    census = offline(stripped, core, sysroot, "vtable-census", "--heap", "--at-chunk-start")
    got = {c["name"]: (c["count"], c["name_source"]) for c in census["classes"] if c["name"].startswith("xa::")}
    want = dict(truth["live"])
    for name, n in truth["leaked"].items():
        want[name] = want.get(name, 0) + n
    assert got == {k: (v, "rtti") for k, v in want.items()}


def test_gdb_multiarch_same(xcore):
    """The same commands inside gdb-multiarch (sysroot set, executable and core loaded) give the
    same JSON as offline."""
    arch, exe, core, sysroot, truth = xcore
    gdbm = shutil.which("gdb-multiarch") if arch != "i386" else shutil.which("gdb")
    if gdbm is None:
        pytest.skip("gdb-multiarch not installed")
    d = os.path.dirname(core)
    argv = [gdbm, "-nx", "-batch"]
    if sysroot:
        argv += ["-ex", "set sysroot " + sysroot]
    argv += ["-ex", "file " + exe, "-ex", "core " + core, "-ex", "source " + GDBINIT]
    outs = {}
    for k, cmd in COMMANDS.items():
        outs[k] = os.path.join(d, "gdb-%s.json" % k)
        if os.path.exists(outs[k]):
            os.unlink(outs[k])
        argv += ["-ex", "memleak %s --json %s" % (" ".join(cmd), outs[k])]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=ROOT)
    text = r.stdout + r.stderr
    assert r.returncode == 0 and "internal error" not in text and "Traceback" not in text, text[-3000:]
    res = {k: load_json(p) for k, p in outs.items()}
    check_truth(arch, res, truth)


def test_qemu_core_needs_exe_and_matching_exe(tmp_path_factory):
    """A qemu core without --exe says how to name its files (one warning, no traceback); an
    executable that is not the core's is one error line."""
    exe, core, sysroot, truth = _make_core(tmp_path_factory.mktemp("xa-bad"), "arm")
    r = subprocess.run([PY, "-m", "gdb_memleak", "--core", core, "--no-progress", "maps"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "no NT_FILE note; qemu-user writes none): pass --exe EXE" in r.stderr
    other = os.path.join(os.path.dirname(exe), "other")
    src = os.path.join(os.path.dirname(exe), "other.cpp")
    with open(src, "w") as fh:
        fh.write("int main() { return 0; }\n")
    subprocess.run(["arm-linux-gnueabihf-g++", src, "-o", other], check=True, env=cross_env())
    r = subprocess.run([PY, "-m", "gdb_memleak", "--core", core, "--exe", other, "--sysroot", sysroot,
                        "--no-progress", "maps"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not the core's executable" in lines[0], r.stderr
    # cut short: refused in one line, or analysed with warnings (never a traceback)
    cut = os.path.join(os.path.dirname(exe), "cut.core")
    with open(core, "rb") as src_fh, open(cut, "wb") as dst:
        dst.write(src_fh.read(os.path.getsize(core) * 3 // 10))
    base = [PY, "-m", "gdb_memleak", "--core", cut, "--exe", exe, "--sysroot", sysroot, "--no-progress"]
    r = subprocess.run(base + ["leaks"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "truncated core" in r.stderr, r.stderr
    r = subprocess.run(base + ["--allow-truncated", "leaks"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0 and "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    # an AArch64 executable for an ARM core: the machine is named
    a64 = os.path.join(os.path.dirname(exe), "other64")
    if shutil.which("aarch64-linux-gnu-g++"):
        subprocess.run(["aarch64-linux-gnu-g++", src, "-o", a64], check=True, env=cross_env())
        r = subprocess.run([PY, "-m", "gdb_memleak", "--core", core, "--exe", a64, "--no-progress", "maps"],
                           capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert r.returncode != 0 and "aarch64" in r.stderr and "Traceback" not in r.stderr, r.stderr
