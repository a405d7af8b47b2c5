# phaul guest test workload: holds MIB MiB and keeps rewriting a fixed
# fraction of its pages, so that each pre-dump after the first has a known
# dirty set. Usage: dirty.py OUT MIB PERCENT [PERIOD]
#   The first PERCENT% of the pages are hot: sweep n writes n into the first
#   8 bytes of each, then the workload sleeps PERIOD seconds (default 0.05).
#   The other pages keep the pattern they were filled with.
#   OUT         "<sweeps done> <pid-in-ns>", after every sweep
#   OUT.ready   once the memory is filled
#   SIGUSR1  -> OUT.check: "ok <sweeps>" when the cold pages still hold their
#               pattern and every hot page holds the last sweep's number (or
#               the next one, for a prefix, when the signal came mid-sweep);
#               "MISMATCH <what>" otherwise. A page restored from an older
#               image than it should have been holds an older number.
import hashlib, os, signal, struct, sys, time

PAGE = 4096
out = sys.argv[1]
mib = int(sys.argv[2])
percent = float(sys.argv[3])
period = float(sys.argv[4]) if len(sys.argv) > 4 else 0.05
# A period of 251 bytes makes every page different; built without a
# per-byte loop, which is slow under emulation.
block = (bytes(range(251)) * 4178)[:1 << 20]
buf = bytearray(block) * mib
pages = len(buf) // PAGE
hot = int(pages * percent / 100)
cold_ref = hashlib.sha256(memoryview(buf)[hot * PAGE:]).hexdigest()
done = 0


def verdict():
    if hashlib.sha256(memoryview(buf)[hot * PAGE:]).hexdigest() != cold_ref:
        return "MISMATCH cold pages changed"
    seen = [struct.unpack_from("=Q", buf, p * PAGE)[0] for p in range(hot)] if done else []
    # Non-increasing, each the last sweep or the one being written.
    for i, v in enumerate(seen):
        if v not in (done, done + 1) or (i and v > seen[i - 1]):
            return "MISMATCH hot page %d holds %d after %d sweeps" % (i, v, done)
    return "ok %d" % done


def check(sig, frame):
    tmp = out + ".check.tmp"
    with open(tmp, "w") as f:
        f.write(verdict() + "\n")
    os.rename(tmp, out + ".check")


signal.signal(signal.SIGUSR1, check)
with open(out + ".ready", "w") as f:
    f.write("%d %d\n" % (pages, hot))
while True:
    stamp = struct.pack("=Q", done + 1)
    for p in range(hot):
        buf[p * PAGE:p * PAGE + 8] = stamp
    done += 1
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d %d\n" % (done, os.getpid()))
    os.rename(tmp, out)
    time.sleep(period)
