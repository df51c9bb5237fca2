#!/bin/sh
# Runs fuzz targets, each for a time, on one core; a crash does not end the run (libFuzzer is
# restarted until the time is used up), every crash input is kept.
#
#   sh fuzz/run.sh [-t SECONDS] [-k] [TARGET...]
#
#   -t SECONDS  per target (default 60)
#   -k          skip inputs that hit bugs already reported (VDISKFS_FUZZ_SKIP_KNOWN=1)
#   TARGET      default: all of them
#
# Corpora: fuzz/corpus/TARGET (made by make-corpus.sh when missing; grows as the run finds
# inputs). Crashes: fuzz/artifacts/TARGET/crash-*; log: fuzz/artifacts/TARGET.log. The
# summary gives executions and crashes per target. Exits 1 when a run crashed.
# Environment: BIN (directory of the built targets), FUZZ_ARGS (more libFuzzer flags).
set -u
here=$(cd "$(dirname "$0")" && pwd)
bin=${BIN:-$here/../.build-fuzz/release}
seconds=60
skip=
while getopts t:k opt; do
    case $opt in
        t) seconds=$OPTARG ;;
        k) skip=1 ;;
        *) sed -n '2,15p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
targets=${*:-"fuzz-disk fuzz-records fuzz-pack fuzz-journal fuzz-index fuzz-store fuzz-diskcache"}

max_len() {
    case $1 in
        fuzz-disk) echo 3145728 ;;  # the partitioned seed disks are 160-256 KiB, the one with a journal 3 MiB
        fuzz-store) echo 131072 ;;
        *) echo 65536 ;;
    esac
}

status=0
summary=
for t in $targets; do
    [ -x "$bin/$t" ] || { echo "missing $bin/$t: build first (see fuzz/README.md)" >&2; exit 2; }
    [ -d "$here/corpus/$t" ] || TARGETS=$t sh "$here/make-corpus.sh" "$bin" >/dev/null
    mkdir -p "$here/artifacts/$t"
    log=$here/artifacts/$t.log
    : >"$log"
    end=$(( $(date +%s) + seconds ))
    execs=0
    crashes=0
    while :; do
        left=$(( end - $(date +%s) ))
        [ "$left" -gt 0 ] || break
        start=$(wc -l <"$log")
        env SWIFT_BACKTRACE=enable=no SWIFT_DETERMINISTIC_HASHING=1 ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=0 \
            ${skip:+VDISKFS_FUZZ_SKIP_KNOWN=1} \
            "$bin/$t" -max_total_time="$left" -max_len="$(max_len "$t")" -timeout=20 -rss_limit_mb=3072 \
            -print_final_stats=1 -artifact_prefix="$here/artifacts/$t/" ${FUZZ_ARGS:-} "$here/corpus/$t" >>"$log" 2>&1
        rc=$?
        n=$(tail -n +$((start + 1)) "$log" | grep 'stat::number_of_executed_units' | tail -1 | awk '{print $2}')
        # Runs that crash end without final stats: count their executions from the last status line.
        if [ $rc -ne 0 ]; then
            crashes=$((crashes + 1)); status=1
            n=$(tail -n +$((start + 1)) "$log" | grep -E '^#[0-9]+' | tail -1 | sed -E 's/^#([0-9]+).*/\1/')
        fi
        execs=$((execs + ${n:-0}))
        echo "--- run ended (rc $rc) ---" >>"$log"
    done
    line="$t: ${seconds}s, $execs executions, $crashes crashes"
    echo "$line"
    summary="$summary$line
"
done
printf '\n%s' "$summary"
[ $status -eq 0 ] || echo "crash inputs: $here/artifacts/*/crash-* (group them with: sh fuzz/triage.sh TARGET FILES)"
exit $status
