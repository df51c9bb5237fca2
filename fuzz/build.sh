#!/bin/sh
# Builds the fuzz targets into ../.build-fuzz (see README.md).
#
#   sh fuzz/build.sh [TARGET...]        (default: all of them)
#
# One product at a time: a plain `swift build` of this package also links the root
# package's vdiskfs executable, whose main clashes with libFuzzer's. SWIFT overrides the
# swift binary. Exits 1 when a target does not build (a binary left by an earlier build
# does not count).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
swift=${SWIFT:-$(command -v swift 2>/dev/null || echo /opt/swift/usr/bin/swift)}
targets=${*:-"fuzz-disk fuzz-records fuzz-pack fuzz-journal fuzz-index fuzz-store fuzz-diskcache"}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cd "$here"
for t in $targets; do
    # -sanitize=address,fuzzer: SwiftPM hands swiftc -sanitize=address -sanitize=fuzzer and
    # the Swift driver keeps only the last; without it Swift code gets no ASan checks.
    if "$swift" build -c release --sanitize=fuzzer --sanitize=address --disable-dead-strip \
        -Xswiftc -enable-testing -Xswiftc -sanitize=address,fuzzer \
        --scratch-path ../.build-fuzz --product "$t" >"$log" 2>&1; then
        grep -E 'Build of product' "$log" || true
    else
        grep -E 'error:' "$log" >&2 || tail -20 "$log" >&2
        echo "$t did not build" >&2
        exit 1
    fi
done
