# Shared by benchmark/import.sh, pull.sh and partial.sh (sourced): the setup, the sample
# image, a loopback registry, and timing helpers.

cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

# What both do first: install what they lack, build layerfs (`bin`), make the sample
# image (`img`, `blobs`), the work dir (`work`, from $1) and the rounds (`rounds`).
bench_setup() {
    work="$1"
    rounds="${ROUNDS:-3}"
    scripts/deps >/dev/null
    build_layerfs
    sample_image "${BENCH_IMAGE_DIR:-/var/tmp/layerfs-bench-image}"
    mkdir -p "$work"
}

# The sample image, built once and reused: an OCI layout in DIR/image with two gzip
# layers, the Debian minbase rootfs (scripts/make-test-rootfs) and this machine's
# /usr/bin (BENCH_EXTRA_DIR), about 220 MB compressed. Sets `img` (the layout) and
# `blobs` (the hex digests of its layer blobs) and prints its size.
sample_image() {
    local work="$1"
    local rootfs="${LAYERFS_TEST_ROOTFS:-/var/cache/layerfs-test/bookworm}"
    local extra="${BENCH_EXTRA_DIR:-/usr/bin}"
    scripts/make-test-rootfs "$rootfs"
    mkdir -p "$work"
    img="$work/image"
    if [ ! -f "$img/index.json" ]; then
        echo "benchmark: building the sample image in $img"
        rm -rf "$img"
        local i=0 src
        for src in "$rootfs" "$extra"; do
            if [ ! -f "$work/layer$i.tar.gz" ]; then
                tar --numeric-owner --xattrs -C "$src" -cf - . | pigz -6 >"$work/layer$i.tar.gz.part"
                mv "$work/layer$i.tar.gz.part" "$work/layer$i.tar.gz"
            fi
            i=$((i + 1))
        done
        python3 - "$work" "$img" <<'EOF'
import gzip, hashlib, json, os, shutil, sys
work, img = sys.argv[1], sys.argv[2]
blobs = os.path.join(img, "blobs", "sha256")
os.makedirs(blobs)
def put(data):
    d = hashlib.sha256(data).hexdigest()
    open(os.path.join(blobs, d), "wb").write(data)
    return "sha256:" + d, len(data)
layers, diff_ids = [], []
for name in sorted(n for n in os.listdir(work) if n.startswith("layer") and n.endswith(".tar.gz")):
    p = os.path.join(work, name)
    h, u = hashlib.sha256(), hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    with gzip.open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            u.update(chunk)
    d = "sha256:" + h.hexdigest()
    shutil.copy(p, os.path.join(blobs, h.hexdigest()))
    layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": os.path.getsize(p)})
    diff_ids.append("sha256:" + u.hexdigest())
config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                     "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
cd, cs = put(config)
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
                       "layers": layers}).encode()
md, ms = put(manifest)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
           "digest": md, "size": ms, "annotations": {"org.opencontainers.image.ref.name": "bench:1"}}]},
          open(os.path.join(img, "index.json"), "w"))
open(os.path.join(img, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
EOF
    fi
    blobs=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1]+"/index.json"))["manifests"][0]["digest"][7:]; print(" ".join(l["digest"][7:] for l in json.load(open(sys.argv[1]+"/blobs/sha256/"+m))["layers"]))' "$img")
    local compressed=0 b
    for b in $blobs; do compressed=$((compressed + $(stat -c %s "$img/blobs/sha256/$b"))); done
    echo "benchmark: sample image of $(echo $blobs | wc -w) gzip layers, $((compressed / 1000000)) MB compressed"
}

# layerfs, built in release mode.
# A loopback registry (Debian's docker-registry) with its storage and config in DIR, on a
# free port; sets `port` and `regpid` (the caller stops it) once it answers.
start_registry() {
    local dir="$1"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    mkdir -p "$dir"
    cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/data
http:
  addr: 127.0.0.1:$port
EOF
    # (docker-registry reads REGISTRY_* variables as configuration: give it none.)
    env $(env | sed -n 's/^\(REGISTRY_[A-Za-z0-9_]*\)=.*/-u \1/p') \
        docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 &
    regpid=$!
    for _ in $(seq 1 100); do
        python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
            "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
}

build_layerfs() {
    cargo build --release --bins >/dev/null 2>&1 || cargo build --release --bins
    bin="$PWD/target/release/layerfs"
}

# The baseline's extraction: `tar xzf` of each layer blob (named by its hex digest in
# $1), in order, into $work/tarout/0, 1, … (GNU tar runs gzip in a second process).
untar_blobs() {
    local i=0 b
    for b in $blobs; do
        mkdir -p "$work/tarout/$i"
        tar -xzf "$1/$b" -C "$work/tarout/$i"
        i=$((i + 1))
    done
}

now() { date +%s.%N; }
# Seconds from $1 to $2 (two `now`s).
secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# $1 / $2 to two places.
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$1" "$2"; }
