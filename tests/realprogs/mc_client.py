"""Deterministic memcached client for the real-program corpus (stdlib only, 127.0.0.1 only).

Run as a script: ``python3 mc_client.py --port P [--log FILE]``.  It connects (retrying while
the server starts, which is slow under valgrind), then plays a fixed, seeded sequence of
requests over CONNS connections in strict lock-step (each request's reply is read before the
next request is sent), so the server processes the same requests in the same order on every
run.  Then it sends ``stats`` (memcached calls getrusage() for it: that is the "mid" stop the
gdb commands break on) and, once the reply arrives, ``shutdown graceful`` so the server returns
from main() and exits normally (valgrind's leak check runs; gdb's "exit" stop catches
exit_group).  If the server is stopped by gdb and later killed, the client sees EOF or its
timeout and exits: it never loops forever.
"""
from __future__ import annotations

import argparse
import random
import socket
import sys
import time

CONNS = 4          # memcached hands connections to its worker threads round-robin
OPS = 600          # requests per run (sets, gets, multi-gets, deletes, incr, append)
SEED = 4242


class Conn:
    def __init__(self, port, timeout):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("server closed the connection")
        self.buf += chunk

    def line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        ln, self.buf = self.buf.split(b"\r\n", 1)
        return ln

    def exact(self, n):
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def until_end(self):
        """Read a get/stats reply up to END, returning the values seen."""
        values = []
        while True:
            ln = self.line()
            if ln == b"END":
                return values
            if ln.startswith(b"VALUE "):
                size = int(ln.split()[3])
                values.append(self.exact(size + 2)[:-2])
            elif ln.startswith(b"STAT "):
                values.append(ln)
            else:
                raise RuntimeError("unexpected reply %r" % ln)


def connect(port, deadline, timeout):
    while True:
        try:
            return Conn(port, timeout)
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)


def play(port, connect_timeout=120.0, io_timeout=600.0, log=None):
    deadline = time.time() + connect_timeout
    conns = [connect(port, deadline, io_timeout) for _ in range(CONNS)]
    rnd = random.Random(SEED)
    keys = ["key:%04d" % i for i in range(200)]
    counts = {"set": 0, "get": 0, "mget": 0, "delete": 0, "incr": 0, "append": 0}
    for op in range(OPS):
        c = conns[op % CONNS]
        r = rnd.random()
        key = rnd.choice(keys)
        if op < 200 or r < 0.35:
            # value sizes spread over many slab classes (16 B .. 24 KiB)
            size = int(16 * (1.6 ** rnd.randrange(0, 15))) + rnd.randrange(0, 16)
            val = bytes(rnd.randrange(97, 123) for _ in range(min(size, 64))) * (size // 64 + 1)
            val = val[:size]
            c.send(b"set %s %d 0 %d\r\n%s\r\n" % (key.encode(), op, len(val), val))
            assert c.line() == b"STORED"
            counts["set"] += 1
        elif r < 0.60:
            c.send(b"get %s\r\n" % key.encode())
            c.until_end()
            counts["get"] += 1
        elif r < 0.75:
            many = " ".join(rnd.choice(keys) for _ in range(rnd.randrange(2, 12)))
            c.send(b"get %s\r\n" % many.encode())
            c.until_end()
            counts["mget"] += 1
        elif r < 0.85:
            c.send(b"delete %s\r\n" % key.encode())
            c.line()
            counts["delete"] += 1
        elif r < 0.93:
            ckey = b"counter:%d" % rnd.randrange(8)
            c.send(b"add %s 0 0 1\r\n0\r\n" % ckey)
            c.line()
            c.send(b"incr %s %d\r\n" % (ckey, rnd.randrange(1, 1000)))
            c.line()
            counts["incr"] += 1
        else:
            c.send(b"append %s 0 0 5\r\n-tail\r\n" % key.encode())
            c.line()
            counts["append"] += 1
    if log:
        print("traffic done: %r" % counts, file=log, flush=True)
    # "mid" stop: gdb breaks on getrusage(), which memcached calls for exactly this request.
    conns[0].send(b"stats\r\n")
    stats = conns[0].until_end()
    if log:
        print("stats: %d lines" % len(stats), file=log, flush=True)
    conns[0].send(b"shutdown graceful\r\n")
    try:
        conns[0].line()
    except (EOFError, OSError):
        pass
    for c in conns:
        c.sock.close()
    return counts


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log")
    ap.add_argument("--connect-timeout", type=float, default=120.0)
    ap.add_argument("--io-timeout", type=float, default=600.0)
    a = ap.parse_args(argv)
    log = open(a.log, "w") if a.log else None
    try:
        play(a.port, a.connect_timeout, a.io_timeout, log)
        if log:
            print("client done", file=log, flush=True)
        return 0
    except (EOFError, OSError) as e:       # server killed by gdb at the mid stop, or gone
        if log:
            print("client ended: %s: %s" % (type(e).__name__, e), file=log, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
