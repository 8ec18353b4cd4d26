"""Class sizes from DWARF offline (core/dwarf.py) equal gdb's lookup_type sizes: census fixture
(PIE, non-PIE, -m32), leaks fixture, and separate debug files found under --debug-dir by
build-id (the executable) and by .gnu_debuglink (the library); spellings the demangler and GCC's
DWARF differ on; debug-file lookup rules; a damaged debug file never raises."""
import os
import shutil
import subprocess

import pytest

from conftest import FIXTURES, GDBINIT, ROOT, Running, build, load_json, run_cli
from gdb_memleak.core.memory.dwarf import (DwarfFile, canonical, clear_cache, debuglink, expand_std_abbreviations,
                                    find_debug_files, split_scopes)
from gdb_memleak.core.memory.modules import file_build_id

VARIANTS = ("pie", "nopie", "m32", "leaks", "sepdebug")
CENSUS_FLAGS = {"pie": [], "nopie": ["-no-pie"], "m32": ["-m32"], "sepdebug": []}


@pytest.mark.parametrize("demangled,dwarf", [
    ("Tm<Foo const*>", "Tm<const Foo*>"),
    ("Tm<unsigned long>", "Tm<long unsigned int>"),
    ("Two<int, long>", "Two<int, long int>"),
    ("Tm<long long>", "Tm<long long int>"),
    ("M<short, 3>", "M<short int, 3>"),
    ("X<unsigned __int128>", "X<__int128 unsigned>"),
    ("U<5u>", "U<5>"),
    ("Lo<-5l>", "Lo<-5>"),
    ("Ch<(char)97>", "Ch<'a'>"),
    ("A<std::vector<int, std::allocator<int> > const&>", "A<const std::vector<int, std::allocator<int> >&>"),
    ("X<int const volatile>", "X<volatile const int>"),
    ("Tm<void (*)(int)>", "Tm<void (*)(int)>"),
    ("std::_Sp_counted_ptr_inplace<Foo, std::allocator<void>, (__gnu_cxx::_Lock_policy)2>",
     "std::_Sp_counted_ptr_inplace<Foo, std::allocator<void>, (__gnu_cxx::_Lock_policy)2>"),
    ("Tag[abi:cxx11]", "Tag"),
])
def test_canonical_spellings_agree(demangled, dwarf):
    assert canonical(demangled) == canonical(dwarf) is not None


def test_canonical_keeps_different_types_apart():
    assert canonical("Tm<unsigned long>") != canonical("Tm<long>")
    assert canonical("Tm<char const*>") != canonical("Tm<char* const>")
    assert canonical("Tm<signed char>") != canonical("Tm<char>")
    assert canonical("Arr<3>") != canonical("Arr<30>")


def test_scopes_and_std_abbreviations():
    assert split_scopes("std::_Sp_counted_ptr_inplace<a::B, std::allocator<void>, (__gnu_cxx::_Lock_policy)2>") == [
        "std", "_Sp_counted_ptr_inplace<a::B, std::allocator<void>, (__gnu_cxx::_Lock_policy)2>"]
    assert split_scopes("a::(anonymous namespace)::C") == ["a", "(anonymous namespace)", "C"]
    assert split_scopes("a::<b") is None
    assert expand_std_abbreviations("std::iostream") == "std::basic_iostream<char, std::char_traits<char> >"
    assert expand_std_abbreviations("my::std::iostream") == "my::std::iostream"


def _split_debug(path, dest):
    """objcopy --only-keep-debug; strip -g; --add-gnu-debuglink; the debug file moved to ``dest``."""
    dbg = path + ".debug"
    subprocess.run(["objcopy", "--only-keep-debug", path, dbg], check=True)
    subprocess.run(["strip", "-g", path], check=True)
    subprocess.run(["objcopy", "--add-gnu-debuglink=" + dbg, path], check=True)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    os.replace(dbg, dest)


