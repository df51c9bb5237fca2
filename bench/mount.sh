#!/bin/bash
# Mount benchmark (issue 3): one run, side by side, on upd.img:
#   raw file on disk, the FUSE ceiling (libfuse's passthrough_hp over tmpfs holding the
#   image), vdiskfs, qcow2 through qemu-storage-daemon's FUSE export, borg and restic mounts.
# Measures cold streaming read, 4 KiB random reads (psync qd1; libaio qd16 O_DIRECT),
# 4 KiB random writes (buffered with a final fsync; O_DIRECT qd16) where writable, a QEMU
# guest boot from the mount against a plain file, and the vdiskfs daemon's RSS.
# passthrough_hp is not part of this project: build it from libfuse fuse-3.14.0's
# example/passthrough_hp.cc against the installed libfuse and pass it as PASSTHROUGH_HP.
# Usage: bench/mount.sh [IMAGES_DIR]     (prints a Markdown table)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
images=${1:-/var/cache/vdiskfs-images}
image=$images/upd.img
work=${WORK:-/var/tmp/vdiskfs-bench-mount}
vdiskfs=${VDISKFS:-$here/../.build/release/vdiskfs}
pthp=${PASSTHROUGH_HP:-/opt/vdiskfs-tools/passthrough_hp}
runtime=${RUNTIME:-15}
export RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
for t in fio qemu-storage-daemon borg restic; do command -v $t >/dev/null || apt-get install -y -qq fio qemu-system-x86 qemu-utils borgbackup restic >/dev/null; done

cleanup() {
    for m in "$work"/mnt-*; do mountpoint -q "$m" 2>/dev/null && { fusermount3 -u "$m" 2>/dev/null || umount -l "$m"; }; done
    [[ -n ${qsd_pid:-} ]] && kill "$qsd_pid" 2>/dev/null || true
    mountpoint -q "$work/tmpfs" 2>/dev/null && umount "$work/tmpfs"
    rm -rf "$work"
}
trap cleanup EXIT
cleanup; mkdir -p "$work"
# Cold: written pages synced, caches dropped, free memory compacted (left fragmented by an
# earlier phase, the kernel falls back to small folios, and a FUSE read stream slows).
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; echo 1 > /proc/sys/vm/compact_memory; }
seqread() { # MB/s of a cold dd of the whole file ("-" when the read fails)
    cold
    local out; out=$(dd if="$1" of=/dev/null bs=1M 2>&1) || { echo "dd failed on $1: $out" >&2; echo "-"; return; }
    echo "$out" | awk '/copied/ {print int($(NF-1) * ($NF == "GB/s" ? 1000 : ($NF == "kB/s" ? 0.001 : 1)))}'
}
wait_for() { for _ in $(seq 300); do [[ -e $1 ]] && return 0; sleep 0.1; done; echo "timed out waiting for $1" >&2; return 1; }
fio_iops() { # file rw extra...
    local f=$1 rw=$2; shift 2
    cold
    if fio --name=b --filename="$f" --rw="$rw" --bs=4k --runtime="$runtime" --time_based --size=2G "$@" \
        --output-format=json > "$work/fio.json" 2>>"$work/fio.log"; then
        python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]; print(int(j["read"]["iops"] + j["write"]["iops"]))' "$work/fio.json"
    else
        echo "fio failed on $f ($rw $*): $(tail -1 "$work/fio.log")" >&2
        echo "-"
    fi
}
declare -A R

# 1. Raw file on disk.
cp --sparse=always "$image" "$work/raw.img"
R[raw,seq]=$(seqread "$work/raw.img")
R[raw,qd1]=$(fio_iops "$work/raw.img" randread --ioengine=psync)
R[raw,qd16]=$(fio_iops "$work/raw.img" randread --ioengine=libaio --iodepth=16 --direct=1)

