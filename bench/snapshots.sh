#!/bin/bash
# Snapshot, clone and gc benchmark (issue 4). Prints a Markdown list.
#   clone of a 2 GiB image (upd.img): time and store growth;
#   on a mount with 100 images and 1 GiB dirty: time of `mkdir .snapshots/NAME`;
#   gc after removing everything but one image: time and GB of packs processed per second.
# Usage: bench/snapshots.sh [IMAGES_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
images=${1:-/var/cache/vdiskfs-images}
work=${WORK:-/var/tmp/vdiskfs-bench-snap}
vdiskfs=${VDISKFS:-$here/../.build/release/vdiskfs}
cleanup() { mountpoint -q "$work/mnt" 2>/dev/null && "$vdiskfs" unmount "$work/mnt" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
cleanup; mkdir -p "$work/mnt"
now() { date +%s.%N; }
ms() { echo "($2 - $1) * 1000 / 1" | bc; }
"$vdiskfs" init -s "$work/s" >/dev/null
"$vdiskfs" import -q -s "$work/s" "$images/upd.img" upd.img
before=$(du -sb "$work/s" | cut -f1)
t0=$(now); "$vdiskfs" clone -s "$work/s" upd.img clone.img; t1=$(now)
after=$(du -sb "$work/s" | cut -f1)
echo "- clone of upd.img (2 GiB): $(ms $t0 $t1) ms including process start, store growth $((after - before)) bytes"

"$vdiskfs" mount -s "$work/s" "$work/mnt"
for i in $(seq 1 100); do truncate -s 64M "$work/mnt/vm$i.img"; done
# 1 GiB dirty: 10.24 MiB of fresh data in each of the 100 images.
for i in $(seq 1 100); do head -c 10737418 /dev/urandom | dd of="$work/mnt/vm$i.img" bs=1M conv=notrunc status=none; done
t0=$(now); mkdir "$work/mnt/.snapshots/bench"; t1=$(now)
echo "- snapshot with 100 images mounted and 1 GiB dirty: $(ms $t0 $t1) ms (the flush of the dirty data included)"
t0=$(now); mkdir "$work/mnt/.snapshots/bench2"; t1=$(now)
echo "- a second snapshot right after (nothing dirty): $(ms $t0 $t1) ms"
"$vdiskfs" unmount "$work/mnt"

for i in $(seq 1 100); do "$vdiskfs" rm -s "$work/s" "vm$i.img"; done
"$vdiskfs" rm -s "$work/s" clone.img
"$vdiskfs" snapshot -s "$work/s" --delete bench >/dev/null
"$vdiskfs" snapshot -s "$work/s" --delete bench2 >/dev/null
packs=$(du -sb "$work/s/packs" | cut -f1)
t0=$(now); "$vdiskfs" gc -q -s "$work/s" >/dev/null; t1=$(now)
left=$(du -sb "$work/s/packs" | cut -f1)
echo "- gc over $((packs / 1000000)) MB of packs (freed $(((packs - left) / 1000000)) MB): $(ms $t0 $t1) ms, $(echo "scale=2; $packs / (($t1 - $t0) * 1000000000)" | bc) GB of packs per second"
"$vdiskfs" verify -q -s "$work/s" >/dev/null && echo "- verify after gc: clean"
