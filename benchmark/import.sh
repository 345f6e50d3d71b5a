#!/usr/bin/env bash
# Import benchmark (benchmark/run import): the sample image of benchmark/lib.sh (~220 MB
# of gzip layers: the Debian minbase rootfs and this machine's /usr/bin), imported with
# `layerfs import` and compared with `tar xzf` of the same layer blobs in the same run.
# Then a re-import, which must write no layer data.
#
#   benchmark/run import                 3 rounds, work files under /var/tmp/layerfs-bench-import
#   ROUNDS=5 BENCH_DIR=/x benchmark/run import
#
# Needs root (owners, device nodes); installs what it lacks (scripts/deps). Not a test:
# it prints figures.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bench_setup "${BENCH_DIR:-/var/tmp/layerfs-bench-import}"

tar_times=(); tarsync_times=(); imp_times=(); reimp_times=(); tar_cpu=(); imp_cpu=()
TIMEFORMAT='%U+%S'
cpu() { python3 -c "import sys; print(f'{eval(sys.argv[1]):.2f}')" "$1"; }
for r in $(seq 1 "$rounds"); do
    # tar xzf of the same blobs (GNU tar runs gzip in a second process).
    rm -rf "$work/tarout"; mkdir -p "$work/tarout"; sync
    t0=$(now)
    { time (untar_blobs "$img/blobs/sha256") ; } 2>"$work/cpu"
    t1=$(now)
    tar_cpu+=("$(cat "$work/cpu")")
    sync
    t2=$(now)
    tar_times+=("$(secs "$t0" "$t1")"); tarsync_times+=("$(secs "$t0" "$t2")")
    rm -rf "$work/tarout"

    # layerfs import into a fresh store on the same filesystem.
    rm -rf "$work/store"; sync
    t0=$(now)
    { time "$bin" --root "$work/store" import "$img" >/dev/null ; } 2>"$work/cpu"
    t1=$(now)
    imp_cpu+=("$(cat "$work/cpu")")
    imp_times+=("$(secs "$t0" "$t1")")

    # Re-import: no layer data written.
    before=$(du -s --apparent-size "$work/store/layers" | cut -f1)
    touch "$work/marker"; sleep 0.01
    t0=$(now)
    out=$("$bin" --root "$work/store" import "$img")
    t1=$(now)
    reimp_times+=("$(secs "$t0" "$t1")")
    after=$(du -s --apparent-size "$work/store/layers" | cut -f1)
    newer=$(find "$work/store/layers" -newer "$work/marker" | wc -l)
    exists=$(grep -c "already exists" <<<"$out" || true)
    if [ "$before" != "$after" ] || [ "$newer" != 0 ] || [ "$exists" != "$(echo $blobs | wc -w)" ]; then
        echo "benchmark/run import: re-import wrote layer data or did not skip every layer" >&2
        echo "$out" >&2
        exit 1
    fi
    tar_cpu[-1]=$(cpu "${tar_cpu[-1]}"); imp_cpu[-1]=$(cpu "${imp_cpu[-1]}")
    echo "round $r: tar xzf ${tar_times[-1]} s (cpu ${tar_cpu[-1]} s, with sync ${tarsync_times[-1]} s), import ${imp_times[-1]} s (cpu ${imp_cpu[-1]} s), re-import ${reimp_times[-1]} s"
done
rm -rf "$work/store"

mt=$(median "${tar_times[@]}"); ms=$(median "${tarsync_times[@]}"); mi=$(median "${imp_times[@]}"); mr=$(median "${reimp_times[@]}")
ratio=$(ratio "$mi" "$mt")
ratio_sync=$(ratio "$mi" "$ms")
echo
echo "median of $rounds: tar xzf $mt s, tar xzf + sync $ms s, layerfs import $mi s (includes verification, blob copy and syncfs), re-import $mr s"
mtc=$(median "${tar_cpu[@]}"); mic=$(median "${imp_cpu[@]}")
echo "cpu time (user+sys): tar xzf $mtc s, layerfs import $mic s"
echo "import / tar xzf = ${ratio}x   import / (tar xzf + sync) = ${ratio_sync}x   (load average now: $(cut -d' ' -f1-3 /proc/loadavg))"

# The table as README.md shows it.
echo
echo "| | wall | CPU (user+sys) |"
echo "| --- | --- | --- |"
echo "| \`tar xzf\` of the two layer blobs | $mt s | $mtc s |"
echo "| \`layerfs import\` (both digests verified, blobs copied into the store, tree recorded, \`syncfs\`) | $mi s | $mic s |"
echo "| re-import (every layer \"already exists\"; no layer data written) | $mr s | |"