# 2. FUSE ceiling: passthrough_hp over tmpfs.
if [[ -x $pthp ]]; then
    mkdir -p "$work/tmpfs" "$work/mnt-pt" && mount -t tmpfs -o size=5G tmpfs "$work/tmpfs"
    cp "$image" "$work/tmpfs/upd.img"
    "$pthp" "$work/tmpfs" "$work/mnt-pt" >/dev/null 2>&1 &
    for _ in $(seq 100); do mountpoint -q "$work/mnt-pt" && break; sleep 0.1; done
    R[pt,seq]=$(seqread "$work/mnt-pt/upd.img")
    R[pt,qd1]=$(fio_iops "$work/mnt-pt/upd.img" randread --ioengine=psync)
    R[pt,qd16]=$(fio_iops "$work/mnt-pt/upd.img" randread --ioengine=libaio --iodepth=16 --direct=1)
    cp "$work/tmpfs/upd.img" "$work/tmpfs/w.img"
    R[pt,wbuf]=$(fio_iops "$work/mnt-pt/w.img" randwrite --ioengine=psync --end_fsync=1)
    R[pt,wd16]=$(fio_iops "$work/mnt-pt/w.img" randwrite --ioengine=libaio --iodepth=16 --direct=1)
    fusermount3 -u "$work/mnt-pt"; umount "$work/tmpfs"
fi

# 3. vdiskfs (raw ingest, so every block of the image is served; grouped records, the default).
"$vdiskfs" init -s "$work/store" >/dev/null
"$vdiskfs" import -q --raw -s "$work/store" "$image" upd.img
mkdir -p "$work/mnt-v"
"$vdiskfs" mount -s "$work/store" "$work/mnt-v"
R[v,seq]=$(seqread "$work/mnt-v/upd.img")
R[v,qd1]=$(fio_iops "$work/mnt-v/upd.img" randread --ioengine=psync)
R[v,qd16]=$(fio_iops "$work/mnt-v/upd.img" randread --ioengine=libaio --iodepth=16 --direct=1)
cp "$work/mnt-v/upd.img" "$work/mnt-v/w.img"    # copy_file_range: shares every chunk
R[v,wbuf]=$(fio_iops "$work/mnt-v/w.img" randwrite --ioengine=psync --end_fsync=1)
R[v,wd16]=$(fio_iops "$work/mnt-v/w.img" randwrite --ioengine=libaio --iodepth=16 --direct=1)
# The daemon's pid: the store's lock file names its holder ("pid N (vdiskfs mount on MOUNTPOINT) since ...").
pid=$(sed -n 's/^pid \([0-9][0-9]*\) (vdiskfs mount[ )].*/\1/p' "$work/store/lock")
[[ -n $pid && -r /proc/$pid/status ]] || { echo "no mount daemon named in $work/store/lock" >&2; exit 1; }
rss=$(( $(awk '/VmHWM/ {print $2}' /proc/$pid/status) / 1024 ))
rss_file=$(( $(awk '/RssFile/ {print $2}' /proc/$pid/status) / 1024 ))
# QEMU boot: the test guest from a plain file and from the mount.
guest=${GUEST:-/var/cache/vdiskfs-guest}
[[ -f $guest/vmlinuz ]] || sh "$here/../scripts/make-guest.sh" "$guest" >/dev/null
boot() { local s e; s=$(date +%s.%N); qemu-system-x86_64 -accel tcg -m 256 -nographic -no-reboot -kernel "$guest/vmlinuz" \
    -append 'console=ttyS0 root=/dev/nvme0n1 rw init=/init panic=-1 quiet' \
    -drive file="$1",if=none,id=d0,format=raw,cache=none -device nvme,drive=d0,serial=t0 >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc; }
cp "$guest/root.img" "$work/guest.img"; cp "$guest/root.img" "$work/mnt-v/guest.img"
b_plain=$(for i in 1 2 3; do boot "$work/guest.img"; done | sort -n | head -1)
b_v=$(for i in 1 2 3; do boot "$work/mnt-v/guest.img"; done | sort -n | head -1)
fusermount3 -u "$work/mnt-v"

# 3b. vdiskfs with one chunk per record (--group-size 0): what grouping costs random reads.
"$vdiskfs" init -s "$work/store0" >/dev/null
"$vdiskfs" import -q --raw --group-size 0 -s "$work/store0" "$image" upd.img
mkdir -p "$work/mnt-v0"
"$vdiskfs" mount -s "$work/store0" "$work/mnt-v0"
R[v0,seq]=$(seqread "$work/mnt-v0/upd.img")
R[v0,qd1]=$(fio_iops "$work/mnt-v0/upd.img" randread --ioengine=psync)
R[v0,qd16]=$(fio_iops "$work/mnt-v0/upd.img" randread --ioengine=libaio --iodepth=16 --direct=1)
fusermount3 -u "$work/mnt-v0"

