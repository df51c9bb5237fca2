#!/bin/sh
# Builds what the QEMU boot tests need into DIR (default /var/cache/vdiskfs-guest):
#   vmlinuz    Debian's cloud kernel (NVMe and ext4 built in: no initramfs needed)
#   root.img   a 64 MiB ext4 root disk holding busybox and an /init that runs the test
#              script /test.sh if present, then powers off.
# Installs qemu-system-x86 if missing. Reuses what is already built.
set -eu
dir=${1:-/var/cache/vdiskfs-guest}
mkdir -p "$dir"
cd "$dir"
need=""
command -v qemu-system-x86_64 >/dev/null || need="$need qemu-system-x86"
[ -n "$need" ] && { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null; }
if [ ! -f vmlinuz ]; then
    tmp=$(mktemp -d)
    pkg=$(apt-cache search --names-only '^linux-image-6\.1\.[0-9.-]*-cloud-amd64$' | cut -d' ' -f1 | sort -V | tail -1)
    [ -n "$pkg" ] || { apt-get update -qq; pkg=$(apt-cache search --names-only '^linux-image-6\.1\.[0-9.-]*-cloud-amd64$' | cut -d' ' -f1 | sort -V | tail -1); }
    (cd "$tmp" && apt-get download "$pkg" >/dev/null && dpkg -x ./*.deb x)
    cp "$tmp"/x/boot/vmlinuz-* vmlinuz.part && mv vmlinuz.part vmlinuz
    rm -rf "$tmp"
fi
if [ ! -f root.img ]; then
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download busybox-static >/dev/null && dpkg -x ./*.deb x)
    mkdir -p "$tmp/root/bin" "$tmp/root/proc" "$tmp/root/sys" "$tmp/root/dev" "$tmp/root/data"
    cp "$tmp/x/bin/busybox" "$tmp/root/bin/busybox"
    for t in sh mount umount sync poweroff cat echo ls sha256sum dd mkdir seq; do ln -s busybox "$tmp/root/bin/$t"; done
    cat > "$tmp/root/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "GUEST: booted"
[ -x /test.sh ] && /test.sh
sync
echo "GUEST: done"
poweroff -f
INIT
    chmod +x "$tmp/root/init"
    mkfs.ext4 -q -F -d "$tmp/root" root.img.part 64M && mv root.img.part root.img
    rm -rf "$tmp"
fi
ls -l "$dir"
