# phaul guest test workload: holds MIB MiB and keeps rewriting a known part
# of its pages, so that each pre-dump after the first has a known dirty set.
# Usage: dirty.py OUT MIB PERCENT [GROW]
#   The first PERCENT% of the pages are hot: sweep n stamps n into the
#   first 8 bytes of each, then the workload sleeps 50 ms. After SIGUSR2 the
#   hot part grows by GROW% of the pages per second, up to half of them.
#   Pages past that half are never written.
#   OUT         "<sweeps done> <hot pages> <pid-in-ns>", after every sweep
#   OUT.ready   "<pages> <hot pages>", once the memory is filled
#   SIGUSR1  -> OUT.check: "ok <sweeps>" when the never-written half is
#               intact, the stamped pages are a prefix holding the last sweep
#               (or the next one, for a shorter prefix, if the signal came
#               mid-sweep) and every other page its first content;
#               "MISMATCH <what>" otherwise. A page restored from an older
#               image than it should have been holds an older stamp.
import hashlib, os, signal, struct, sys, time

PAGE = 4096
MAGIC = 0x5048
out = sys.argv[1]
mib = int(sys.argv[2])
percent = float(sys.argv[3])
grow = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
# A period of 251 bytes makes every page different; built without a
# per-byte loop, which is slow under emulation.
block = (bytes(range(251)) * 4178)[:1 << 20]
buf = bytearray(block) * mib
view = memoryview(buf)
pages = len(buf) // PAGE
limit = pages // 2
hot = min(limit, int(pages * percent / 100))
cold_ref = hashlib.sha256(view[limit * PAGE:]).hexdigest()
done = 0
grow_from = None  # (time, hot) when SIGUSR2 came


def first_content(p):
    at = (p * PAGE) % len(block)
    return block[at:at + PAGE]


def verdict():
    if hashlib.sha256(view[limit * PAGE:]).hexdigest() != cold_ref:
        return "MISMATCH the never-written half changed"
    last, prefix = None, True
    for p in range(limit):
        n, magic = struct.unpack_from("=II", buf, p * PAGE)
        ref = first_content(p)
        prefix = prefix and magic == MAGIC
        if prefix:
            if n not in (done, done + 1) or (last is not None and n > last):
                return "MISMATCH page %d holds sweep %d after %d sweeps" % (p, n, done)
            if view[p * PAGE + 8:(p + 1) * PAGE] != ref[8:]:
                return "MISMATCH page %d changed past its stamp" % p
            last = n
        elif view[p * PAGE:(p + 1) * PAGE] != ref:
            return "MISMATCH page %d is neither stamped nor as first filled" % p
    return "ok %d" % done


def check(sig, frame):
    tmp = out + ".check.tmp"
    with open(tmp, "w") as f:
        f.write(verdict() + "\n")
    os.rename(tmp, out + ".check")


def start_growing(sig, frame):
    global grow_from
    if grow_from is None:
        grow_from = (time.monotonic(), hot)


signal.signal(signal.SIGUSR1, check)
signal.signal(signal.SIGUSR2, start_growing)
with open(out + ".ready", "w") as f:
    f.write("%d %d\n" % (pages, hot))
while True:
    if grow_from is not None:
        since, base = grow_from
        hot = min(limit, base + int((time.monotonic() - since) * grow * pages / 100))
    stamp = struct.pack("=II", done + 1, MAGIC)
    for p in range(hot):
        buf[p * PAGE:p * PAGE + 8] = stamp
    done += 1
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d %d %d\n" % (done, hot, os.getpid()))
    os.rename(tmp, out)
    time.sleep(0.05)
