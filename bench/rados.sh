#!/bin/bash
# RADOS benchmark (issue 6): one run, side by side, on the test images:
#   - ingest of upd.img and of all three images into a RADOS store and into a local store
#     (wall time, MB/s of logical bytes, stored bytes), from a cold page cache;
#   - cold streaming read of upd.img through the mount (dd bs=1M, kernel caches dropped before
#     each read): local store; RADOS store without a disk cache; RADOS with an empty disk cache
#     (cold: the read fills it); RADOS after a remount with that warm disk cache (kernel caches
#     dropped, the disk cache kept); restic's mount over a local repository of the same image;
#   - per read: the daemon's peak RSS (VmHWM, each read has a fresh daemon), its CPU time, the
#     OSD's CPU time, the reader's, the RADOS reads it made (the OSD's op_r counters: count and
#     bytes), and how much CPU other processes on the machine took meanwhile.
# Every cold read is repeated REPEAT times, interleaved (local, RADOS, cold cache, warm cache,
# restic, then again), so that the ratios compare reads made under the same machine load.
# Starts its own throw-away Ceph (scripts/ceph-test-cluster.sh: one mon and one memstore OSD on
# loopback, pool vdiskfs) and stops it on exit. Builds nothing: VDISKFS names the release binary.
# Usage: bench/rados.sh [IMAGES_DIR]        (prints Markdown tables)
# Env:  VDISKFS    the vdiskfs binary (default .build/release/vdiskfs)
#       WORK       scratch directory (default /var/tmp/vdiskfs-bench-rados), removed at the end
#       REPEAT     cold reads per configuration (default 3)
#       READAHEAD  the mounts' --readahead (default 1M, the mount's default)
#       QUIET      seconds to wait, before each read, for the machine to be idle (>= 85 % idle
#                  over half a second; default 60; 0 = do not wait). Other CPU use during each
#                  read is reported either way.
#       RESTIC=0   skip restic's mount
#       SWEEP=1    also: readahead 1M/4M/16M, fio with 1/2/4 sequential readers, a disk cache
#                  smaller than the image's data
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
images=${1:-/var/cache/vdiskfs-images}
image=$images/upd.img
work=${WORK:-/var/tmp/vdiskfs-bench-rados}
vdiskfs=${VDISKFS:-$here/../.build/release/vdiskfs}
repeat=${REPEAT:-3}
readahead=${READAHEAD:-1M}
quiet=${QUIET:-60}
[[ -x $vdiskfs ]] || { echo "build first: swift build -c release (or set VDISKFS)" >&2; exit 1; }
for t in fio restic rados ceph-osd; do command -v $t >/dev/null || { echo "$t is missing (apt-get install fio restic ceph-mon ceph-osd)" >&2; exit 1; }; done
export RESTIC_PASSWORD=bench SWIFT_BACKTRACE=enable=no   # no crash dump for the exit abort (see vd)
ceph=$work/ceph
files=("$images/base.img" "$images/base2.img" "$images/upd.img")

