#!/bin/sh
# Generates the seed corpora of the fuzz targets into fuzz/corpus/<target>/ (not committed).
#
#   sh fuzz/make-corpus.sh [BUILD_DIR]
#
# BUILD_DIR holds the built fuzz targets (default: ../.build-fuzz/release relative to this
# directory). Each target writes seeds made by the store's own encoders when run with
# VDISKFS_FUZZ_SEEDS=DIR; fuzz-disk also gets small real disk images: ext4/ext2 made by
# mkfs, whole-disk and inside MBR (sfdisk) and GPT (sgdisk) partition tables. Every seed
# is < 64 KiB except the partitioned disks (160 KiB, mostly zeros) and the ext4 image with a
# journal (3 MiB, mostly zeros).
# The regression inputs (fuzz/regressions/<target>/) are added to each corpus too.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../.build-fuzz/release}
out=$here/corpus
targets=${TARGETS:-"fuzz-disk fuzz-records fuzz-pack fuzz-journal fuzz-index fuzz-store fuzz-diskcache"}

for t in $targets; do
    if [ ! -x "$bin/$t" ]; then echo "missing $bin/$t: build the fuzz package first (see fuzz/README.md)" >&2; exit 1; fi
    mkdir -p "$out/$t"
    SWIFT_BACKTRACE=enable=no ASAN_OPTIONS=detect_leaks=0 VDISKFS_FUZZ_SEEDS="$out/$t" "$bin/$t" >/dev/null
    if [ -d "$here/regressions/$t" ]; then
        for f in "$here/regressions/$t"/*; do [ -f "$f" ] && cp "$f" "$out/$t/regression-$(basename "$f")"; done
    fi
done

# Real disk images for fuzz-disk.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
have() { command -v "$1" >/dev/null 2>&1; }
if have mkfs.ext4; then
    # 64 blocks of 1 KiB; metadata_csum and 64bit are mke2fs's defaults on Debian 12.
    truncate -s 64K "$work/ext4-1k.img"
    mkfs.ext4 -q -F -b 1024 -N 16 "$work/ext4-1k.img" 2>/dev/null
    truncate -s 64K "$work/ext4-nocsum.img"
    mkfs.ext4 -q -F -b 1024 -N 16 -O ^metadata_csum,^64bit "$work/ext4-nocsum.img" 2>/dev/null
    truncate -s 64K "$work/ext2.img"
    mkfs.ext2 -q -F -b 1024 -N 16 "$work/ext2.img" 2>/dev/null
    # 4 KiB blocks: the smallest image mke2fs makes is 64 blocks (256 KiB); kept whole.
    truncate -s 256K "$work/ext4-4k.img"
    mkfs.ext4 -q -F -b 4096 -N 16 "$work/ext4-4k.img" 2>/dev/null
    # A journal (Ext4Journal: import stores a clean journal's log area as zeros): the
    # smallest mke2fs makes is 1024 blocks, in a file system of 3 MiB (run.sh's -max_len
    # for fuzz-disk lets it in whole).
    truncate -s 3M "$work/ext4-journal.img"
    mkfs.ext4 -q -F -b 1024 -N 16 -J size=1 "$work/ext4-journal.img" 2>/dev/null
    for f in ext4-1k ext4-nocsum ext2 ext4-journal; do cp "$work/$f.img" "$out/fuzz-disk/$f"; done
    cp "$work/ext4-4k.img" "$out/fuzz-disk/ext4-4k"
    if have sfdisk; then
        # MBR: one primary at sector 8 (4 KiB) holding the 1 KiB-block ext4.
        truncate -s 160K "$work/mbr.img"
        printf 'label: dos\nstart=8, size=128, type=83\n' | sfdisk -q "$work/mbr.img" >/dev/null
        dd if="$work/ext4-1k.img" of="$work/mbr.img" bs=512 seek=8 conv=notrunc status=none
        cp "$work/mbr.img" "$out/fuzz-disk/mbr-ext4"
        # MBR: an extended partition with a logical one holding ext2.
        truncate -s 160K "$work/mbr-ext.img"
        printf 'label: dos\nstart=8, size=16, type=83\nstart=24, size=272, type=5\nstart=32, size=128, type=83\n' |
            sfdisk -q "$work/mbr-ext.img" >/dev/null
        dd if="$work/ext2.img" of="$work/mbr-ext.img" bs=512 seek=32 conv=notrunc status=none
        cp "$work/mbr-ext.img" "$out/fuzz-disk/mbr-logical-ext2"
    fi
    if have sgdisk; then
        # GPT: one partition at sector 40 (20 KiB) holding the 1 KiB-block ext4.
        truncate -s 160K "$work/gpt.img"
        sgdisk -a 8 -n 1:40:+64K "$work/gpt.img" >/dev/null
        dd if="$work/ext4-1k.img" of="$work/gpt.img" bs=512 seek=40 conv=notrunc status=none
        cp "$work/gpt.img" "$out/fuzz-disk/gpt-ext4"
    fi
else
    echo "mkfs.ext4 not found: fuzz-disk gets synthetic partition tables only" >&2
fi

for t in $targets; do echo "$t: $(ls "$out/$t" | wc -l) seeds"; done
