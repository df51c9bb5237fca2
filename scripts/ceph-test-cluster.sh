#!/bin/bash
# A throw-away single-node Ceph for librados clients: 1 mon, 1 memstore OSD, no mgr, no
# radosgw, auth none, on loopback. Everything (ceph.conf, mon/osd data, logs, pids) lives in DIR.
#
#   scripts/ceph-test-cluster.sh start DIR   prints DIR/ceph.conf once the pool "vdiskfs"
#                                            (8 PGs, size 1) has served a real put/get
#   scripts/ceph-test-cluster.sh stop DIR    kills the cluster's daemons, waits for them, removes DIR
#
# Env (start):
#   MON_PORT   the monitor's port; default: a free one (several clusters can run side by side)
#   OWNER_PID  stop the cluster by itself once this process has exited (a test run that crashes
#              leaves nothing behind)
# Clients: export CEPH_CONF=DIR/ceph.conf (or pass it to RadosCluster / rados -c).
# Needs: ceph-mon ceph-osd (Debian: apt-get install ceph-mon ceph-osd). Takes about a second.
# Errors: one line on stderr, exit status 1, daemons stopped (the logs stay in DIR/log).
set -uo pipefail
PROG=ceph-test-cluster
POOL=vdiskfs

die() { echo "$PROG: $*" >&2; exit 1; }
[ $# -eq 2 ] && { [ "$1" = start ] || [ "$1" = stop ]; } && [ -n "$2" ] ||
    die "usage: $0 start|stop DIR"
D=$(realpath -m -- "$2")
CONF=$D/ceph.conf
MARK=$D/.ceph-test-cluster   # stop removes only a directory that start made

now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }

# The pid in FILE, when it names a live process of this cluster (its command line names
# DIR/ceph.conf: a recycled pid is left alone). A zombie counts as gone.
cluster_pid() {
    local pid state
    [ -s "$1" ] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$CONF" || return 1
    echo "$pid"
}

alive() { local s; s=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [ -n "$s" ] && [ "$s" != Z ]; }

# SIGKILL, not SIGTERM: on SIGTERM a memstore OSD first saves all its data to DIR, which is
# about to be removed anyway. Waits (up to 10 s) until every daemon is gone.
kill_daemons() {
    local f pid pids=() deadline
    for f in "$D/run/watchdog.pid" "$D/run/osd.0.pid" "$D/run/mon.a.pid"; do
        pid=$(cluster_pid "$f") || continue
        [ "$pid" = $$ ] && continue          # the watchdog, running this very stop
        kill -KILL "$pid" 2>/dev/null && pids+=("$pid")
    done
    deadline=$(($(now_ms) + 10000))
    for pid in "${pids[@]}"; do
        while alive "$pid"; do
            [ "$(now_ms)" -lt "$deadline" ] || { echo "$PROG: pid $pid did not exit" >&2; return 1; }
            sleep 0.02
        done
    done
}

if [ "$1" = stop ]; then
    [ -d "$D" ] || die "no cluster in $D (no such directory)"
    [ -e "$MARK" ] || die "no cluster in $D (not made by '$PROG start'); not removing it"
    kill_daemons || exit 1
    rm -rf -- "$D" || die "could not remove $D"
    exit 0
fi

# ---------------------------------------------------------------- start
for tool in ceph-mon ceph-osd monmaptool ceph rados; do
    command -v "$tool" >/dev/null ||
        die "$tool not found: Ceph is not installed (apt-get install ceph-mon ceph-osd)"
done
if [ -e "$D" ] && [ -n "$(ls -A -- "$D" 2>/dev/null)" ]; then die "$D exists and is not empty"; fi
mkdir -p "$D"/{mon.a,osd.0,log,run} && touch "$MARK" || die "cannot create $D"
SETUP_LOG=$D/log/setup.log
export CEPH_CONF=$CONF

