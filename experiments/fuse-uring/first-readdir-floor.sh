#!/bin/bash
# The floor under layerfs's "readdir 10k entries, first after mount" row: the time of the
# first listing (Python's os.listdir: opendir, getdents64 until the end) of a directory
# of N empty files right after the mount, on
#   - the kernel's overlay over one ext4 layer holding the names,
#   - this probe's server over the ring, doing no work (names in memory, plain READDIR),
# and, with LAYERFS=path/to/layerfs (or several, space-separated), layerfs itself over
# the same layer (LAYERFS_OPTS: mount options added).
# Needs root, a kernel with FUSE over io_uring (fuse module parameter enable_uring) and
# `cargo build --release` here first. Prints ms per first listing, median of ROUNDS runs.
set -euo pipefail
ROUNDS=${ROUNDS:-11}
N=${N:-10000}
here=$(cd "$(dirname "$0")" && pwd)
probe=$here/target/release/fuse-uring-probe
work=$(mktemp -d /var/tmp/first-readdir-floor.XXXXXX)
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
first_list() { # DIR -> ms for the first listing
    python3 - "$1" "$N" <<'EOF_PY'
import os, sys, time
d, n = sys.argv[1], int(sys.argv[2])
t = time.perf_counter()
k = len(os.listdir(d))
el = time.perf_counter() - t
if k != n:
    sys.exit(f"listed {k} names, expected {n}")
print(f"{el * 1e3:.3f}")
EOF_PY
}
serve() { # extra args -> ms
    echo Y > $param
    PROBE_CACHE_DIR=1 "$probe" serve --mnt "$work/mnt-fuse" --transport uring --threads 2 --populate "$N" "$@" \
        > "$work/serve.log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do mountpoint -q "$work/mnt-fuse" && break; sleep 0.05; done
    echo "$old" > $param
    first_list "$work/mnt-fuse/d"
    umount "$work/mnt-fuse"
    wait $pid || true
}
overlay() {
    rm -rf "$work/up" "$work/wk"; mkdir -p "$work/up" "$work/wk"
    mount -t overlay overlay -o "lowerdir=$work/layer,upperdir=$work/up,workdir=$work/wk" "$work/mnt-ovl"
    first_list "$work/mnt-ovl/d"
    umount "$work/mnt-ovl"
}
layerfs() { # BINARY -> ms
    rm -rf "$work/up" "$work/wk"; mkdir -p "$work/up" "$work/wk"
    "$1" -o "lowerdir=$work/layer,upperdir=$work/up,workdir=$work/wk${LAYERFS_OPTS:+,$LAYERFS_OPTS}" "$work/mnt-lfs"
    first_list "$work/mnt-lfs/d"
    umount "$work/mnt-lfs"
}
configs="kernel zero ${LAYERFS:-}"
declare -A r
for round in $(seq "$ROUNDS"); do
    r[kernel]+="$(overlay) "
    r[zero]+="$(serve) "
    for b in ${LAYERFS:-}; do r[$b]+="$(layerfs "$b") "; done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
k=$(echo "${r[kernel]}" | median)
for c in $configs; do
    m=$(echo "${r[$c]}" | median)
    printf "%-8s %7s ms  (%.2fx the kernel)   rounds: %s\n" "$c" "$m" "$(echo "$m / $k" | bc -l)" "${r[$c]}"
done
