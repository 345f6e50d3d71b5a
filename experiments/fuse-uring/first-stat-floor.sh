#!/bin/bash
# The floor under layerfs's "first stat, 1 layer" row: the cost of one first lookup
# (an lstat of a name the kernel has not seen) on
#   - the kernel's overlay over one ext4 layer holding the names,
#   - this probe's server over the ring, doing no work (names in memory),
#   - the same server, doing one fstatat of the name in that ext4 layer per LOOKUP,
#     the least a server whose files live in real layers has to do.
# and, with LAYERFS=path/to/layerfs (or several, space-separated), layerfs itself over
# the same layer.
# Needs root, a kernel with FUSE over io_uring (fuse module parameter enable_uring) and
# `cargo build --release` here first. Prints µs per first stat, median of ROUNDS runs.
ROUNDS=${ROUNDS:-5}
N=${N:-10000}
source "$(dirname "$0")/floor-lib.sh"
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
measure=first_stat
declare -A r
for round in $(seq "$ROUNDS"); do
    r[kernel]+="$(overlay) "
    r[zero]+="$(serve) "
    r[fstatat]+="$(serve --stat-dir "$work/layer/d") "
    for b in ${LAYERFS:-}; do r[$b]+="$(layerfs "$b") "; done
done
report µs kernel zero fstatat ${LAYERFS:-}
