# phaul test workload: holds MIB MiB of memory with a known pattern and
# counts. Usage: workload.py OUT MIB [PERIOD]
#   OUT            rewritten every PERIOD seconds (default 0.1) with
#                  "<counter> <pid-in-ns> <token>"; the token is drawn once at
#                  start and lives only in memory, so a copy that was started
#                  again instead of restored shows another one
#   OUT.ready      written once the memory is filled
#   SIGUSR1     -> OUT.check gets "ok <counter>" if the memory's checksum
#                  is unchanged, "MISMATCH <counter>" otherwise
import hashlib, os, signal, sys, time

out = sys.argv[1]
mib = int(sys.argv[2])
period = float(sys.argv[3]) if len(sys.argv) > 3 else 0.1
block = bytes((i * 7 + 13) % 251 for i in range(1 << 20))
buf = bytearray(block) * mib
ref = hashlib.sha256(buf).hexdigest()
counter = 0
token = os.urandom(8).hex()

def check(sig, frame):
    ok = hashlib.sha256(buf).hexdigest() == ref
    tmp = out + ".check.tmp"
    with open(tmp, "w") as f:
        f.write("%s %d\n" % ("ok" if ok else "MISMATCH", counter))
    os.rename(tmp, out + ".check")

signal.signal(signal.SIGUSR1, check)
with open(out + ".ready", "w") as f:
    f.write("ready\n")
while True:
    counter += 1
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d %d %s\n" % (counter, os.getpid(), token))
    os.rename(tmp, out)
    time.sleep(period)