# One run at a time per WORK directory (a second run would remove the first one's files).
exec 9>"$work.lock"
flock -n 9 || { echo "another bench/rados.sh is using $work" >&2; exit 1; }
cleanup() {
    set +e
    # From /proc/mounts, not `mountpoint`: the mount of a daemon that died (a run that crashed)
    # answers ENOTCONN, which mountpoint takes for "not a mount point", and rm then fails.
    for m in "$work"/mnt-*; do grep -qF " $m fuse" /proc/mounts && { fusermount3 -u "$m" 2>/dev/null || umount -l "$m"; }; done
    [[ -n ${restic_pid:-} ]] && kill "$restic_pid" 2>/dev/null
    sleep 1   # daemons finish their final flush before the cluster goes
    [[ -e $ceph/.ceph-test-cluster ]] && bash "$here/../scripts/ceph-test-cluster.sh" stop "$ceph" >/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
# In a subshell: cleanup's `set +e` would otherwise stay in force for the rest of the script.
(cleanup); mkdir -p "$work"
conf=$(OWNER_PID=$$ bash "$here/../scripts/ceph-test-cluster.sh" start "$ceph" 9>&-)
osd_asok=$ceph/run/osd.0.asok
osd_pid=$(<"$ceph/run/osd.0.pid")
rados_at() { echo "rados://vdiskfs/$1?conf=$conf"; }

# vdiskfs, tolerating one known failure: a crash at process exit after the command's work is
# done (SIGABRT from rados_shutdown: LockKeeper's thread drops the last reference to the cluster
# while exit() runs the libraries' destructors; 2-10 % of the commands that take a RADOS lock;
# a SIGSEGV was also seen once). Deaths by a signal are listed in $work/aborts and reported;
# what the command did is checked separately (ls after import, mountpoint after mount).
vd() {
    local rc=0
    "$vdiskfs" "$@" 9>&- 2> >(grep -v -e '^terminate called' -e 'boost::bad_get' >&2) || rc=$?
    if (( rc > 128 )); then echo "$1 (signal $((rc - 128)))" >> "$work/aborts"; return 0; fi
    return $rc
}
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }            # utime + stime
machine() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }          # busy ticks, all cores
idle_pct() {
    local a b c d
    read -r a b < <(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6}' /proc/stat); sleep 0.5
    read -r c d < <(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6}' /proc/stat)
    echo $(( 100 * (d - b) / ((c - a) + (d - b) + 1) ))
}
wait_quiet() {
    local end=$(( SECONDS + quiet ))
    while (( SECONDS < end )); do (( $(idle_pct) >= 85 )) && return 0; done
    return 0
}
osd_counters() { # op_r and op_r_out_bytes of the OSD
    ceph --admin-daemon "$osd_asok" perf dump 2>/dev/null |
        python3 -c 'import json,sys; d=json.load(sys.stdin)["osd"]; print(d["op_r"], d["op_r_out_bytes"])'
}
pool_bytes() { # bytes of every object of namespace $1
    rados -c "$conf" -p vdiskfs -N "$1" ls | while read -r o; do rados -c "$conf" -p vdiskfs -N "$1" stat "$o"; done |
        awk '{s += $NF} END {print s + 0}'
}
pool_drop() { rados -c "$conf" -p vdiskfs -N "$1" ls | while read -r o; do rados -c "$conf" -p vdiskfs -N "$1" rm "$o"; done; }

