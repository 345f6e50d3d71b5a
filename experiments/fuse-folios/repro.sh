#!/usr/bin/env bash
# Why a warm sequential read through a FUSE mount without passthrough is slower than the
# kernel's overlayfs: the FUSE page cache holds single-page (4 KiB) folios, the lower
# ext4 file large ones. Shows the folio orders each page cache gets (the kernel's
# filemap:mm_filemap_add_to_page_cache tracepoint), then times warm reads of the same
# 1 GiB file: through layerfs (passthrough=off, the rootless data path), from ext4 (what
# the kernel's overlayfs reads), and from tmpfs with huge=never (4 KiB folios, no FUSE)
# and huge=always, in interleaved rounds. As root, from a checkout with a release build.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${LAYERFS_BIN:-target/release/layerfs}
rounds=${ROUNDS:-5}
[ "$(id -u)" = 0 ] || { echo "repro.sh: run as root" >&2; exit 1; }
[ -x "$bin" ] || { echo "repro.sh: build first (cargo build --release)" >&2; exit 1; }
T=/sys/kernel/tracing
mountpoint -q $T || mount -t tracefs nodev $T
w=$(mktemp -d /var/tmp/fuse-folios.XXXXXX)
cleanup() {
    echo 0 > $T/events/filemap/mm_filemap_add_to_page_cache/enable || true
    umount "$w/m" "$w/t0" "$w/t1" 2>/dev/null || true
    rm -rf "$w"
}
trap cleanup EXIT
mkdir -p "$w"/{l,m,t0,t1}
dd if=/dev/urandom of="$w/l/f" bs=1M count=1024 status=none
sync
mount -t tmpfs -o size=1100m,huge=never tmpfs "$w/t0"
mount -t tmpfs -o size=1100m,huge=always tmpfs "$w/t1"
cp "$w/l/f" "$w/t0/f"
cp "$w/l/f" "$w/t1/f"
"$bin" -o "lowerdir=$w/l,passthrough=off" "$w/m"

orders() { # the folio orders a read of $1 adds to the page cache
    echo 3 > /proc/sys/vm/drop_caches
    echo > $T/trace
    echo 1 > $T/events/filemap/mm_filemap_add_to_page_cache/enable
    cat "$1" > /dev/null
    echo 0 > $T/events/filemap/mm_filemap_add_to_page_cache/enable
    local dev; dev=$(stat -c '%Hd:%Ld' "$1")
    grep -o "dev $dev .*order=[0-9]*" $T/trace | awk '{print $NF}' | sort | uniq -c |
        sort -k2 -t= -n | awk '{printf "%s %s, ", $2, $1}'
}
echo "folios added by a cold read (order=N: 2^N pages, count):"
echo "  layerfs mount: $(orders "$w/m/f")"
echo "  ext4 lower:    $(orders "$w/l/f")"

python3 - "$rounds" "$w/m/f" "$w/l/f" "$w/t0/f" "$w/t1/f" <<'PY_END'
import os, sys, time, statistics
rounds = int(sys.argv[1]); names = ["layerfs (FUSE, 4 KiB folios)", "ext4 (large folios)",
    "tmpfs huge=never (4 KiB folios)", "tmpfs huge=always"]
paths = sys.argv[2:]
def read(p):
    fd = os.open(p, os.O_RDONLY); n = 0; t = time.perf_counter()
    while True:
        b = os.read(fd, 1 << 20)
        if not b: break
        n += len(b)
    os.close(fd); return n / (time.perf_counter() - t) / 2**20
for p in paths: read(p); read(p)          # warm every page cache
res = {p: [] for p in paths}
for _ in range(rounds):
    for p in paths: res[p].append(read(p))
base = statistics.median(res[paths[1]])
print(f"warm sequential read of 1 GiB, 1 MiB reads, median of {rounds} interleaved rounds:")
for n, p in zip(names, paths):
    m = statistics.median(res[p])
    print(f"  {n:34s} {m:7.0f} MiB/s  {m / base:4.2f}x ext4")
# The first read after a cold one (the benchmark's "warm" row): each folio read a second
# time moves to the active LRU list, one folio at a time: 262,144 moves for 4 KiB folios.
first = {p: [] for p in paths[:2]}
for _ in range(rounds):
    for p in paths[:2]:
        with open("/proc/sys/vm/drop_caches", "w") as f: f.write("3")
        read(p); first[p].append(read(p))
base = statistics.median(first[paths[1]])
print(f"the first read after a cold read (caches dropped before it), median of {rounds}:")
for n, p in zip(names, paths[:2]):
    m = statistics.median(first[p])
    print(f"  {n:34s} {m:7.0f} MiB/s  {m / base:4.2f}x ext4")
PY_END
