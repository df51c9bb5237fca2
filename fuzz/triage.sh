#!/bin/sh
# Groups crash inputs by where they crash: the first stack frame in vdiskfs's own sources
# (Sources/… for the product, fuzz/Sources/… for a target's own check).
#
#   sh fuzz/triage.sh TARGET FILE...      e.g. sh fuzz/triage.sh fuzz-disk fuzz/artifacts/fuzz-disk/crash-*
#
# Prints one line per input: "<file:line of the first VDiskStore frame> <input>", sorted, so
# that distinct bugs stand out; "(no crash)" when the input runs clean, "(timeout)" when it
# runs longer than TIMEOUT seconds (default 120). BIN overrides the directory of the built targets.
set -u
here=$(cd "$(dirname "$0")" && pwd)
bin=${BIN:-$here/../.build-fuzz/release}
t=$1; shift
for f in "$@"; do
    # One run per input (symbolizing the stack is slow on a loaded machine).
    out=$(SWIFT_BACKTRACE=enable=no SWIFT_DETERMINISTIC_HASHING=1 ASAN_OPTIONS=detect_leaks=0 timeout "${TIMEOUT:-120}" "$bin/$t" "$f" 2>&1)
    rc=$?
    sig=$(printf '%s\n' "$out" | grep -E '^ *#[0-9]+ .* /[^ ]*/Sources/[^ ]+\.swift:[0-9]+' | head -1 | sed -E 's/.* (\/[^ ]*\/Sources\/[^ ]*).*/\1/; s/:[0-9]+$//')
    [ -n "$sig" ] || sig=$(printf '%s\n' "$out" | grep -E 'ERROR|SUMMARY' | head -1 | sed -E 's/^==[0-9]+== ?//' | cut -c1-80)
    [ -n "$sig" ] || { if [ $rc -eq 124 ]; then sig="(timeout)"; elif [ $rc -ne 0 ]; then sig="(exit $rc, no stack)"; else sig="(no crash)"; fi; }
    case $sig in */fuzz/Sources/*) sig="fuzz/Sources/${sig#*/fuzz/Sources/}" ;; */Sources/*) sig="Sources/${sig#*/Sources/}" ;; esac
    echo "$sig $f"
done | sort
