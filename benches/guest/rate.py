# phaul iterations bench workload: holds MIB MiB and rewrites PERCENT% of
# its pages per second, walking through the whole buffer, so that what a
# pre-dump finds dirty grows with the time since the one before.
# Usage: rate.py OUT MIB PERCENT
#   Every 50 ms (a tick) it stamps the tick number into the next
#   PERCENT/20 % of the pages, wrapping at the end of the buffer.
#   OUT        "<ticks> <longest pause ms> <pages written>", after every
#              tick; the longest pause is the longest time between two
#              ticks' ends since SIGUSR1 came (or since the start), minus
#              the 50 ms a tick sleeps: what a migration freezing the
#              workload makes it feel.
#   OUT.ready  "<pages>", once the memory is filled.
import os, signal, struct, sys, time

PAGE = 4096
TICK = 0.05
out = sys.argv[1]
mib = int(sys.argv[2])
percent = float(sys.argv[3])
buf = bytearray(os.urandom(1 << 20)) * mib
pages = len(buf) // PAGE
per_tick = percent * pages / 100 * TICK
longest = 0.0
written = 0


def measure_from_now(sig, frame):
    global longest
    longest = 0.0


signal.signal(signal.SIGUSR1, measure_from_now)
with open(out + ".ready", "w") as f:
    f.write("%d\n" % pages)
ticks, cursor, due, last = 0, 0, 0.0, time.monotonic()
while True:
    # Whole pages only; the fraction carries over to the next tick.
    due += per_tick
    n = int(due)
    due -= n
    stamp = struct.pack("=Q", ticks + 1)
    for _ in range(n):
        buf[cursor * PAGE:cursor * PAGE + 8] = stamp
        cursor = (cursor + 1) % pages
    written += n
    ticks += 1
    now = time.monotonic()
    longest = max(longest, now - last - TICK)
    last = now
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d %.0f %d\n" % (ticks, longest * 1000, written))
    os.rename(tmp, out)
    time.sleep(TICK)
