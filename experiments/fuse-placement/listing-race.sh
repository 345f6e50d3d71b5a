#!/bin/bash
# The kernel's listing cache and readers that meet: how many listings one directory costs.
#
#   experiments/fuse-placement/listing-race.sh [READERS]
#
# As root, after `cargo build --release`. A fresh layerfs mount of one lower directory of
# 2,000 names; READERS (default 16) `ls -f` of it one after another, then, on a fresh
# mount, all at once. `scripts/fuse-requests` counts the listing requests each way. The
# kernel fills a directory's listing cache from one reader and serves it to nobody until
# that reader has reached the end, so readers that start before then list it themselves.
set -euo pipefail
readers=${1:-16}
repo=$(cd "$(dirname "$0")/../.." && pwd)
bin=$repo/target/release/layerfs
[ "$(id -u)" = 0 ] || { echo "listing-race.sh: run as root" >&2; exit 1; }
[ -x "$bin" ] || { echo "listing-race.sh: build first: cargo build --release" >&2; exit 1; }
work=$(mktemp -d /var/tmp/listing-race.XXXXXX)
cleanup() {
    mountpoint -q "$work/m" && umount "$work/m"
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/l/d" "$work/m"
for i in $(seq -w 2000); do : >"$work/l/d/name-$i"; done

count() { # MODE: one-by-one | at-once
    "$bin" overlay -o "lowerdir=$work/l" "$work/m"
    local script
    if [ "$1" = one-by-one ]; then
        script="for i in \$(seq $readers); do ls -f '$work/m/d' >/dev/null; done"
    else
        script="for i in \$(seq $readers); do ls -f '$work/m/d' >/dev/null & done; wait"
    fi
    "$repo/scripts/fuse-requests" --mount "$work/m" -- sh -c "$script" |
        awk -v m="$1" '/^FUSE_READDIR/ {n += $2} END {printf "%-11s %d listing requests\n", m, n}'
    umount "$work/m"
}
echo "$readers readers of one directory of 2,000 names, fresh mount each way:"
count one-by-one
for _ in 1 2 3; do count at-once; done
