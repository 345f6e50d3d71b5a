#!/bin/bash
# The floor under layerfs's "first stat, 1 layer" row: the cost of one first lookup
# (an lstat of a name the kernel has not seen) on
#   - the kernel's overlay over one ext4 layer holding the names,
#   - this probe's server over the ring, doing no work (names in memory),
#   - the same server, doing one fstatat of the name in that ext4 layer per LOOKUP,
#     the least a server whose files live in real layers has to do.
# and, with LAYERFS=path/to/layerfs, layerfs itself over the same layer.
# Needs root, a kernel with FUSE over io_uring (fuse module parameter enable_uring) and
# `cargo build --release` here first. Prints µs per first stat, median of ROUNDS runs.
set -euo pipefail
ROUNDS=${ROUNDS:-5}
N=${N:-10000}
here=$(cd "$(dirname "$0")" && pwd)
probe=$here/target/release/fuse-uring-probe
work=$(mktemp -d /var/tmp/first-stat-floor.XXXXXX)
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
first_stat() { # DIR -> µs per first lstat of f0..f{N-1}
    python3 - "$1" "$N" <<'EOF_PY'
import os, sys, time
d, n = sys.argv[1], int(sys.argv[2])
names = [f"f{i}" for i in range(n)]
dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
t = time.perf_counter()
for nm in names:
    os.stat(nm, dir_fd=dfd, follow_symlinks=False)
print(f"{(time.perf_counter() - t) / n * 1e6:.2f}")
EOF_PY
}
serve() { # extra args -> µs
    echo Y > $param
    "$probe" serve --mnt "$work/mnt-fuse" --transport uring --threads 2 --populate "$N" "$@" \
        > "$work/serve.log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do stat "$work/mnt-fuse/d" > /dev/null 2>&1 && break; sleep 0.05; done
    echo "$old" > $param
    grep -q "transport=uring" <(sleep 0.1; cat "$work/serve.log") || true
    first_stat "$work/mnt-fuse/d"
    umount "$work/mnt-fuse"
    wait $pid || true
}
overlay() {
    rm -rf "$work/up" "$work/wk"; mkdir -p "$work/up" "$work/wk"
    mount -t overlay overlay -o "lowerdir=$work/layer,upperdir=$work/up,workdir=$work/wk" "$work/mnt-ovl"
    first_stat "$work/mnt-ovl/d"
    umount "$work/mnt-ovl"
}
layerfs() {
    rm -rf "$work/up" "$work/wk"; mkdir -p "$work/up" "$work/wk"
    "$LAYERFS" -o "lowerdir=$work/layer,upperdir=$work/up,workdir=$work/wk" "$work/mnt-lfs"
    first_stat "$work/mnt-lfs/d"
    umount "$work/mnt-lfs"
}
configs="kernel zero fstatat${LAYERFS:+ layerfs}"
declare -A r
for round in $(seq "$ROUNDS"); do
    r[kernel]+="$(overlay) "
    r[zero]+="$(serve) "
    r[fstatat]+="$(serve --stat-dir "$work/layer/d") "
    if [ -n "${LAYERFS:-}" ]; then r[layerfs]+="$(layerfs) "; fi
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
k=$(echo "${r[kernel]}" | median)
for c in $configs; do
    m=$(echo "${r[$c]}" | median)
    printf "%-8s %6s µs  (%.2fx the kernel)   rounds: %s\n" "$c" "$m" "$(echo "$m / $k" | bc -l)" "${r[$c]}"
done
