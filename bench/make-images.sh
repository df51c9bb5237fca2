#!/bin/bash
# Builds the three real Debian 12 ext4 disk images the benchmarks use:
#   base.img   a debootstrap of bookworm, 2 GiB ext4
#   base2.img  a second, independent debootstrap, 2 GiB ext4
#   upd.img    base.img with ~500 MB of packages installed in place (a VM after updates)
# Usage: bench/make-images.sh [DIR]   (default /var/cache/vdiskfs-images; images already
# there are kept). Needs root, loop devices and apt's Debian mirror; about 4 minutes.
set -euo pipefail
out=${1:-/var/cache/vdiskfs-images}
mkdir -p "$out" && cd "$out"
if [[ -f base.img && -f base2.img && -f upd.img ]]; then echo "images present in $out"; exit 0; fi
command -v debootstrap >/dev/null || { apt-get update -qq; apt-get install -y -qq debootstrap e2fsprogs; }
# Use the Debian mirror apt is configured with (deb822 or one-line sources).
mirror=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | tr ' ' '\n' | grep -m1 '/debian/\?$' || true)
[[ -n $mirror ]] || mirror=$(awk '$1 == "deb" {print $2}' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | grep -m1 '/debian/\?$')
work=$(mktemp -d "$out/.build.XXXX")
cleanup() {
    for d in dev/pts dev sys proc ""; do umount "$work/mnt/$d" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
for root in a b; do
    debootstrap --arch=amd64 bookworm "$work/$root" "$mirror" >"$work/$root.log" 2>&1 || { tail "$work/$root.log"; exit 1; }
    chroot "$work/$root" apt-get clean
done
mkfs.ext4 -q -F -d "$work/a" base.img.part 2G && mv base.img.part base.img
mkfs.ext4 -q -F -d "$work/b" base2.img.part 2G && mv base2.img.part base2.img
# upd.img: the first image, updated in place the way a running VM would be.
cp --sparse=never base.img upd.img.part
mkdir -p "$work/mnt"
mount -o loop upd.img.part "$work/mnt"
for d in proc sys dev dev/pts; do mount --bind "/$d" "$work/mnt/$d"; done
cp /etc/resolv.conf "$work/mnt/etc/resolv.conf"
printf '#!/bin/sh\nexit 101\n' >"$work/mnt/usr/sbin/policy-rc.d" && chmod +x "$work/mnt/usr/sbin/policy-rc.d"
chroot "$work/mnt" /bin/sh -c 'DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q build-essential python3 git openssh-server vim curl && apt-get clean' >"$work/upd.log" 2>&1 || { tail "$work/upd.log"; exit 1; }
rm -f "$work/mnt/usr/sbin/policy-rc.d"
for d in dev/pts dev sys proc; do umount "$work/mnt/$d"; done
umount "$work/mnt"
mv upd.img.part upd.img
sync
ls -ls "$out"/*.img
