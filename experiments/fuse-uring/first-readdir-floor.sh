#!/bin/bash
# The floor under layerfs's "readdir 10k entries, first after mount" row: the time of the
# first listing (Python's os.listdir: opendir, getdents64 until the end) of a directory
# of N empty files right after the mount, on
#   - the kernel's overlay over one ext4 layer holding the names,
#   - this probe's server over the ring, doing no work (names in memory, plain READDIR,
#     the kernel's listing cache on, as layerfs has it: PROBE_CACHE_DIR),
# and, with LAYERFS=path/to/layerfs (or several, space-separated), layerfs itself over
# the same layer (LAYERFS_OPTS: mount options added).
# Needs root, a kernel with FUSE over io_uring (fuse module parameter enable_uring) and
# `cargo build --release` here first. Prints ms per first listing, median of ROUNDS runs.
ROUNDS=${ROUNDS:-11}
N=${N:-10000}
source "$(dirname "$0")/floor-lib.sh"
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
measure=first_list
export PROBE_CACHE_DIR=1
declare -A r
for round in $(seq "$ROUNDS"); do
    r[kernel]+="$(overlay) "
    r[zero]+="$(serve) "
    for b in ${LAYERFS:-}; do r[$b]+="$(layerfs "$b") "; done
done
report ms kernel zero ${LAYERFS:-}