def _build(workdir, variant):
    """(exe, its folder, debug dir or None)"""
    d = os.path.join(str(workdir), "dwarf-" + variant)
    os.makedirs(d, exist_ok=True)
    debug_dir = os.path.join(d, "debug") if variant == "sepdebug" else None
    if variant == "leaks":
        return build(d, "leaks.cpp", "leaks"), d, None
    lib = os.path.join(d, "libcensuslib.so")
    exe = os.path.join(d, "census")
    if not os.path.exists(exe):
        flags = CENSUS_FLAGS[variant]
        m32 = ["-m32"] if variant == "m32" else []
        subprocess.run(["g++", "-g", "-O0", "-fPIC", "-shared", *m32, os.path.join(FIXTURES, "censuslib.cpp"),
                        "-o", lib], check=True, capture_output=True)
        subprocess.run(["g++", "-g", "-O0", "-pthread", *flags, os.path.join(FIXTURES, "census.cpp"),
                        "-I", FIXTURES, "-L", d, "-lcensuslib", "-Wl,-rpath,$ORIGIN", "-o", exe],
                       check=True, capture_output=True)
        if debug_dir:
            bid = file_build_id(exe)
            _split_debug(exe, os.path.join(debug_dir, ".build-id", bid[:2], bid[2:] + ".debug"))   # by build-id
            _split_debug(lib, os.path.join(debug_dir, d.lstrip("/"), "libcensuslib.so.debug"))    # by debuglink
    return exe, d, debug_dir


@pytest.fixture(scope="module", params=VARIANTS)
def dwarf_target(request, workdir):
    exe, d, debug_dir = _build(workdir, request.param)
    run = Running([exe])
    try:
        core = run.gcore(os.path.join(d, "core"))
    finally:
        run.kill()
    return request.param, exe, core, debug_dir


def _gdb(exe, core, commands, debug_dir=None):
    argv = ["gdb", "-nx", "-batch"]
    if debug_dir:
        argv += ["-iex", "set debug-file-directory %s:/usr/lib/debug" % debug_dir]
    argv += ["-ex", "source " + GDBINIT]
    for c in commands:
        argv += ["-ex", c]
    return subprocess.run(argv + [exe, core], capture_output=True, text=True, timeout=300, cwd=ROOT)


def _sizes(path):
    return {c["name"]: (c["module"], c["size"]) for c in load_json(path)["classes"]}


def test_offline_sizes_equal_gdb(dwarf_target, tmp_path):
    variant, exe, core, debug_dir = dwarf_target
    runs = {"plain": ["--heap", "--top", "0"], "chunk": ["--heap", "--at-chunk-start", "--top", "0"]}
    r = _gdb(exe, core, ["memleak vtable-census %s --json %s" % (" ".join(a), tmp_path / ("gdb-%s.json" % k))
                         for k, a in runs.items()], debug_dir)
    assert r.returncode == 0, r.stderr
    extra = ["--debug-dir", debug_dir] if debug_dir else []
    mine = {os.path.basename(exe), "libcensuslib.so"}
    for k, a in runs.items():
        off = str(tmp_path / ("off-%s.json" % k))
        r = run_cli("--core", core, "--exe", exe, *extra, "vtable-census", *a, "--json", off)
        assert r.returncode == 0, r.stderr
        g, o = _sizes(str(tmp_path / ("gdb-%s.json" % k))), _sizes(off)
        assert set(g) == set(o), (variant, k)
        for name, (module, size) in g.items():
            if size is not None:
                assert o[name][1] == size, (variant, k, name, o[name], size)
            if module in mine:     # the fixtures' own classes: gdb and we both know them
                assert size is not None and o[name][1] is not None, (variant, k, name, size, o[name])
        if k == "plain" and variant != "leaks":
            ps = 4 if variant == "m32" else 8
            assert o["Single"][1] == 2 * ps and o["lib::LibThing"][1] == 4 * ps, o
            assert o["ns1::ns2::Namespaced"][1] == 2 * ps and o["Tmpl<double>"][1] == ps + 8, o


