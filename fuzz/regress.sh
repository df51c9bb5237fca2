#!/bin/sh
# Runs every fuzz target on its regression inputs (fuzz/regressions/<target>/) and says
# which still crash. Once a bug is fixed, its input must pass; exits 1 while any crashes.
#
#   sh fuzz/regress.sh [TARGET...]
set -u
here=$(cd "$(dirname "$0")" && pwd)
bin=${BIN:-$here/../.build-fuzz/release}
targets=${*:-$(ls "$here/regressions" | grep '^fuzz-')}
status=0
for t in $targets; do
    for f in "$here/regressions/$t"/*; do
        [ -f "$f" ] || continue
        if SWIFT_BACKTRACE=enable=no SWIFT_DETERMINISTIC_HASHING=1 ASAN_OPTIONS=detect_leaks=0 timeout 120 "$bin/$t" "$f" >/dev/null 2>&1; then
            echo "pass   $t/$(basename "$f")"
        else
            echo "CRASH  $t/$(basename "$f")"
            status=1
        fi
    done
done
exit $status
