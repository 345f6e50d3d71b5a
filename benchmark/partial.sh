#!/usr/bin/env bash
# Partial and lazy pulls, eStargz against zstd:chunked, on the Debian test rootfs: image
# v1 is the rootfs, v2 the same plus one changed line and a new 3 MB file (no layer in
# common). Per form and round (caches dropped before each pull): v2 into a store that has
# v1 (partial), v2 into an empty store (whole), and `pull --lazy` of v2 into an empty
# store until `perl -e` has run in a container's mount. Prints each pull line and time.
# Root (drop_caches, chroot); a loopback docker-registry (scripts/deps installs it).
#
#   benchmark/run partial            3 rounds
#   ROUNDS=5 FORMS=estargz benchmark/run partial
set -euo pipefail
. "$(dirname "$0")/lib.sh"
scripts/deps >/dev/null
build_layerfs
L="$bin"
R="${LAYERFS_TEST_ROOTFS:-/var/cache/layerfs-test/bookworm}"
[ -d "$R" ] || scripts/make-test-rootfs "$R"
rounds="${ROUNDS:-3}"
W=$(mktemp -d /tmp/layerfs-bench-pull.XXXXXX)
regpid=
cleanup() {
    for m in $(grep " $W/" /proc/mounts | awk '{print $2}'); do umount -l "$m" || true; done
    [ -n "$regpid" ] && kill "$regpid" 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT
start_registry "$W/registry"
reg=127.0.0.1:$port

tar --numeric-owner -C "$R" -cf "$W/v1.tar" .
mkdir -p "$W/v2/etc" "$W/v2/usr/local/bin"
cp -a "$R/etc/debian_version" "$W/v2/etc/debian_version"
echo two >>"$W/v2/etc/debian_version"
head -c 3000000 /dev/urandom >"$W/v2/usr/local/bin/new"
cp "$W/v1.tar" "$W/v2.tar"
tar --numeric-owner -C "$W/v2" -rf "$W/v2.tar" ./etc/debian_version ./usr/local/bin/new
for f in estargz zstd:chunked; do
    t=${f%%:*}
    for v in 1 2; do
        "$L" --root "$W/src" import -t "$reg/deb/$t:$v" "$W/v$v.tar" >/dev/null
        "$L" --root "$W/src" push -q --compression "$f" "$reg/deb/$t:$v" >/dev/null
    done
done
since() { secs "$1" "$(now)"; }
fresh() { sync; echo 3 >/proc/sys/vm/drop_caches; }
for t in ${FORMS:-estargz zstd}; do
    for i in $(seq 1 "$rounds"); do
        rm -rf "$W/dst" "$W/empty" "$W/lazy"
        "$L" --root "$W/dst" pull -q "$reg/deb/$t:1" >/dev/null
        fresh; s=$(now)
        out=$("$L" --root "$W/dst" pull "$reg/deb/$t:2" 2>&1 | grep -i "complete" || true)
        echo "$t partial, round $i: $(since "$s") s: $out"
        fresh; s=$(now)
        "$L" --root "$W/empty" pull -q "$reg/deb/$t:2" >/dev/null
        echo "$t whole into an empty store, round $i: $(since "$s") s"
        fresh; s=$(now)
        out=$(LAYERFS_LAZY_BACKGROUND=0 "$L" --root "$W/lazy" pull --lazy "$reg/deb/$t:2" 2>&1 | grep -i "complete" || true)
        c=$("$L" --root "$W/lazy" create "$reg/deb/$t:2")
        m=$("$L" --root "$W/lazy" mount "$c")
        chroot "$m" /usr/bin/perl -e 'print "ok\n"' >/dev/null
        echo "$t lazy to a first command, round $i: $(since "$s") s: $out"
        "$L" --root "$W/lazy" umount "$c" >/dev/null
    done
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