def test_separate_debug_files_come_from_debug_dir(dwarf_target, tmp_path):
    variant, exe, core, debug_dir = dwarf_target
    if variant != "sepdebug":
        pytest.skip("only the variant whose debug info is in separate files")
    out = str(tmp_path / "none.json")
    r = run_cli("--core", core, "--exe", exe, "vtable-census", "--heap", "--top", "0", "--json", out)
    assert r.returncode == 0, r.stderr
    assert all(size is None for _m, size in _sizes(out).values()), _sizes(out)   # strip -g: no DWARF left
    lib = os.path.join(os.path.dirname(exe), "libcensuslib.so")
    bid = file_build_id(exe)
    assert find_debug_files(exe, bid, [debug_dir]) == [
        os.path.join(debug_dir, ".build-id", bid[:2], bid[2:] + ".debug")]
    assert find_debug_files(exe, bid, ["/nonexistent"]) == []
    want = os.path.join(debug_dir, os.path.dirname(lib).lstrip("/"), "libcensuslib.so.debug")
    assert debuglink(lib)[0] == "libcensuslib.so.debug"
    assert find_debug_files(lib, file_build_id(lib), [debug_dir]) == [want]
    # a debug file of another build under the link's name is refused (build-id; CRC without one)
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(exe, other / "x")
    shutil.copy(os.path.join(debug_dir, ".build-id", bid[:2], bid[2:] + ".debug"), other / "x.debug")
    subprocess.run(["objcopy", "--remove-section=.gnu_debuglink", str(other / "x")], check=True)
    subprocess.run(["objcopy", "--add-gnu-debuglink=" + str(other / "x.debug"), str(other / "x")], check=True)
    shutil.copy(want, other / "x.debug")                       # the library's debug file instead
    assert find_debug_files(str(other / "x"), bid, []) == []
    assert find_debug_files(str(other / "x"), None, []) == []  # CRC differs
    r = run_cli("--core", core, "maps", "--debug-dir", str(tmp_path / "missing"))   # a global option anywhere
    assert r.returncode == 2 and "--debug-dir" in r.stderr


