#!/bin/sh
# The quick start's first command: build vdiskfs, create a store, import a real ext4 disk
# image, and mount the store so the image is an ordinary read/write file.
#   STORE (default /var/lib/vdiskfs/demo)   MOUNTPOINT (default /mnt/vdiskfs)
set -eu
cd "$(dirname "$0")/.."
export PATH="/opt/swift/usr/bin:$PATH"
sh scripts/install-deps.sh
swift build -c release --product vdiskfs
bin=$(swift build -c release --show-bin-path)/vdiskfs
store=${STORE:-/var/lib/vdiskfs/demo}
mnt=${MOUNTPOINT:-/mnt/vdiskfs}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A real ext4 image holding real files (this machine's documentation).
mkfs.ext4 -q -F -d /usr/share/doc "$work/disk.img" 512M
[ -f "$store/vdiskfs.json" ] || "$bin" init -s "$store"
"$bin" ls -s "$store" | grep -q '^vms/demo.img ' || "$bin" import -s "$store" "$work/disk.img" vms/demo.img
"$bin" ls -s "$store"
mkdir -p "$mnt"
if mountpoint -q "$mnt"; then fusermount3 -u "$mnt"; fi
"$bin" mount -s "$store" "$mnt"
echo "mounted $store at $mnt:"
ls -l "$mnt/vms"
echo "unmount with: fusermount3 -u $mnt"
