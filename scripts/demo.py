#!/usr/bin/env python3
"""`make demo`: build the leaky sample, run it, snapshot it with gcore, analyse the snapshot in gdb."""
import os
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build", "demo")


def main():
    os.makedirs(BUILD, exist_ok=True)
    exe = os.path.join(BUILD, "leaky")
    src = os.path.join(ROOT, "examples", "leaky.cpp")
    print("$ g++ -g -O1 -pthread examples/leaky.cpp -o build/demo/leaky", flush=True)
    subprocess.run(["g++", "-g", "-O1", "-pthread", src, "-o", exe], check=True)
    proc = subprocess.Popen([exe, "5000"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if not line.startswith("READY"):
            sys.exit("the sample did not start: %r" % line)
        core_prefix = os.path.join(BUILD, "leaky.core")
        print("$ gcore -o build/demo/leaky.core %d" % proc.pid, flush=True)
        subprocess.run(["gcore", "-o", core_prefix, str(proc.pid)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        core = "%s.%d" % (core_prefix, proc.pid)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    os.chmod(core, 0o600)
    cmds = ["memleak vtable-census --heap --at-chunk-start --examples 2", "memleak leaks --show 3",
            "memleak threads --check", "memleak maps --min-size 1M"]
    argv = ["gdb", "-nx", "-batch", "-ex", "source " + os.path.join(ROOT, "gdbinit.example")]
    for c in cmds:
        argv += ["-ex", "echo \\n(gdb) %s\\n" % c, "-ex", c]
    argv += [exe, core]
    print("$ gdb -nx -batch -ex 'source gdbinit.example' %s build/demo/leaky %s" % (
        " ".join("-ex '%s'" % c for c in cmds), os.path.relpath(core, ROOT)), flush=True)
    r = subprocess.run(argv)
    sys.exit(r.returncode)


if __name__ == "__main__":
    main()