STEP="setting up"
fail() {
    kill_daemons 2>/dev/null
    echo "$PROG: start failed while $STEP (logs in $D/log)" >&2
    exit 1
}
# Runs a command with its output in the setup log; a failure ends the start.
run() { echo "+ $*" >>"$SETUP_LOG"; "$@" >>"$SETUP_LOG" 2>&1 || fail; }
# Polls a command (output to the setup log) every 50 ms until it succeeds or SECONDS pass.
poll() {
    local deadline=$(($(now_ms) + $1 * 1000)); shift
    until "$@" >>"$SETUP_LOG" 2>&1; do
        [ "$(now_ms)" -lt "$deadline" ] || fail
        sleep 0.05
    done
}

if [ -n "${OWNER_PID:-}" ]; then
    [[ $OWNER_PID =~ ^[0-9]+$ ]] && kill -0 "$OWNER_PID" 2>/dev/null || fail
    # tail --pid returns once the owner is gone; the stop then runs with the watchdog's pid.
    setsid bash -c 'tail --pid="$1" -f /dev/null; exec bash "$2" stop "$3"' \
        "$PROG-watchdog $CONF" "$OWNER_PID" "$(realpath -- "$0")" "$D" \
        </dev/null >>"$D/log/watchdog.log" 2>&1 &
    echo $! >"$D/run/watchdog.pid"
fi

write_conf() {
    cat >"$CONF" <<EOF
[global]
fsid = $FSID
mon host = [v2:127.0.0.1:$1]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
auth cluster required = none
auth service required = none
auth client required = none
keyring = /dev/null
run dir = $D/run
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1
[mon]
mon data = $D/\$name
log file = $D/log/\$name.log
pid file = $D/run/\$name.pid
admin socket = $D/run/\$name.asok
# default 1 s: each pool create waits for about two proposals
paxos propose interval = 0.1
[osd]
osd data = $D/\$name
log file = $D/log/\$name.log
pid file = $D/run/\$name.pid
admin socket = $D/run/\$name.asok
osd objectstore = memstore
memstore device bytes = 4294967296
osd memory target = 1073741824
EOF
}

# A port nobody listens on, outside the ephemeral range; the mon's bind is the real test.
pick_port() {
    local p
    for _ in $(seq 1 50); do
        p=$((20000 + RANDOM % 12000))
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
    echo 0
}

# --- mon: with a port of our choosing, a few tries in case another cluster takes it first
FSID=$(cat /proc/sys/kernel/random/uuid)
for attempt in 1 2 3 4 5; do
    PORT=${MON_PORT:-$(pick_port)}
    STEP="starting ceph-mon on 127.0.0.1:$PORT"
    write_conf "$PORT"
    rm -rf "${D:?}/mon.a" && mkdir "$D/mon.a"
    run monmaptool --create --clobber --fsid "$FSID" --addv a "[v2:127.0.0.1:$PORT]" "$D/monmap"
    run ceph-mon -c "$CONF" --mkfs -i a --monmap "$D/monmap"
    echo "+ ceph-mon -c $CONF -i a" >>"$SETUP_LOG"
    ceph-mon -c "$CONF" -i a >>"$SETUP_LOG" 2>&1 && break     # forks once it has bound the port
    [ -z "${MON_PORT:-}" ] && [ "$attempt" -lt 5 ] || fail
done

# --- osd
STEP="creating osd.0"
OSD_UUID=$(cat /proc/sys/kernel/random/uuid)
run ceph --connect-timeout 20 osd new "$OSD_UUID"
run ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$OSD_UUID"
STEP="starting ceph-osd"
run ceph-osd -c "$CONF" -i 0
STEP="waiting for osd.0 to come up"
osd_up() { ceph --connect-timeout 10 osd dump | grep -q '^osd\.0 up'; }
poll 60 osd_up

# --- the pool, and a real put/get through it
STEP="creating pool $POOL"
run ceph --connect-timeout 10 osd pool create "$POOL" 8 8
STEP="checking a put/get in pool $POOL"
head -c 4096 /dev/urandom >"$D/check.in"
rados_() { timeout 60 rados -p "$POOL" "$@"; }
run rados_ put ceph-test-cluster-check "$D/check.in"
run rados_ get ceph-test-cluster-check "$D/check.out"
run cmp "$D/check.in" "$D/check.out"
run rados_ rm ceph-test-cluster-check
rm -f "$D/check.in" "$D/check.out"
echo "$CONF"