# ---------------------------------------------------------------------------------- ingest
# ingest LABEL KIND STORE STATE_DIR IMPORT_ARGS FILES... : one store, every file, cold cache.
logical_of() { echo $(( $(stat -c %s "$@" | paste -sd+) )); }
declare -A IN
ingest() {
    local label=$1 kind=$2 store=$3 state=$4 args=$5; shift 5
    local sd=(); [[ $kind == rados ]] && sd=(--state-dir "$state")
    vd init -s "$store" "${sd[@]}" >/dev/null
    cold; wait_quiet
    local t0 t1 f; t0=$(now)
    for f in "$@"; do vd import -q $args -s "$store" "${sd[@]}" "$f" "$(basename "$f")"; done
    t1=$(now)
    # (Not `vd ls | grep -q`: grep leaving early would kill ls with SIGPIPE, which vd counts as an abort.)
    local listing; listing=$(vd ls -s "$store" "${sd[@]}" 2>/dev/null)
    for f in "$@"; do grep -q "^$(basename "$f") " <<< "$listing" ||
        { echo "ingest $label: $(basename "$f") is missing from $store" >&2; exit 1; }; done
    local stored local_bytes=0
    if [[ $kind == rados ]]; then
        local n=${store#rados://vdiskfs/}; n=${n%%\?*}
        stored=$(pool_bytes "$n")
        local_bytes=$(du -sb "$state" | cut -f1)
    else
        stored=$(du -sb "$store" | cut -f1)
    fi
    IN[$label,$kind]="$(echo "$t1 - $t0" | bc) $(logical_of "$@") $stored $local_bytes"
}
for row in "upd-raw|--raw|$image" "upd||$image" "all||${files[*]}" "all-raw|--raw|${files[*]}"; do
    IFS='|' read -r label args list <<< "$row"
    # shellcheck disable=SC2086
    ingest "$label" local "$work/local-$label" "" "$args" $list
    # shellcheck disable=SC2086
    ingest "$label" rados "$(rados_at "$label")" "$work/state-$label" "$args" $list
done
# Only the plain upd.img stores are read below; the memstore OSD keeps everything in RAM.
for label in upd all all-raw; do pool_drop "$label"; rm -rf "$work/local-$label" "$work/state-$label"; done

# ---------------------------------------------------------------------------------- reads
# read_cold NAME FILE PID [READER...]: one cold read; appends a row to $work/reads.
# Columns: name MB/s seconds daemon_cpu osd_cpu reader_cpu others_cpu osd_reads osd_bytes hwm_MiB idle_before_%
read_cold() {
    local name=$1 file=$2 pid=$3; shift 3
    cold; wait_quiet; local idle; idle=$(idle_pct)
    local o1 b1 o2 b2 d1 d2 s1 s2 m1 m2 t0 t1 size
    read -r o1 b1 < <(osd_counters); d1=$(ticks "$pid"); s1=$(ticks "$osd_pid"); m1=$(machine)
    # /usr/bin/time execs its command: a reader must be a program, not a shell function.
    if (( $# )) && [[ $(type -t "$1") != file ]]; then echo "read_cold $name: $1 is not a program" >&2; exit 1; fi
    t0=$(now)
    if (( $# )); then /usr/bin/time -f '%U %S' -o "$work/rtime" "$@" >/dev/null 2>>"$work/reader.log"
    else /usr/bin/time -f '%U %S' -o "$work/rtime" dd if="$file" of=/dev/null bs=1M status=none; fi
    t1=$(now)
    read -r o2 b2 < <(osd_counters); d2=$(ticks "$pid"); s2=$(ticks "$osd_pid"); m2=$(machine)
    size=$(stat -c %s "$file")
    local hwm; hwm=$(awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$pid/status")
    python3 - "$name" "$size" "$t0" "$t1" "$d1" "$d2" "$s1" "$s2" "$m1" "$m2" "$o1" "$o2" "$b1" "$b2" "$hwm" "$idle" "$(tail -1 "$work/rtime")" >> "$work/reads" <<'PY'
import os, sys
a = sys.argv
name, size, t0, t1 = a[1], int(a[2]), float(a[3]), float(a[4])
hz = os.sysconf("SC_CLK_TCK")
d, s, m = (int(a[6]) - int(a[5])) / hz, (int(a[8]) - int(a[7])) / hz, (int(a[10]) - int(a[9])) / hz
u, k = map(float, a[17].split())
wall = t1 - t0
print(name, round(size / wall / 1e6), f"{wall:.2f}", f"{d:.2f}", f"{s:.2f}", f"{u + k:.2f}", f"{max(0.0, m - d - s - u - k):.2f}",
      int(a[12]) - int(a[11]), int(a[14]) - int(a[13]), a[15], a[16])
PY
}
# mount_v MOUNTPOINT STORE LOCKFILE [ARGS...]: mounts with the bench's read-ahead; the daemon's
# pid in $pid, from the store's lock file ("pid N (vdiskfs mount on ...)"; not pgrep, which
# hangs on this shared machine whenever another process's /proc/PID/stat does).
mount_v() {
    local m=$1 s=$2 lock=$3; shift 3
    mkdir -p "$m"
    vd mount -s "$s" "$m" --readahead "$readahead" "$@" >/dev/null
    mountpoint -q "$m" || { echo "mount on $m failed" >&2; exit 1; }
    pid=$(awk '$1 == "pid" {print $2}' "$lock")
    [[ -n $pid && -d /proc/$pid ]] || { echo "no daemon for $m (lock file $lock)" >&2; exit 1; }
}
# unmount_v MOUNTPOINT PID: fusermount3 -u and wait for the daemon's final flush and exit.
# (Not `vdiskfs unmount`: for a rados:// store it waits on STORE/lock, a local path that does
# not exist, and gives up after its 600 s timeout.)
unmount_v() {
    fusermount3 -u "$1"
    local i; for i in $(seq 600); do kill -0 "$2" 2>/dev/null || return 0; sleep 0.1; done
    echo "daemon $2 of $1 did not exit" >&2; exit 1
}
local_store=$work/local-upd-raw
rados_store=$(rados_at upd-raw)
rstate=(--state-dir "$work/state-upd-raw")
rlock=$work/state-upd-raw/rados/vdiskfs/upd-raw/lock
if [[ ${RESTIC:-1} != 0 ]]; then
    restic init -q -r "$work/restic" && restic -q -r "$work/restic" backup "$image" >/dev/null
fi
: > "$work/reads"
for rep in $(seq "$repeat"); do
    mount_v "$work/mnt-l" "$local_store" "$local_store/lock"
    read_cold local "$work/mnt-l/upd.img" "$pid"; unmount_v "$work/mnt-l" "$pid"

    mount_v "$work/mnt-r" "$rados_store" "$rlock" "${rstate[@]}"
    read_cold rados "$work/mnt-r/upd.img" "$pid"; unmount_v "$work/mnt-r" "$pid"

    rm -rf "$work/dcache"
    mount_v "$work/mnt-r" "$rados_store" "$rlock" "${rstate[@]}" --disk-cache "$work/dcache" --disk-cache-size 4G
    read_cold rados-dc-cold "$work/mnt-r/upd.img" "$pid"; unmount_v "$work/mnt-r" "$pid"
    dcache_bytes=$(du -sb "$work/dcache" | cut -f1)

    mount_v "$work/mnt-r" "$rados_store" "$rlock" "${rstate[@]}" --disk-cache "$work/dcache" --disk-cache-size 4G
    read_cold rados-dc-warm "$work/mnt-r/upd.img" "$pid"; unmount_v "$work/mnt-r" "$pid"

    if [[ ${RESTIC:-1} != 0 ]]; then
        mkdir -p "$work/mnt-restic"
        restic -r "$work/restic" mount "$work/mnt-restic" >/dev/null 2>&1 9>&- &
        restic_pid=$!
        f=$work/mnt-restic/snapshots/latest$image
        for _ in $(seq 600); do [[ -e $f ]] && break; sleep 0.1; done
        [[ -e $f ]] || { echo "restic mount did not show $f within 60 s" >&2; exit 1; }
        read_cold restic "$f" "$restic_pid"
        fusermount3 -u "$work/mnt-restic"; wait "$restic_pid" 2>/dev/null || true; restic_pid=
    fi
done

# ---------------------------------------------------------------------------------- sweep
if [[ ${SWEEP:-0} == 1 ]]; then
    # fio_seq FILE JOBS: the fio command line of N readers, each streaming its own 1/N of the file in 1 MiB reads.
    fio_seq() { local part=$(( $(stat -c %s "$1") / $2 / 1048576 ))
        fio=(fio --name=s --filename="$1" --rw=read --bs=1M --numjobs="$2" --size=${part}M --offset_increment=${part}M --group_reporting); }
    for rep in 1 2; do
        for ra in 1M 4M 16M; do
            readahead=$ra
            mount_v "$work/mnt-l" "$local_store" "$local_store/lock"; read_cold "local ra=$ra" "$work/mnt-l/upd.img" "$pid"; unmount_v "$work/mnt-l" "$pid"
            mount_v "$work/mnt-r" "$rados_store" "$rlock" "${rstate[@]}"; read_cold "rados ra=$ra" "$work/mnt-r/upd.img" "$pid"; unmount_v "$work/mnt-r" "$pid"
            mount_v "$work/mnt-r" "$rados_store" "$rlock" "${rstate[@]}" --disk-cache "$work/dcache" --disk-cache-size 4G
            read_cold "rados-dc-warm ra=$ra" "$work/mnt-r/upd.img" "$pid"; unmount_v "$work/mnt-r" "$pid"
        done
        readahead=${READAHEAD:-1M}
        for jobs in 1 2 4; do
            mount_v "$work/mnt-l" "$local_store" "$local_store/lock"; fio_seq "$work/mnt-l/upd.img" $jobs; read_cold "local fio×$jobs" "$work/mnt-l/upd.img" "$pid" "${fio[@]}"; unmount_v "$work/mnt-l" "$pid"
            mount_v "$work/mnt-r" "$rados_store" "$rlock" "${rstate[@]}"; fio_seq "$work/mnt-r/upd.img" $jobs; read_cold "rados fio×$jobs" "$work/mnt-r/upd.img" "$pid" "${fio[@]}"; unmount_v "$work/mnt-r" "$pid"
            mount_v "$work/mnt-r" "$rados_store" "$rlock" "${rstate[@]}" --disk-cache "$work/dcache" --disk-cache-size 4G
            fio_seq "$work/mnt-r/upd.img" $jobs; read_cold "rados-dc-warm fio×$jobs" "$work/mnt-r/upd.img" "$pid" "${fio[@]}"; unmount_v "$work/mnt-r" "$pid"
        done
        for r in local rados; do
            if [[ $r == local ]]; then mount_v "$work/mnt-l" "$local_store" "$local_store/lock"; m=$work/mnt-l
            else mount_v "$work/mnt-r" "$rados_store" "$rlock" "${rstate[@]}"; m=$work/mnt-r; fi
            read_cold "$r cat" "$m/upd.img" "$pid" cat "$m/upd.img"; unmount_v "$m" "$pid"
        done
    done
    # A disk cache smaller than the image's records (about 600 MB): fill, then read again.
    rm -rf "$work/dcache-small"
    mount_v "$work/mnt-r" "$rados_store" "$rlock" "${rstate[@]}" --disk-cache "$work/dcache-small" --disk-cache-size 256M
    read_cold "rados-dc256M-cold" "$work/mnt-r/upd.img" "$pid"; unmount_v "$work/mnt-r" "$pid"
    mount_v "$work/mnt-r" "$rados_store" "$rlock" "${rstate[@]}" --disk-cache "$work/dcache-small" --disk-cache-size 256M
    read_cold "rados-dc256M-warm" "$work/mnt-r/upd.img" "$pid"; unmount_v "$work/mnt-r" "$pid"
fi

# ---------------------------------------------------------------------------------- report
echo "### Ingest (cold page cache; RADOS: one memstore OSD on loopback, same machine)"
echo
echo "| images | import | store | s | MB/s | stored MB | × local | RADOS ÷ local time |"
echo "|---|---|---|---|---|---|---|---|"
for label in upd-raw upd all-raw all; do
    read -r tl lg sl _ <<< "${IN[$label,local]}"
    read -r tr _ sr st <<< "${IN[$label,rados]}"
    what=$(case $label in upd*) echo "upd.img";; *) echo "base + base2 + upd";; esac)
    how=$(case $label in *raw) echo "--raw";; *) echo "fs-aware";; esac)
    printf '| %s | %s | local | %.1f | %d | %.1f | 1.00 | |\n' "$what" "$how" "$tl" "$(echo "$lg / $tl / 1000000" | bc)" "$(echo "scale=1; $sl / 1000000" | bc)"
    printf '| %s | %s | RADOS (+ local state) | %.1f | %d | %.1f (+ %.1f) | %.2f | %.2f |\n' "$what" "$how" "$tr" "$(echo "$lg / $tr / 1000000" | bc)" \
        "$(echo "scale=1; $sr / 1000000" | bc)" "$(echo "scale=1; $st / 1000000" | bc)" "$(echo "scale=3; ($sr + $st) / $sl" | bc)" "$(echo "scale=3; $tr / $tl" | bc)"
done
echo
echo "### Cold streaming read of upd.img through the mount (dd bs=1M, readahead $readahead, $repeat reads each, interleaved)"
echo
python3 - "$work/reads" "${dcache_bytes:-0}" <<'PY'
import statistics, sys
rows = []
for line in open(sys.argv[1]):
    f = line.split()
    if not f: continue
    j = 1
    while not f[j].isdigit(): j += 1          # sweep names have spaces ("rados ra=4M")
    rows.append((" ".join(f[:j]), f[j:]))
order, by = [], {}
for name, v in rows:
    if name not in by: order.append(name); by[name] = []
    by[name].append(v)
med = statistics.median
mbs = {n: [float(v[0]) for v in by[n]] for n in order}
def per_round(n):  # this configuration's read time ÷ the local store's, read by read (same round)
    if n == "local" or "local" not in mbs or len(mbs[n]) != len(mbs["local"]): return None
    return med([l / m for l, m in zip(mbs["local"], mbs[n])])
print("| configuration | MB/s median (min–max) | time ÷ local (median of rounds) | daemon CPU s | OSD CPU s | reader CPU s | RADOS reads per MiB read | avg RADOS read KiB | daemon peak RSS MiB | other processes' CPU, core-s |")
print("|---|---|---|---|---|---|---|---|---|---|")
for n in order:
    v = by[n]; r = per_round(n)
    ops = med([int(x[6]) for x in v]); byts = med([int(x[7]) for x in v])
    print(f"| {n} | {med(mbs[n]):.0f} ({min(mbs[n]):.0f}–{max(mbs[n]):.0f}) | {f'{r:.2f}×' if r else '-'} | "
          f"{med([float(x[2]) for x in v]):.2f} | {med([float(x[3]) for x in v]):.2f} | {med([float(x[4]) for x in v]):.2f} | "
          f"{ops / 2048:.1f} | {(byts / ops / 1024) if ops else 0:.0f} | {max(int(x[8]) for x in v)} | {med([float(x[5]) for x in v]):.2f} |")
print()
print(f"Disk cache after the cold read: {int(sys.argv[2]) / 1e6:.0f} MB. "
      "Daemon = the vdiskfs mount daemon (restic: the restic process); CPU columns are core-seconds per read.")
print()
print("Targets (issue 6):")
print()
if "rados" in mbs:
    c = med(mbs["rados"])
    line = f"- cold read from RADOS ≥ 3× restic's mount: {c:.0f} MB/s against 837 MB/s (3 × 279, DESIGN-NOTES)"
    if "restic" in mbs: line += f" and against {3 * med(mbs['restic']):.0f} MB/s (3 × this run's restic, {med(mbs['restic']):.0f} MB/s)"
    print(line)
r = per_round("rados-dc-warm") if "rados-dc-warm" in mbs else None
if r: print(f"- warm disk cache within 1.2× of a local store: {r:.2f}× (read time, median of rounds)")
print()
print("Every read, in order: name MB/s seconds daemon-cpu osd-cpu reader-cpu others-cpu osd-reads osd-bytes peak-rss-MiB idle%-before")
print()
for n, v in rows: print("    " + n + " " + " ".join(v))
PY
echo
if [[ -s $work/aborts ]]; then
    echo "vdiskfs commands that died by a signal at exit, after their work was done and checked: $(sort "$work/aborts" | uniq -c | awk '{c = $1; $1 = ""; printf "%s%s ×%d", sep, substr($0, 2), c; sep = ", "}')"
else
    echo "No vdiskfs command died at exit in this run."
fi
