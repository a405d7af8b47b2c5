"""A Redis client that keeps ONE connection and uses it all the time.

usage: client.py HOST PORT PERIOD_S STATS_FILE

Every PERIOD_S it sends INCR phaul:counter and checks the answer is one more
than the last (so a server that lost or reset its data is an error, not a
success), timing how long each answer took. It never reconnects: a broken
connection is counted as an error on every later tick. Every 50 ms it
rewrites STATS_FILE: `ok N`, `errors N`, `stall_ms X` (the longest wait),
`last_error TEXT`, `stall_at T` (when the longest wait began) and
`broken_at T` (when the connection broke), both in seconds of
CLOCK_MONOTONIC (the clock a test's Instant reads), so a test can place
them within a migration's phases.
"""
import os
import socket
import sys
import time

host, port, period, stats = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
ok = errors = 0
stall = 0.0
last_error = ""
broken_at = None
stall_at = None
last = None


def write():
    tmp = stats + ".tmp"
    with open(tmp, "w") as f:
        f.write("ok %d\nerrors %d\nstall_ms %.1f\n" % (ok, errors, stall * 1000))
        if last_error:
            f.write("last_error %s\n" % last_error.replace("\n", " "))
        if stall_at is not None:
            f.write("stall_at %.6f\n" % stall_at)
        if broken_at is not None:
            f.write("broken_at %.6f\n" % broken_at)
    os.rename(tmp, stats)


sock = socket.create_connection((host, port), timeout=30)
sock.settimeout(30)
buf = b""
written = 0.0
broken = False
while True:
    t0 = time.monotonic()
    if not broken:
        try:
            sock.sendall(b"INCR phaul:counter\r\n")
            while b"\r\n" not in buf:
                chunk = sock.recv(4096)
                if not chunk:
                    raise OSError("the server closed the connection")
                buf += chunk
            line, buf = buf.split(b"\r\n", 1)
            waited = time.monotonic() - t0
            if waited > stall:
                stall, stall_at = waited, t0
            if not line.startswith(b":"):
                raise ValueError("unexpected answer %r" % line)
            n = int(line[1:])
            if last is not None and n != last + 1:
                errors += 1
                last_error = "counter went from %d to %d" % (last, n)
            else:
                ok += 1
            last = n
        except (OSError, ValueError) as e:
            broken = True
            broken_at = time.monotonic()
            last_error = "%s: %s" % (type(e).__name__, e)
    if broken:
        errors += 1
    now = time.monotonic()
    if now - written > 0.05:
        write()
        written = now
    time.sleep(max(0.0, period - (time.monotonic() - t0)))
