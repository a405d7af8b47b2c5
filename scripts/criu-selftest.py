#!/usr/bin/python3
"""The workload of setup.sh's CRIU self-test: one process holding every kind
of socket a service has (a listening TCP socket, both ends of an established
TCP connection, a bound UDP socket, a unix socket pair). It keeps using them
and counts; after a dump and restore the count must go on and every socket
must still carry data. It writes DIR/ready when set up, DIR/count as it
goes, and DIR/broken (then exits) as soon as a socket fails.
"""
import os
import socket
import sys
import time

out = sys.argv[1]


def put(name, text):
    tmp = os.path.join(out, name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, os.path.join(out, name))


listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.bind(("127.0.0.1", 0))
listener.listen(4)
client = socket.create_connection(listener.getsockname())
server, _ = listener.accept()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", 0))
unix_a, unix_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
put("ready", "%d\n" % os.getpid())

n = 0
while True:
    n += 1
    msg = b"%d\n" % n
    try:
        client.sendall(msg)
        got = server.recv(64)
        udp.sendto(msg, udp.getsockname())
        got_udp = udp.recv(64)
        unix_a.sendall(msg)
        got_unix = unix_b.recv(64)
    except OSError as e:
        put("broken", "%s\n" % e)
        sys.exit(1)
    if got != msg or got_udp != msg or got_unix != msg:
        put("broken", "data changed at %d\n" % n)
        sys.exit(1)
    put("count", "%d\n" % n)
    time.sleep(0.02)
