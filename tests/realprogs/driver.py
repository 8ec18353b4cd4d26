"""Run one command exactly as the gdb run-to commands run the program (stdlib only).

    python3 driver.py --cwd DIR [--rm PATH]... [--stdin F] [--stdout F] [--stderr F]
                      [--env K=V]... [--client ARG]... [--timeout S] -- COMMAND...

* removes the --rm paths first (outputs of a previous run: an archiver must start from scratch),
* runs COMMAND in --cwd with exactly the --env variables (nothing inherited), stdin/stdout/stderr
  redirected to the given files, exec'd by /bin/sh, as gdb's ``run ... <IN >OUT 2>ERR`` does;
* for a server, starts the --client argv (in --cwd, output to --stdout.client) once COMMAND has
  started, waits for COMMAND to exit (the client shuts it down), then for the client;
* exits with COMMAND's exit status (124 after killing it on --timeout).
valgrind_argv() puts this in front of ``valgrind ...`` so that the returned argv is self-contained.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--cwd", required=True)
    ap.add_argument("--rm", action="append", default=[])
    ap.add_argument("--stdin", default=os.devnull)
    ap.add_argument("--stdout", default=os.devnull)
    ap.add_argument("--stderr", default=os.devnull)
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--client", action="append", default=[])
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        ap.error("no command")
    for p in a.rm:
        p = os.path.join(a.cwd, p)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        elif os.path.lexists(p):
            os.unlink(p)
    env = dict(kv.split("=", 1) for kv in a.env)
    # exec through /bin/sh as gdb's `run` does (startup-with-shell): dash re-orders the environment
    cmd = ["/bin/sh", "-c", 'exec "$0" "$@"'] + cmd
    with open(a.stdin, "rb") as fin, open(a.stdout, "wb") as fout, open(a.stderr, "wb") as ferr:
        proc = subprocess.Popen(cmd, cwd=a.cwd, env=env, stdin=fin, stdout=fout, stderr=ferr,
                                start_new_session=True)
    client = None
    if a.client:
        with open(a.stdout + ".client", "wb") as clog:
            client = subprocess.Popen(a.client, cwd=a.cwd, stdin=subprocess.DEVNULL, stdout=clog,
                                      stderr=subprocess.STDOUT)
    try:
        rc = proc.wait(timeout=a.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = 124
    if client is not None:
        try:
            client.wait(timeout=60 if rc == 0 else 1)
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait()
    return rc


if __name__ == "__main__":
    sys.exit(main())
