"""The core never imports gdb, and stays within the Python 3.8 floor."""
import importlib
import os
import pkgutil
import shutil
import subprocess
import sys

from conftest import ROOT


def test_core_imports_without_gdb():
    code = ("import sys, pkgutil, importlib; sys.modules['gdb'] = None; import gdb_memleak.core as c\n"
            "mods = [m.name for m in pkgutil.walk_packages(c.__path__, c.__name__ + '.')]\n"
            "[importlib.import_module(m) for m in mods]\n"
            "import gdb_memleak.cli\n"
            "print(len(mods))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) >= 8


def test_python38_floor():
    vermin = shutil.which("vermin", path=os.path.dirname(sys.executable)) or shutil.which("vermin")
    assert vermin, "vermin is installed by 'make install'"
    r = subprocess.run([vermin, "-q", "--no-tips", "--violations", "--target=3.8-", "--eval-annotations",
                        "--backport", "dataclasses", os.path.join(ROOT, "gdb_memleak")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_gdb_api_floor():
    """gdb APIs newer than gdb 10 are only reached through getattr/try (checked on the source)."""
    import re
    newer = [r"\.connection\b", r"\bexecute_mi\b", r"\bformat_address\b", r"\.arguments\b",
             r"\barchitecture_names\b", r"\.connection_num\b"]
    for dirpath, _, files in os.walk(os.path.join(ROOT, "gdb_memleak", "gdbext")):
        for f in files:
            if not f.endswith(".py"):
                continue
            for n, line in enumerate(open(os.path.join(dirpath, f)), 1):
                code = line.split("#")[0]
                if '"""' in code or "getattr(" in code:
                    continue
                for pat in newer:
                    assert not re.search(pat, code), "%s:%d uses %s unguarded" % (f, n, pat)
