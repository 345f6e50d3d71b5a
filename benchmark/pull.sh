#!/usr/bin/env bash
# Pull benchmark (benchmark/run pull): the sample image of benchmark/lib.sh (~220 MB of
# gzip layers: the Debian minbase rootfs and this machine's /usr/bin) is put in a
# loopback registry (Debian's docker-registry on 127.0.0.1, pushed there by skopeo);
# then, in the same run,
#   - `skopeo copy docker://… dir:…` plus `tar xzf` of every layer blob (the baseline), and
#   - `layerfs pull` into a fresh store
# are timed, and a re-pull (every layer "Already exists").
#
#   benchmark/run pull                   3 rounds, work files under /var/tmp/layerfs-bench-pull
#   ROUNDS=5 BENCH_DIR=/x benchmark/run pull
#
# Needs root; installs what it lacks (scripts/deps). Not a test: it prints figures.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bench_setup "${BENCH_DIR:-/var/tmp/layerfs-bench-pull}"

# A loopback registry with its own storage, stopped on exit.
reg="$work/registry"
rm -rf "$reg"
regpid=
trap 'kill $regpid 2>/dev/null; rm -rf "$work/store" "$work/skopeo" "$work/tarout" "$reg"' EXIT
start_registry "$reg"
ref="127.0.0.1:$port/bench/pull:1"
skopeo --insecure-policy copy -q --dest-tls-verify=false "oci:$img" "docker://$ref"
echo "benchmark/run pull: the sample image is at $ref"

base_times=(); copy_times=(); pull_times=(); repull_times=()
for r in $(seq 1 "$rounds"); do
    # Baseline: skopeo copy to a local dir, then tar xzf of every layer blob.
    rm -rf "$work/skopeo" "$work/tarout"; mkdir -p "$work/tarout"; sync
    t0=$(now)
    skopeo --insecure-policy copy -q --src-tls-verify=false "docker://$ref" "dir:$work/skopeo"
    t1=$(now)
    untar_blobs "$work/skopeo"
    t2=$(now)
    copy_times+=("$(secs "$t0" "$t1")"); base_times+=("$(secs "$t0" "$t2")")
    rm -rf "$work/skopeo" "$work/tarout"

    # layerfs pull into a fresh store (download, both digests, extraction, syncfs).
    rm -rf "$work/store"; sync
    t0=$(now)
    REGISTRY_AUTH_FILE="$work/none.json" "$bin" --root "$work/store" pull -q "$ref" >/dev/null
    t1=$(now)
    pull_times+=("$(secs "$t0" "$t1")")

    # Re-pull: only the manifest and config move.
    t0=$(now)
    out=$(REGISTRY_AUTH_FILE="$work/none.json" "$bin" --root "$work/store" pull "$ref")
    t1=$(now)
    repull_times+=("$(secs "$t0" "$t1")")
    if [ "$(grep -c "Already exists" <<<"$out" || true)" != "$(echo $blobs | wc -w)" ]; then
        echo "benchmark/run pull: the re-pull did not find every layer" >&2
        echo "$out" >&2
        exit 1
    fi
    echo "round $r: skopeo copy ${copy_times[-1]} s + tar xzf = ${base_times[-1]} s, layerfs pull ${pull_times[-1]} s, re-pull ${repull_times[-1]} s"
done

mb=$(median "${base_times[@]}"); mc=$(median "${copy_times[@]}"); mp=$(median "${pull_times[@]}"); mr=$(median "${repull_times[@]}")
ratio=$(ratio "$mp" "$mb")
echo
echo "median of $rounds: skopeo copy $mc s, skopeo copy + tar xzf $mb s, layerfs pull $mp s, re-pull $mr s"
echo "pull / (skopeo copy + tar xzf) = ${ratio}x   (target: at most 1.2x; load average now: $(cut -d' ' -f1-3 /proc/loadavg))"

# The table as README.md shows it.
echo
echo "| | wall |"
echo "| --- | --- |"
echo "| \`skopeo copy docker://… dir:…\` | $mc s |"
echo "| \`skopeo copy\` + \`tar xzf\` of the two layer blobs | $mb s |"
echo "| \`layerfs pull\` (download, blob digest and diff-id verified, blobs kept, tree recorded, \`syncfs\`) | $mp s |"
echo "| re-pull (every layer \"Already exists\": manifest and config only) | $mr s |"
