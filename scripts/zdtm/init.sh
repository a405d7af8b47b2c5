#!/bin/bash
# PID 1 of a zdtm test's PID namespace, for scripts/zdtm.sh, for tests
# without the ns flavour (zdtm.py runs them on the host): what the zdtm
# library's own namespace init (ns_init() in test/zdtm/lib/ns.c, run with
# ZDTM_NEWNS=2) does, without the time namespace it also makes. That one
# cannot be restored by CRIU for every test: ns_init enters a new time
# namespace itself, but tests such as socket-tcp fork their peer before
# ns_init runs, so the peer stays in the old one, and CRIU refuses to
# restore a sub-task in another namespace ("Can't restore sub-task in NS
# (cflags 80)"), with plain CRIU as with phaul.
#
#   init.sh STATUSFILE PIDFILE TEST ARGS...
#
# Starts TEST (which daemonizes and writes its PID, as seen in this
# namespace, to PIDFILE once it runs), writes TEST's exit status to
# STATUSFILE (0: the test runs), then waits; orphans are reparented to it
# and bash reaps them. On SIGTERM it stops the test with SIGTERM, as
# ns_init does, waits until the test has ended, and exits.
set -u
status=$1 pidfile=$2
shift 2
stop=
trap 'stop=1' TERM
"$@" </dev/null
rc=$?
echo "$rc" > "$status"
[ "$rc" -eq 0 ] || exit "$rc"
# Nothing of the outside stays open here: the launcher's log file would
# change size after the dump, which CRIU's restore refuses.
exec </dev/null >/dev/null 2>&1
while [ -z "$stop" ]; do
    # wait returns as soon as the trapped SIGTERM arrives.
    sleep 3600 &
    wait $!
done
kill -9 $! 2>/dev/null
# The PID file has no newline, so read "fails" after reading it.
pid=
read -r pid < "$pidfile" || [ -n "$pid" ] || exit 1
kill -TERM "$pid" || exit 1
while kill -0 "$pid" 2>/dev/null; do
    sleep 0.05
done
exit 0