# 4. qcow2 through qemu-storage-daemon's FUSE export.
qemu-img convert -O qcow2 "$image" "$work/upd.qcow2"
mkdir -p "$work/mnt-q" && touch "$work/mnt-q/upd.img"
qemu-storage-daemon --blockdev driver=file,node-name=f,filename="$work/upd.qcow2" --blockdev driver=qcow2,node-name=q,file=f \
    --export type=fuse,id=e,node-name=q,mountpoint="$work/mnt-q/upd.img",writable=off >/dev/null 2>&1 &
qsd_pid=$!
for _ in $(seq 100); do mountpoint -q "$work/mnt-q/upd.img" && break; sleep 0.1; done
R[q,seq]=$(seqread "$work/mnt-q/upd.img")
R[q,qd1]=$(fio_iops "$work/mnt-q/upd.img" randread --ioengine=psync)
R[q,qd16]=$(fio_iops "$work/mnt-q/upd.img" randread --ioengine=libaio --iodepth=16 --direct=1 || echo 0)
kill $qsd_pid; wait $qsd_pid 2>/dev/null || true; qsd_pid=

# 5. borg and restic mounts.
borg init -e none "$work/borg" >/dev/null 2>&1 && borg create -C lz4 "$work/borg::a" "$image" >/dev/null 2>&1
mkdir -p "$work/mnt-b" && borg mount "$work/borg::a" "$work/mnt-b" && wait_for "$work/mnt-b$image"
R[b,seq]=$(seqread "$work/mnt-b$image")
R[b,qd1]=$(RUNTIME=5 fio_iops "$work/mnt-b$image" randread --ioengine=psync)
fusermount3 -u "$work/mnt-b"
restic init -q -r "$work/restic" && restic -q -r "$work/restic" backup "$image" >/dev/null
mkdir -p "$work/mnt-r" && (restic -r "$work/restic" mount "$work/mnt-r" >/dev/null 2>&1 &)
wait_for "$work/mnt-r/snapshots/latest$image"
R[r,seq]=$(seqread "$work/mnt-r/snapshots/latest$image")
R[r,qd1]=$(RUNTIME=5 fio_iops "$work/mnt-r/snapshots/latest$image" randread --ioengine=psync)
fusermount3 -u "$work/mnt-r"

ratio() { [[ $1 =~ ^[0-9.]+$ && ${2:-} =~ ^[0-9.]+$ && $2 != 0 ]] && printf '%.2f' "$(echo "scale=4; $1 / $2" | bc)" || echo "-"; }
echo "| target | cold seq read MB/s | randread qd1 IOPS | randread qd16 direct IOPS | randwrite buffered IOPS | randwrite qd16 direct IOPS |"
echo "|---|---|---|---|---|---|"
for t in raw pt v v0 q b r; do
    name=$(case $t in raw) echo "raw file (disk)";; pt) echo "passthrough_hp over tmpfs (ceiling)";; v) echo "**vdiskfs**";; v0) echo "vdiskfs, \`--group-size 0\`";; q) echo "qcow2 via qemu-storage-daemon";; b) echo "borg mount";; r) echo "restic mount";; esac)
    echo "| $name | ${R[$t,seq]:--} | ${R[$t,qd1]:--} | ${R[$t,qd16]:--} | ${R[$t,wbuf]:--} | ${R[$t,wd16]:--} |"
done
echo
echo "vdiskfs / ceiling: seq $(ratio ${R[v,seq]} ${R[pt,seq]:-}), qd1 $(ratio ${R[v,qd1]} ${R[pt,qd1]:-}), qd16 $(ratio ${R[v,qd16]} ${R[pt,qd16]:-}), write buffered $(ratio ${R[v,wbuf]} ${R[pt,wbuf]:-}), write qd16 $(ratio ${R[v,wd16]} ${R[pt,wd16]:-})"
echo "vdiskfs --group-size 0 / ceiling: seq $(ratio ${R[v0,seq]} ${R[pt,seq]:-}), qd1 $(ratio ${R[v0,qd1]} ${R[pt,qd1]:-}), qd16 $(ratio ${R[v0,qd16]} ${R[pt,qd16]:-})"
echo "QEMU boot of the test guest (best of 3): plain file $(printf %.2f $b_plain) s, vdiskfs $(printf %.2f $b_v) s ($(ratio $b_v $b_plain)×)"
echo "vdiskfs daemon peak RSS: $rss MiB (cache 256 MiB; $rss_file MiB of it file-backed at the end: libraries)"
