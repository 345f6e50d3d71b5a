#!/bin/bash
# Where the kernel runs a /dev/fuse round trip, and what a daemon can change about it.
#
#   experiments/fuse-placement/repro.sh [ROUNDS]
#
# As root, after `cargo build --release` and one `benchmark/run mount --rootless` (which
# leaves user-owned copies of the rootfs layers under /var/tmp/layerfs-bench). Mounts the
# rootfs layers as uid 65534 through fusermount3 (no passthrough, no ring: a rootless
# mount), and times two callers under four placements of the daemon's request threads:
#
#   tar c     one `tar c | wc -c` of the whole mount: OPEN, READ, GETATTR per file, with
#             the kernel's read-ahead and RELEASE queued beside them
#   stat      4,000 first lookups, one `lstat` after another (a pure ping-pong)
#
#   float     layerfs as it is: two request threads (one per CPU), the scheduler decides
#   held      the same, each request thread held on a CPU of its own (taskset)
#   threads=3 three floating request threads
#   daemon-on-0  the whole daemon held on CPU 0, the caller free
#   one-cpu   the whole daemon and the caller held on CPU 0
#
# fuse-overlayfs 2.x (the same transport library, fuser, with as many threads) runs `tar c`
# floating and on one CPU beside them.
# Interleaved rounds; medians and ranges.
set -euo pipefail
rounds=${1:-5}
repo=$(cd "$(dirname "$0")/../.." && pwd)
bin=$repo/target/release/layerfs
layers=/var/tmp/layerfs-bench/layers-user-65534/rootfs
fo2=/var/tmp/layerfs-bench/bin/fo2/fuse-overlayfs
[ "$(id -u)" = 0 ] || { echo "repro.sh: run as root" >&2; exit 1; }
[ -x "$bin" ] || { echo "repro.sh: build first: cargo build --release" >&2; exit 1; }
[ -d "$layers/1" ] || { echo "repro.sh: no $layers: run benchmark/run mount --rootless once" >&2; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "repro.sh: needs at least 2 CPUs" >&2; exit 1; }

work=$(mktemp -d /var/tmp/fuse-placement.XXXXXX)
chmod 755 "$work"
cp "$bin" "$work/layerfs"
out=$work/times
mnt=$work/m
dev_mode=$(stat -c %a /dev/fuse)
cleanup() {
    mountpoint -q "$mnt" && { fusermount3 -u "$mnt" 2>/dev/null || umount -l "$mnt"; }
    chmod "$dev_mode" /dev/fuse
    rm -rf "$work"
}
trap cleanup EXIT
chmod 666 /dev/fuse
as_user() { setpriv --reuid=65534 --regid=65534 --clear-groups -- "$@"; }
lowers=$(ls -r "$layers" | grep -E '^[0-9]+$' | sed "s#^#$layers/#" | paste -sd:)
# A dir with many files in one of the layers, for the lookups.
names=$work/names
(cd "$layers" && for l in [0-9]*; do if [ -d "$l/usr/share" ]; then (cd "$l" && find usr/share -type f); fi; done) |
    sort -u | head -4000 >"$names"
chmod 644 "$names"

mount_as() { # KIND PLACEMENT
    rm -rf "$mnt" "$mnt.u" "$mnt.w"
    mkdir -p "$mnt" "$mnt.u" "$mnt.w"
    chown 65534:65534 "$mnt" "$mnt.u" "$mnt.w"
    local o="lowerdir=$lowers,upperdir=$mnt.u,workdir=$mnt.w"
    if [ "$1" = fo2 ]; then
        as_user "$fo2" -o "$o" "$mnt"
    elif [ "$2" = threads=3 ]; then
        as_user "$work/layerfs" overlay -o "$o,threads=3" "$mnt"
    else
        as_user "$work/layerfs" overlay -o "$o" "$mnt"
    fi
    sleep 0.3
    local pid i=0 t
    pid=$(pgrep -n -f "$mnt\$")
    for t in /proc/"$pid"/task/*; do
        case "$2" in
        held) case "$(cat "$t/comm")" in fuser-[0-9]*)
            taskset -p -c $((i % $(nproc))) "$(basename "$t")" >/dev/null
            i=$((i + 1)) ;; esac ;;
        one-cpu | daemon-on-0) taskset -p -c 0 "$(basename "$t")" >/dev/null ;;
        esac
    done
}
caller_cpus() { [ "$1" = one-cpu ] && echo 0 || echo "0-$(($(nproc) - 1))"; }

run_tar() { # KIND PLACEMENT
    mount_as "$1" "$2"
    local t0 t1
    t0=$(date +%s.%N)
    taskset -c "$(caller_cpus "$2")" setpriv --reuid=65534 --regid=65534 --clear-groups -- \
        sh -c "tar -C '$mnt' -cf - . | wc -c" >/dev/null
    t1=$(date +%s.%N)
    echo "tar-c $1:$2 $(echo "$t1 - $t0" | bc)" >>"$out"
    fusermount3 -u "$mnt"
}
run_stat() { # PLACEMENT
    mount_as layerfs "$1"
    taskset -c "$(caller_cpus "$1")" setpriv --reuid=65534 --regid=65534 --clear-groups -- \
        /usr/bin/python3 -c "
import os, time
names = open('$names').read().split()
t0 = time.perf_counter()
for n in names:
    os.lstat('$mnt/' + n)
print('stat layerfs:$1 %.2f' % ((time.perf_counter() - t0) / len(names) * 1e6))" >>"$out"
    fusermount3 -u "$mnt"
}

for r in $(seq "$rounds"); do
    for p in ${PLACEMENTS:-float held threads=3 daemon-on-0 one-cpu}; do
        run_tar layerfs "$p"
        run_stat "$p"
    done
    if [ -x "$fo2" ]; then
        run_tar fo2 float
        run_tar fo2 one-cpu
    fi
    echo "round $r of $rounds done" >&2
done
python3 - "$out" <<'EOF'
import collections, statistics, sys
d = collections.defaultdict(list)
for line in open(sys.argv[1]):
    w, who, v = line.split()
    d[(w, who)].append(float(v))
print(f"{'caller':7} {'daemon:placement':22} {'median':>8}  range")
for (w, who), v in sorted(d.items()):
    unit = "s" if w == "tar-c" else "µs/lookup"
    print(f"{w:7} {who:22} {statistics.median(v):8.3f}  {min(v):.3f}–{max(v):.3f} {unit}")
EOF