def test_damaged_debug_info_never_raises(dwarf_target, tmp_path):
    variant, exe, core, debug_dir = dwarf_target
    if variant != "pie":
        pytest.skip("one damaged copy is enough")
    from gdb_memleak.core.memory.symbols import _section_headers
    import mmap
    names = ["Single", "ns1::ns2::Namespaced", "Tmpl<int>", "Keep", "Multi", "Nope"]
    good = DwarfFile(exe)
    sizes = {n: good.class_size(n) for n in names}
    assert sizes["Single"] == 16 and sizes["Nope"] is None
    with open(exe, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        _is64, _e, hdrs, shstr = _section_headers(mm)
        strtab = mm[hdrs[shstr][2]:hdrs[shstr][2] + hdrs[shstr][3]]
        info = [h for h in hdrs if strtab[h[0]:strtab.find(b"\0", h[0])] == b".debug_info"][0]
        mm.close()
    data = bytearray(open(exe, "rb").read())
    for i, step in enumerate((7, 13, 101)):
        bad = bytearray(data)
        off, size = info[2], info[3]
        for p in range(off + 11 + i, off + size, step):
            bad[p] ^= 0x5A
        path = tmp_path / ("bad%d" % i)
        path.write_bytes(bytes(bad))
        f = DwarfFile(str(path))
        for n in names:
            f.class_size(n)          # any answer or None, never an exception
    cut = tmp_path / "cut"
    cut.write_bytes(bytes(data[:info[2] + info[3] // 2]))
    f = DwarfFile(str(cut))
    assert all(f.class_size(n) is None for n in names)
    clear_cache()


SPELLINGS_CPP = r"""
#include <memory>
#include <string>
#include <vector>
struct Foo { virtual ~Foo() {} long a[3]; };
template <typename T> struct Tm { virtual ~Tm() {} T t{}; };
namespace { struct Anon { virtual ~Anon() {} int x; }; }
struct Outer { struct Inner; struct In2 { virtual ~In2() {} char c[5]; }; };
struct Outer::Inner { virtual ~Inner() {} double d[2]; };
template <int N> struct Arr { virtual ~Arr() {} char c[N]; };
enum class Color { Red, Green };
template <Color C> struct ByEnum { virtual ~ByEnum() {} int v; };
template <typename T, typename U = long> struct Two { virtual ~Two() {} T t; U u; };
template <unsigned N> struct U { virtual ~U() {} char c[N]; };
template <char C> struct Ch { virtual ~Ch() {} int x; };
template <long L> struct Lo { virtual ~Lo() {} long z[2]; };
template <typename F> struct Hold { virtual ~Hold() {} F f; Hold(F g) : f(g) {} };
namespace outer { inline namespace v1 { struct InNs { virtual ~InNs() {} int k; }; } }
namespace a { namespace { struct AnonIn { virtual ~AnonIn() {} short s; }; } }
void *sink[64]; int n;
static void local() { struct Local { virtual ~Local() {} int q; }; sink[n++] = new Local; }
int main() {
  sink[n++] = new Foo; sink[n++] = new Tm<const char *>; sink[n++] = new Tm<std::string>;
  sink[n++] = new Tm<unsigned long>; sink[n++] = new Tm<const Foo *>; sink[n++] = new Tm<void (*)(int)>;
  sink[n++] = new Tm<std::vector<int>>; sink[n++] = new Anon; sink[n++] = new Outer::Inner;
  sink[n++] = new Outer::In2; sink[n++] = new Arr<3>; sink[n++] = new ByEnum<Color::Green>;
  sink[n++] = new Two<int>; sink[n++] = new Two<char, bool>; sink[n++] = new Tm<Tm<int>>;
  sink[n++] = new Tm<long long>; sink[n++] = new Tm<signed char>; sink[n++] = new Tm<int[3]>;
  sink[n++] = new Tm<int Foo::*>; sink[n++] = new U<5>; sink[n++] = new Ch<'a'>; sink[n++] = new Lo<-5>;
  sink[n++] = new outer::InNs; sink[n++] = new a::AnonIn; sink[n++] = new std::shared_ptr<Foo>(std::make_shared<Foo>());
  int k = n; auto l = [k](int x) { return x + k; }; sink[n++] = new Hold<decltype(l)>(l);
  local();
  return n;
}
"""
GDB_SIZES = r"""
import json, gdb
out = {}
for name in json.load(open(%r)):
    try:
        out[name] = gdb.lookup_type(name).sizeof
    except gdb.error:
        out[name] = None
print("SIZES " + json.dumps(out))
"""


@pytest.mark.parametrize("flags", [[], ["-gdwarf-4", "-fdebug-types-section"], ["-gdwarf-5", "-fdebug-types-section"],
                                   ["-gz"], ["-O2"], ["-m32"]], ids=lambda f: " ".join(f) or "default")
def test_spellings_equal_gdb_lookup_type(flags, tmp_path):
    """Every class with a vtable in a program of awkward names (templates over builtin, cv,
    pointer, function and member types, enums, chars, negative numbers, anonymous and inline
    namespaces, nested, local and lambda classes): our size is gdb's lookup_type size."""
    import json
    from gdb_memleak.core.memory.symbols import demangle_type, symbols_with_prefix
    src = tmp_path / "spell.cpp"
    src.write_text(SPELLINGS_CPP)
    exe = str(tmp_path / "spell")
    subprocess.run(["g++", "-g", *flags, str(src), "-o", exe], check=True, capture_output=True)
    names = sorted({demangle_type(s[0][4:]) for s in symbols_with_prefix(exe, (b"_ZTV",))
                    if not s[0].startswith("_ZTVN10__cxxabiv")})
    (tmp_path / "names.json").write_text(json.dumps(names))
    (tmp_path / "sizes.py").write_text(GDB_SIZES % str(tmp_path / "names.json"))
    r = subprocess.run(["gdb", "-nx", "-batch", "-ex", "source %s" % (tmp_path / "sizes.py"), exe],
                       capture_output=True, text=True, timeout=120)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("SIZES ")]
    assert line, r.stdout + r.stderr
    theirs = json.loads(line[0][6:])
    f = DwarfFile(exe)
    ours = {n: f.class_size(n) for n in names}
    for n in names:
        if theirs[n] is not None:
            assert ours[n] == theirs[n], (n, ours[n], theirs[n])
    assert sum(v is not None for v in theirs.values()) >= 20, theirs
    # where gdb finds nothing we only add sizes for suffixed literals (U<5u>, Lo<-5l>, Ch<(char)97>)
    extra = {n for n in names if theirs[n] is None and ours[n] is not None}
    assert extra <= {"U<5u>", "Lo<-5l>", "Ch<(char)97>"}, extra
    assert ours["local()::Local"] is None
    assert f.error is None
