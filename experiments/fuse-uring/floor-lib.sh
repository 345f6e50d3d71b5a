# Shared by the floor scripts (first-stat-floor.sh, first-readdir-floor.sh): a layer of N
# empty files in d/, and one measurement (the function named by $measure, given the
# directory d as the mount shows it) on the kernel's overlay over that layer, on this
# probe's server over the ring (names in memory), and on layerfs. Sourced after the
# caller set ROUNDS and N; cleans up on exit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
probe=$here/target/release/fuse-uring-probe
work=$(mktemp -d "/var/tmp/$(basename "$0" .sh).XXXXXX")
param=/sys/module/fuse/parameters/enable_uring
old=$(cat $param)
cleanup() {
    echo "$old" > $param
    for m in "$work"/mnt*; do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/layer/d" "$work/up" "$work/wk" "$work/mnt-ovl" "$work/mnt-fuse" "$work/mnt-lfs"
python3 - "$work/layer/d" "$N" <<'EOF_PY'
import os, sys
for i in range(int(sys.argv[2])):
    open(os.path.join(sys.argv[1], f"f{i}"), "w").close()
EOF_PY
serve() { # extra server args -> the measurement on the probe's server (env: PROBE_*)
    echo Y > $param
    "$probe" serve --mnt "$work/mnt-fuse" --transport uring --threads 2 --populate "$N" "$@" \
        > "$work/serve.log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do mountpoint -q "$work/mnt-fuse" && break; sleep 0.05; done
    echo "$old" > $param
    "$measure" "$work/mnt-fuse/d"
    umount "$work/mnt-fuse"
    wait $pid || true
}
overlay() {
    rm -rf "$work/up" "$work/wk"; mkdir -p "$work/up" "$work/wk"
    mount -t overlay overlay -o "lowerdir=$work/layer,upperdir=$work/up,workdir=$work/wk" "$work/mnt-ovl"
    "$measure" "$work/mnt-ovl/d"
    umount "$work/mnt-ovl"
}
layerfs() { # BINARY (LAYERFS_OPTS: mount options added)
    rm -rf "$work/up" "$work/wk"; mkdir -p "$work/up" "$work/wk"
    "$1" -o "lowerdir=$work/layer,upperdir=$work/up,workdir=$work/wk${LAYERFS_OPTS:+,$LAYERFS_OPTS}" "$work/mnt-lfs"
    "$measure" "$work/mnt-lfs/d"
    umount "$work/mnt-lfs"
}
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# report UNIT CONFIG...: each config's median of the rounds in r[CONFIG], and its ratio to
# the kernel's.
report() {
    local unit=$1; shift
    local k; k=$(echo "${r[kernel]}" | median)
    for c in "$@"; do
        local m; m=$(echo "${r[$c]}" | median)
        printf "%-8s %7s %s  (%.2fx the kernel)   rounds: %s\n" "$c" "$m" "$unit" \
            "$(echo "$m / $k" | bc -l)" "${r[$c]}"
    done
}
