#!/bin/bash
# Ingest benchmark (issue 2): the three images into one store, vdiskfs vs borg (-C lz4) vs
# restic vs casync, each from a cold page cache, in the same run. Prints a Markdown table.
# Usage: bench/ingest.sh [IMAGES_DIR] [WORK_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
images=${1:-/var/cache/vdiskfs-images}
work=${2:-/var/tmp/vdiskfs-bench}
vdiskfs=${VDISKFS:-$here/../.build/release/vdiskfs}
[[ -x $vdiskfs ]] || { echo "build first: swift build -c release (or set VDISKFS)" >&2; exit 1; }
for t in borg restic casync; do command -v $t >/dev/null || { apt-get install -y -qq borgbackup restic casync >/dev/null; break; }; done
files=("$images/base.img" "$images/base2.img" "$images/upd.img")
rm -rf "$work" && mkdir -p "$work"
export RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
timed() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc; }
size() { du -sb "$1" | cut -f1; }
logical=$(( $(stat -c %s "${files[@]}" | paste -sd+) ))

# vdiskfs: file-system-aware import (the default), and plain block import (--raw).
"$vdiskfs" init -s "$work/vdiskfs" >/dev/null
cold; t_v=$(timed sh -c "for f in ${files[*]}; do \"$vdiskfs\" import -q -s \"$work/vdiskfs\" \"\$f\" \"\$(basename \$f)\"; done")
s_v=$(size "$work/vdiskfs")
"$vdiskfs" init -s "$work/vdiskfs-raw" >/dev/null
cold; t_vr=$(timed sh -c "for f in ${files[*]}; do \"$vdiskfs\" import -q --raw -s \"$work/vdiskfs-raw\" \"\$f\" \"\$(basename \$f)\"; done")
s_vr=$(size "$work/vdiskfs-raw")
borg init -e none "$work/borg" >/dev/null 2>&1
cold; t_b=$(timed borg create -C lz4 "$work/borg::a" "${files[@]}"); s_b=$(size "$work/borg")
restic init -q -r "$work/restic" >/dev/null
cold; t_r=$(timed restic -q -r "$work/restic" backup "${files[@]}"); s_r=$(size "$work/restic")
mkdir -p "$work/casync.castr"
cold; t_c=$(timed sh -c "for f in ${files[*]}; do casync make --store=$work/casync.castr $work/\$(basename \$f).caibx \$f; done"); s_c=$(( $(size "$work/casync.castr") + $(du -cb "$work"/*.caibx | tail -1 | cut -f1) ))

mb() { echo "scale=1; $1 / 1000000" | bc; }
rate() { echo "scale=0; $logical / $1 / 1000000" | bc; }
echo "| tool | ingest s | MB/s | store MB | × restic size |"
echo "|---|---|---|---|---|"
for row in "vdiskfs $t_v $s_v" "vdiskfs-raw $t_vr $s_vr" "borg-lz4 $t_b $s_b" "restic $t_r $s_r" "casync $t_c $s_c"; do
    set -- $row
    printf '| %s | %.1f | %s | %s | %.2f |\n' "$1" "$2" "$(rate $2)" "$(mb $3)" "$(echo "scale=3; $3 / $s_r" | bc)"
done
# Export speed of upd.img, cold (plain store: the export must equal the input), against
# cat and lz4 decompression of the same bytes.
cold; t_e=$(timed "$vdiskfs" export -q -s "$work/vdiskfs-raw" upd.img "$work/upd.out")
cmp "$images/upd.img" "$work/upd.out"
"$vdiskfs" export -q -s "$work/vdiskfs" upd.img "$work/upd.fsaware" && e2fsck -fn "$work/upd.fsaware" >/dev/null
lz4 -q -1 -f "$images/upd.img" "$work/upd.lz4"
cold; t_lz=$(timed sh -c "lz4 -d -c $work/upd.lz4 > /dev/null")
# The same bytes decompressed to a (sparse) file and fsynced, as export writes them.
cold; t_lzf=$(timed sh -c "lz4 -q -d -f $work/upd.lz4 $work/upd.lz4out && sync $work/upd.lz4out")
cold; t_cat=$(timed sh -c "cat $images/upd.img > /dev/null")
echo
echo "export upd.img: $(printf %.2f $t_e) s ($(echo "scale=0; $(stat -c %s $images/upd.img) / $t_e / 1000000" | bc) MB/s), byte-identical (plain store; the fs-aware export passes e2fsck -fn); cold cat of the file: $(printf %.2f $t_cat) s; lz4 -d of it: $(printf %.2f $t_lz) s to /dev/null, $(printf %.2f $t_lzf) s to a file with fsync"
rm -rf "$work"
