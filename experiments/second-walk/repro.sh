#!/bin/sh
# The second walk of a fresh writable mount asks the daemon for every directory's
# attributes once more. The rule in the way is the kernel's, not ours: after a listing
# that came from the daemon (READDIR/READDIRPLUS), fs/fuse marks the directory's atime
# stale (fuse_invalidate_atime, skipped only on a read-only superblock), and the next
# stat(2) of the directory asks for STATX_ATIME among the basic stats, so it sends a
# GETATTR. Listings served from the kernel's cache do not, so the third walk is free.
#
# Run as root from the repository root after `cargo build --release`:
#     experiments/second-walk/repro.sh
# Prints the requests of `ls DIR; stat DIR` twice, on a writable and a read-only mount.
set -eu
bin=${LAYERFS_BIN:-target/release/layerfs}
t=$(mktemp -d)
trap 'umount "$t/m" 2>/dev/null || true; rm -rf "$t"' EXIT
mkdir -p "$t/l/d" "$t/u" "$t/w" "$t/m"
touch "$t/l/d/a" "$t/l/d/b"

count() { # $1: options; prints the requests seen for: stat d; ls d; stat d
    RUST_LOG=fuser=debug "$bin" overlay -f -o "$1" "$t/m" 2>"$t/log" &
    while ! mountpoint -q "$t/m"; do sleep 0.05; done
    stat "$t/m/d" >/dev/null
    n0=$(wc -l <"$t/log")
    ls "$t/m/d" >/dev/null
    n1=$(wc -l <"$t/log")
    stat "$t/m/d" >/dev/null
    n2=$(wc -l <"$t/log")
    ls "$t/m/d" >/dev/null
    stat "$t/m/d" >/dev/null
    n3=$(wc -l <"$t/log")
    printf '%-10s first ls: %s | stat after it: %s | ls+stat again: %s\n' "$2" \
        "$(sed -n "$((n0 + 1)),${n1}p" "$t/log" | grep -oE 'READDIR(PLUS)?' | sort | uniq -c | xargs)" \
        "$(sed -n "$((n1 + 1)),${n2}p" "$t/log" | grep -cE ' GETATTR')" \
        "$(sed -n "$((n2 + 1)),${n3}p" "$t/log" | grep -cE ' (GETATTR|READDIR)')"
    umount "$t/m"
    wait
}
count "lowerdir=$t/l,upperdir=$t/u,workdir=$t/w" writable
count "lowerdir=$t/l" read-only
