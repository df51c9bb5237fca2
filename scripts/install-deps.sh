#!/bin/sh
# Installs what vdiskfs needs to build, run and test on Debian 12 (as root).
# ceph-mon/ceph-osd run the throw-away test cluster (scripts/ceph-test-cluster.sh);
# qemu-system-x86 and stress-ng are used by the mount tests (QEMU guest, ToolTests).
# Idempotent: packages already present are left alone.
set -eu
pkgs="fuse3 libfuse3-dev libssl-dev liblz4-dev pkg-config e2fsprogs fio xfsprogs qemu-utils qemu-system-x86 stress-ng util-linux fdisk gdisk ceph-mon ceph-osd librados-dev"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
command -v swift >/dev/null 2>&1 || [ -x /opt/swift/usr/bin/swift ] || { echo "install-deps: Swift 6 is needed (expected at /opt/swift)" >&2; exit 1; }
