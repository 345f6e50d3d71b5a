#!/usr/bin/env python3
"""Benchmark layerfs against the kernel's overlayfs and fuse-overlayfs.

Every backend mounts the same layer directories (they are read-only inputs, built once
under the work dir and reused). Each measurement runs the backends interleaved
(A B C A B C ...) for --reps rounds; the table shows each backend's median as a ratio to
the kernel overlay's median from the same run, because this machine is shared and noisy.

Needs root (mounts, drop_caches). Installs what it needs on Debian 12: fuse3,
fuse-overlayfs (1.10, C), fio, debootstrap; `cargo install fuse-overlayfs` (2.x, Rust)
unless --no-fo2; builds layerfs (release) when needed.

    benchmark/run mount --quick              # a few minutes, smaller sizes, 2 rounds
    benchmark/run mount                      # full run (about 15 minutes on 2 cores)
    benchmark/run mount --backends kernel,layerfs --workloads find,readdir --reps 3
    benchmark/run mount --layerfs-opts passthrough=on --json out.json --readme
    benchmark/run mount --rootless --readme --readme-tag rootless

--rootless runs the FUSE daemons and every workload as an ordinary user (--user, default
65534:65534) on user-owned copies of the layer sets: no passthrough, as for a rootless
container; the kernel overlay (mounted by root) stays the reference.

benchmark/README.md describes the layer sets, the method and every workload.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import stat as statmod
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1 << 20

BACKEND_NAMES = {
    "kernel": "kernel overlayfs",
    "layerfs": "layerfs",
    "layerfs-b": "layerfs (B)",
    "fo2": "fuse-overlayfs 2.x",
    "fo1": "fuse-overlayfs 1.10",
}
ALL_BACKENDS = ["kernel", "layerfs", "layerfs-b", "fo2", "fo1"]
ALL_WORKLOADS = ["find", "du", "readdir", "seqread", "randread", "randwarm", "pagecache", "copyup", "untar",
                 "write", "rm", "tarc", "depth", "pwalk", "rss"]
# randwarm (random reads from the FUSE page cache) matters where reads go through the daemon:
# in the default list only with --rootless.
DEFAULT_WORKLOADS = [w for w in ALL_WORKLOADS if w != "randwarm"]
# --rootless: the targets the rootless (no passthrough) figures are held to; other rows have
# none there, but layerfs should beat fuse-overlayfs on every row.
ROOTLESS_TARGETS = {"seqread_warm": 0.8, "randread_warm": 0.5, "write": 1.5, "untar": 3.0}
DEPTHS = [1, 8, 32, 100]
# The layer sets other than the rootfs, and the workloads that need each (built only then).
DATASET_USERS = {
    "big": {"seqread", "randread", "randwarm", "pagecache", "copyup"},
    "dir10k": {"readdir"},
    "depth": {"depth"},
    "tree100k": {"rss"},
}
ENABLE_URING = "/sys/module/fuse/parameters/enable_uring"
DATASET_VERSION = "2"


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


def sh(cmd, check=True, timeout=None, **kw):
    """Run a command (list), return CompletedProcess with text output captured."""
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise BenchError(f"{' '.join(map(str, cmd))}: exit {p.returncode}: "
                         f"{(p.stderr or p.stdout).strip()[-500:]}")
    return p


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def make_skeleton(src, out):
    """`src` as a gzip tar of its metadata: the same names, types, owners, modes, times,
    links and sizes, every regular file sparse (a few MiB for a rootfs). The metadata
    workloads (find, du, pwalk, rm) see the same tree; reads see zeros."""
    if not os.path.isdir(src):
        raise SystemExit(f"--make-skeleton: no rootfs at {src} (run scripts/make-test-rootfs)")
    out = os.path.abspath(out)
    tmp = tempfile.mkdtemp(prefix=".skeleton.", dir=os.path.dirname(out))
    try:
        root = os.path.join(tmp, "rootfs")
        os.mkdir(root)
        sh(["cp", "-a", "--attributes-only", src + "/.", root])
        for dirpath, _, files in os.walk(src):
            for n in files:
                st = os.lstat(os.path.join(dirpath, n))
                if statmod.S_ISREG(st.st_mode) and st.st_size:
                    q = os.path.join(root, os.path.relpath(dirpath, src), n)
                    os.truncate(q, st.st_size)
                    os.utime(q, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        sh(["tar", "-czSf", out + ".tmp", "-C", root, "."])
        os.rename(out + ".tmp", out)
    finally:
        rm_tree(tmp)
    log(f"wrote {out} ({os.path.getsize(out) / MiB:.1f} MiB)")


# ---------------------------------------------------------------------------------------
# Child operations: run in a separate process (`benchmark/mount.py --child OP ...`) so a hung
# FUSE mount can be aborted and killed. Each prints one JSON line; timing is inside.

def child_main(argv):
    op = argv[0]
    a = argv[1:]
    out = {}
    if op == "listdir":
        path, n = a[0], int(a[1])
        t0 = time.perf_counter()
        names = os.listdir(path)
        out["first"] = time.perf_counter() - t0
        out["count"] = len(names)
        warm = []
        for _ in range(n):
            t0 = time.perf_counter()
            k = len(os.listdir(path))
            warm.append(time.perf_counter() - t0)
            if k != len(names):
                raise SystemExit(f"listing changed size: {k} != {len(names)}")
        out["warm"] = statistics.median(warm)
    elif op == "read":
        path = a[0]
        buf = bytearray(MiB)
        total = 0
        t0 = time.perf_counter()
        fd = os.open(path, os.O_RDONLY)
        try:
            while True:
                k = os.readv(fd, [buf])
                if k == 0:
                    break
                total += k
        finally:
            os.close(fd)
        out["seconds"] = time.perf_counter() - t0
        out["bytes"] = total
    elif op == "append":
        path = a[0]
        t0 = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.write(fd, b"x")
        os.close(fd)
        out["seconds"] = time.perf_counter() - t0
        out["size"] = os.stat(path).st_size
    elif op == "write":
        path, mib = a[0], int(a[1])
        buf = os.urandom(MiB)
        t0 = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for _ in range(mib):
            os.write(fd, buf)
        os.fsync(fd)
        os.close(fd)
        out["seconds"] = time.perf_counter() - t0
        out["size"] = os.stat(path).st_size
    elif op == "stat":
        # First lookup of `n` distinct names, then the same names again (warm).
        d, prefix, n = a[0], a[1], int(a[2])
        names = [f"{prefix}{i:05d}" for i in range(n)]
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        st = os.stat
        t0 = time.perf_counter()
        for nm in names:
            r = st(nm, dir_fd=dfd, follow_symlinks=False)
        t1 = time.perf_counter()
        for nm in names:
            r = st(nm, dir_fd=dfd, follow_symlinks=False)
        t2 = time.perf_counter()
        for nm in names[:: max(1, n // 50)]:
            if not statmod.S_ISREG(st(nm, dir_fd=dfd, follow_symlinks=False).st_mode):
                raise SystemExit(f"{nm}: not a regular file")
        os.close(dfd)
        out["first_us"] = (t1 - t0) / n * 1e6
        out["warm_us"] = (t2 - t1) / n * 1e6
    elif op == "pwalk":
        # `n` walks of one tree at once (find + lstat of every entry). Each `find` is
        # started first and waits on a shared pipe; one write releases them all, and the
        # time runs from that write to the last exit, so process start-up is not timed.
        root, n = a[0], int(a[1])
        rfd, wfd = os.pipe()
        procs, outs = [], []
        try:
            for _ in range(n):
                f = tempfile.TemporaryFile()
                outs.append(f)
                procs.append(subprocess.Popen(
                    ["sh", "-c", 'read go && exec find "$0" -printf "%s %m\\n"', root],
                    stdin=rfd, stdout=f))
            os.close(rfd)
            rfd = -1
            time.sleep(0.2)
            t0 = time.perf_counter()
            os.write(wfd, b"\n" * n)
            codes = [p.wait() for p in procs]
            out["seconds"] = time.perf_counter() - t0
        finally:
            os.close(wfd)
            if rfd >= 0:
                os.close(rfd)
        if any(codes):
            raise SystemExit(f"a walk failed: exit codes {codes}")
        counts = []
        for f in outs:
            f.seek(0)
            counts.append(f.read().count(b"\n"))
        out["counts"] = counts
    else:
        raise SystemExit(f"unknown child op {op}")
    print(json.dumps(out))


# ---------------------------------------------------------------------------------------
# Mounts

def mountinfo():
    """[(mountpoint, major:minor, fstype)] of the current mount table."""
    res = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            mp = parts[4].encode().decode("unicode_escape")
            res.append((mp, parts[2], parts[sep + 1]))
    return res


def is_mounted(path):
    return any(mp == path for mp, _, _ in mountinfo())


class Backend:
    def __init__(self, key, binary=None, extra_opts=""):
        self.key = key
        self.binary = binary
        self.extra_opts = extra_opts

    @property
    def name(self):
        return BACKEND_NAMES[self.key]

    @property
    def is_fuse(self):
        return self.key != "kernel"

    def version(self):
        if self.key == "kernel":
            return f"Linux {platform.release()} overlayfs"
        p = sh([self.binary, "--version"], check=False)
        txt = (p.stdout + p.stderr).strip().splitlines()
        first = [l for l in txt if "version" in l.lower() and "fuse library" not in l.lower()
                 and "fusermount" not in l.lower()]
        return (first or txt or ["?"])[0].strip()


class Mount:
    """One mount of a layer stack with a fresh upper dir; unmounts on exit."""

    def __init__(self, bench, backend, lowers, writable=True, slot=0):
        self.bench = bench
        self.b = backend
        self.lowers = lowers  # top first, absolute
        self.writable = writable
        tag = backend.key if slot == 0 else f"{backend.key}-{slot}"
        self.mnt = os.path.join(bench.workdir, "mnt", tag)
        self.run_dir = os.path.join(bench.workdir, "run", tag)
        self.upper = os.path.join(self.run_dir, "upper")
        self.work = os.path.join(self.run_dir, "work")
        self.pids = []

    def __enter__(self):
        self.mount()
        return self

    def __exit__(self, *exc):
        self.umount()
        return False

    def path(self, *p):
        return os.path.join(self.mnt, *p)

    def mount(self):
        self.bench.umount_path(self.mnt)
        for d in (self.upper, self.work):
            if os.path.lexists(d):
                rm_tree(d)
        os.makedirs(self.mnt, exist_ok=True)
        if self.writable:
            os.makedirs(self.upper)
            os.makedirs(self.work)
        user = self.bench.user if self.bench.rootless else None
        if user:
            # The user's own mount point, upper and work dir (fusermount3 wants write access
            # to the mount point). For the kernel's overlay (mounted by root) the upper dir
            # is the merged root's owner: the user's, as the layers are.
            mine = [self.mnt] + ([self.upper] if self.writable else [])
            if self.writable and self.b.is_fuse:
                mine.append(self.work)
            for d in mine:
                os.chown(d, *user)
        os.sync()
        if self.b.key == "kernel":
            # Relative paths keep the option string short enough for 100 layers.
            base = self.bench.mount_base
            lower = ":".join(os.path.relpath(l, base) for l in self.lowers)
            opts = f"lowerdir={lower}"
            if self.writable:
                opts += f",upperdir={self.upper},workdir={self.work}"
            sh(["mount", "-t", "overlay", "overlay", "-o", opts, self.mnt], cwd=base, timeout=120)
        else:
            opts = "lowerdir=" + ":".join(self.lowers)
            if self.writable:
                opts += f",upperdir={self.upper},workdir={self.work}"
            if self.b.extra_opts:
                opts += "," + self.b.extra_opts
            # As the user (--rootless): the daemon mounts through fusermount3.
            sh(self.bench.user_cmd([self.b.binary, "-o", opts, self.mnt]), timeout=120,
               env=self.bench.user_env())
            deadline = time.time() + 10
            while not is_mounted(self.mnt):
                if time.time() > deadline:
                    raise BenchError(f"{self.b.name}: {self.mnt} not mounted after the daemon returned")
                time.sleep(0.02)
            self.pids = self.bench.daemon_pids(self.b, self.mnt)
            self.bench.started_pids.update(self.pids)
        if not is_mounted(self.mnt):
            raise BenchError(f"{self.b.name}: mount of {self.mnt} failed")
        self.bench.note_mount_options(self.b, self.mnt)

    def umount(self):
        self.bench.umount_path(self.mnt, self.pids)
        # Leave no dirty data or pending deletes behind to slow down the next measurement.
        if not is_mounted(self.mnt):
            for d in (self.upper, self.work):
                if os.path.lexists(d):
                    rm_tree(d)
            os.sync()

    def rss_kib(self):
        """Peak (VmHWM) and current (VmRSS) resident size of the daemon, KiB."""
        hwm = rss = anon = 0
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            hwm += int(line.split()[1])
                        elif line.startswith("VmRSS:"):
                            rss += int(line.split()[1])
                        elif line.startswith("RssAnon:"):
                            anon += int(line.split()[1])
            except FileNotFoundError:
                pass
        return hwm, rss, anon


def rm_tree(path):
    subprocess.run(["rm", "-rf", "--one-file-system", path], check=True)


# ---------------------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.workdir = os.path.abspath(args.workdir)
        self.layers_dir = os.path.join(self.workdir, "layers")
        self.quick = args.quick
        self.reps = args.reps or (2 if self.quick else 5)
        try:
            self.walkers = sorted({int(x) for x in args.walkers.split(",") if x.strip()})
        except ValueError:
            raise SystemExit(f"--walkers {args.walkers!r}: want a comma list of counts")
        if not self.walkers or min(self.walkers) < 1:
            raise SystemExit(f"--walkers {args.walkers!r}: want counts of at least 1")
        self.big_mib = 256 if self.quick else 1024
        self.copyup_mib = 64 if self.quick else 256
        self.write_mib = 256 if self.quick else 1024
        self.fio_seconds = 2 if self.quick else 3
        self.stat_names = 2000 if self.quick else 10000
        self.depths = DEPTHS
        self.started_pids = set()
        self.results = {}  # metric -> backend -> {"samples": [], "errors": []}
        self.failures = []  # (backend, workload, round, message)
        self.fo2_proc = None
        self.rounds = {}  # workload title -> rounds run
        self.info = {}
        self.backends = []
        # --rootless: the FUSE daemons run as this (uid, gid) and every workload command runs
        # as it too (the kernel's overlay is still mounted by root); the layer sets are
        # user-owned copies.
        self.rootless = args.rootless
        self.user = parse_user(args.user) if self.rootless else None
        self.mount_base = self.layers_dir
        self.dev_fuse_mode = None  # /dev/fuse's mode before we opened it to the user
        self.uring_was = None  # enable_uring before --uring-left-on
        self.script = os.path.abspath(__file__)  # what child operations run
        self.mount_options = {}  # backend key -> FUSE/overlay options of its first mount

    # --- setup ------------------------------------------------------------------------
    def setup(self):
        if os.geteuid() != 0:
            raise SystemExit("benchmark/run mount: run as root (it mounts and drops caches)")
        keys = [k.strip() for k in self.args.backends.split(",") if k.strip()]
        for k in keys:
            if k not in BACKEND_NAMES:
                raise SystemExit(f"unknown backend {k!r} (have {', '.join(ALL_BACKENDS)})")
        if self.args.no_fo2 and "fo2" in keys:
            keys.remove("fo2")
        if self.args.offline:
            # A machine without package registry or Rust toolchain: use what is given.
            if not self.args.layerfs_bin and {"layerfs", "layerfs-b"} & set(keys):
                raise SystemExit("benchmark/run mount --offline: give --layerfs-bin")
            if not os.path.isdir(os.environ.get("LAYERFS_TEST_ROOTFS", "")):
                raise SystemExit("benchmark/run mount --offline: LAYERFS_TEST_ROOTFS must name a rootfs "
                                 "tree (--make-skeleton writes one to carry)")
            for k, ok in (("fo2", self.args.fo2_bin), ("fo1", os.path.exists(self.fo1_path()))):
                if k in keys and not ok:
                    log(f"--offline: {BACKEND_NAMES[k]} is not here; leaving it out")
                    keys.remove(k)
        else:
            self.install_packages()
        if not os.path.exists("/dev/fuse"):
            subprocess.run(["modprobe", "fuse"], check=False)
        wl = self.args.workloads or ",".join(ALL_WORKLOADS if self.rootless else DEFAULT_WORKLOADS)
        self.workloads = [w.strip() for w in wl.split(",") if w.strip()]
        for w in self.workloads:
            if w not in ALL_WORKLOADS:
                raise SystemExit(f"unknown workload {w!r} (have {', '.join(ALL_WORKLOADS)})")
        os.makedirs(self.workdir, exist_ok=True)
        self.cleanup_stale()
        if self.rootless:
            for tool in ("setpriv", "fusermount3"):
                if not shutil.which(tool):
                    raise SystemExit(f"benchmark/run mount --rootless: {tool} is missing")
        # The slow one-time steps overlap: fuse-overlayfs 2.x builds in the background while
        # layerfs builds and the layer sets are made.
        fo2 = self.start_fo2_install() if "fo2" in keys else None
        layerfs = self.build_layerfs() if {"layerfs", "layerfs-b"} & set(keys) else None
        self.rootfs_src = os.environ.get("LAYERFS_TEST_ROOTFS", "/var/cache/layerfs-test/bookworm")
        if not self.args.offline:
            sh([os.path.join(REPO, "scripts", "make-test-rootfs"), self.rootfs_src], timeout=3600)
        self.build_datasets()
        if fo2 is not None:
            fo2 = self.finish_fo2_install(fo2)
        fo1 = self.fo1_path()
        if self.rootless:
            self.open_dev_fuse()
            if self.args.uring_left_on:
                self.leave_uring_on()
            self.user_datasets()
            self.script = self.user_binary(self.script, "script")
            # The user must be able to run them: ~/.cargo/bin or a clone under /root is not
            # open to it.
            layerfs, fo2, fo1 = (self.user_binary(x, d) if x else x for x, d in
                                 ((layerfs, "layerfs"), (fo2, "fo2"), (fo1, "fo1")))
        layerfs_b = layerfs
        if self.args.layerfs_b_bin:
            layerfs_b = os.path.abspath(self.args.layerfs_b_bin)
            if self.rootless:
                layerfs_b = self.user_binary(layerfs_b, "layerfs-b")
        for b in {layerfs, layerfs_b} - {None}:
            # A stale list of the daemon's functions (link/hot-functions.txt) shows as a
            # larger peak RSS, not as an error: say so beside the figures.
            p = subprocess.run([os.path.join(REPO, "scripts", "hot-functions"), "--check", "--bin", b],
                               cwd=REPO, capture_output=True, text=True)
            log((p.stdout or p.stderr).strip())
        for k in keys:
            if k == "kernel":
                self.backends.append(Backend("kernel"))
            elif k == "layerfs":
                self.backends.append(Backend("layerfs", layerfs, self.args.layerfs_opts))
            elif k == "layerfs-b":
                self.backends.append(Backend("layerfs-b", layerfs_b, self.args.layerfs_b_opts))
            elif k == "fo1":
                self.backends.append(Backend("fo1", fo1))
            elif k == "fo2" and fo2:
                self.backends.append(Backend("fo2", fo2))
        self.info = {
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": machine_description(self.workdir),
            "command": " ".join(["benchmark/run", "mount"] + sys.argv[1:]),
            "layerfs_commit": git_rev(),
            "reps": self.reps,
            "quick": self.quick,
            "versions": {b.key: b.version() for b in self.backends},
            "layerfs_opts": self.args.layerfs_opts,
            "layerfs_b_opts": self.args.layerfs_b_opts,
            "layerfs_b_bin": self.args.layerfs_b_bin or "",
            "load_start": round(os.getloadavg()[1], 1),
            "load_start_1min": round(os.getloadavg()[0], 2),
            "nice": os.getpriority(os.PRIO_PROCESS, 0),
            "rootless": f"{self.user[0]}:{self.user[1]}" if self.rootless else None,
        }

    def install_packages(self):
        need = ["fuse3", "fuse-overlayfs", "fio", "debootstrap", "tar"]
        missing = [p for p in need
                   if "install ok installed" not in sh(["dpkg-query", "-W", "-f=${Status}", p],
                                                       check=False).stdout]
        if missing:
            log(f"installing {' '.join(missing)}")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            sh(["apt-get", "update", "-qq"], env=env)
            sh(["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + missing, env=env)

    def cargo(self):
        c = shutil.which("cargo") or os.path.expanduser("~/.cargo/bin/cargo")
        if not os.path.exists(c):
            raise SystemExit("benchmark/run mount: cargo (Rust toolchain) is required")
        return c

    def build_layerfs(self):
        if self.args.layerfs_bin:
            return os.path.abspath(self.args.layerfs_bin)
        log("cargo build --release (layerfs)")
        p = subprocess.run([self.cargo(), "build", "--release", "--quiet", "--bin", "layerfs"],
                           cwd=REPO)
        if p.returncode != 0:
            raise SystemExit("benchmark/run mount: building layerfs failed")
        return os.path.join(REPO, "target", "release", "layerfs")

    def fo1_path(self):
        return os.path.abspath(self.args.fo1_bin) if self.args.fo1_bin else "/usr/bin/fuse-overlayfs"

    def fo2_path(self):
        if self.args.fo2_bin:
            return os.path.abspath(self.args.fo2_bin)
        home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
        return os.path.join(home, "bin", "fuse-overlayfs")

    def start_fo2_install(self):
        """The 2.x binary, or a running `cargo install` to wait for."""
        b = self.fo2_path()
        if os.path.exists(b) or self.args.fo2_bin:
            return b
        logf = os.path.join(self.workdir, "cargo-install-fuse-overlayfs.log")
        log(f"cargo install fuse-overlayfs (2.x, one time, a few minutes; log in {logf})")
        self.fo2_proc = subprocess.Popen([self.cargo(), "install", "--locked", "fuse-overlayfs"],
                                         stdout=open(logf, "w"), stderr=subprocess.STDOUT)
        return self.fo2_proc

    def finish_fo2_install(self, p):
        if isinstance(p, str):
            return p
        b = self.fo2_path()
        if p.wait() != 0 or not os.path.exists(b):
            log("fuse-overlayfs 2.x could not be installed (see the log); leaving it out (--no-fo2 skips it)")
            return None
        return b

    # --- rootless: the user, its binaries, its layer copies ----------------------------------
    def user_cmd(self, cmd):
        """`cmd` as the benchmark user (--rootless), or unchanged."""
        if not self.rootless:
            return cmd
        uid, gid = self.user
        return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"] + cmd

    def user_env(self):
        if not self.rootless:
            return None
        home = os.path.join(self.workdir, "home-rootless")
        if not os.path.isdir(home):
            os.makedirs(home)
            os.chown(home, *self.user)
        return {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": home, "LANG": "C.UTF-8",
                "USER": "bench", "LOGNAME": "bench"}

    def open_dev_fuse(self):
        """libfuse (fuse-overlayfs 1.10) opens /dev/fuse as the user before it calls
        fusermount3: open it to the user for the run if it is not; cleanup() restores the mode."""
        st = os.stat("/dev/fuse")
        if st.st_mode & 0o006 == 0o006:
            return
        self.dev_fuse_mode = statmod.S_IMODE(st.st_mode)
        log(f"/dev/fuse has mode {self.dev_fuse_mode:04o}: 0666 for this run, restored at the end")
        os.chmod("/dev/fuse", 0o666)

    def leave_uring_on(self):
        """--uring-left-on: the fuse module's enable_uring on for the run, as root may leave
        it on a host (an ordinary user's layerfs mounts then take FUSE over io_uring);
        cleanup() puts it back."""
        try:
            with open(ENABLE_URING) as f:
                self.uring_was = f.read().strip()
        except OSError:
            raise SystemExit("benchmark/run mount --uring-left-on: this kernel has no FUSE over io_uring")
        with open(ENABLE_URING, "w") as f:
            f.write("Y")
        log(f"enable_uring was {self.uring_was}: Y for this run, restored at the end")

    def restore_uring(self):
        if self.uring_was is not None:
            with open(ENABLE_URING, "w") as f:
                f.write(self.uring_was)
            log(f"enable_uring restored to {self.uring_was}")
            self.uring_was = None

    def restore_dev_fuse(self):
        if self.dev_fuse_mode is not None:
            os.chmod("/dev/fuse", self.dev_fuse_mode)
            log(f"/dev/fuse mode restored to {self.dev_fuse_mode:04o}")
            self.dev_fuse_mode = None

    def user_binary(self, path, sub):
        """A copy of `path` the user can run: <workdir>/bin/SUB/<name> (the name is kept: the
        FUSE subtype in the mount table comes from it)."""
        bindir = os.path.join(self.workdir, "bin", sub)
        os.makedirs(bindir, exist_ok=True)
        for d in (os.path.dirname(bindir), bindir):
            os.chmod(d, 0o755)
        dst = os.path.join(bindir, os.path.basename(path))
        shutil.copyfile(path, dst + ".tmp")
        os.chmod(dst + ".tmp", 0o755)
        os.rename(dst + ".tmp", dst)
        return dst

    def user_datasets(self):
        """Copies of the layer sets owned by the user (an unprivileged daemon must read every
        file of its lower layers), made once; every backend mounts these, the kernel too."""
        uid, gid = self.user
        root = os.path.join(self.workdir, f"layers-user-{uid}")
        os.makedirs(root, exist_ok=True)
        os.chmod(root, 0o755)

        def copy(name):
            src = os.path.join(self.layers_dir, name)
            d = os.path.join(root, name)
            mark = d + ".complete"
            want = f"{DATASET_VERSION} {uid}:{gid}"
            if os.path.exists(mark) and open(mark).read().strip() == want:
                return d
            log(f"copying layer set {name} for uid {uid} (one time)")
            for x in (mark, d, d + ".tmp"):
                if os.path.lexists(x):
                    rm_tree(x)
            sh(["cp", "-a", src, d + ".tmp"])
            sh(["chown", "-R", "--no-dereference", f"{uid}:{gid}", d + ".tmp"])
            os.rename(d + ".tmp", d)
            with open(mark, "w") as f:
                f.write(want + "\n")
            return d

        def moved(path):
            return os.path.join(root, os.path.relpath(path, self.layers_dir))

        built = [self.big, self.dir10k, self.depth_layers and os.path.dirname(self.depth_layers[0]),
                 self.tree100k]
        for name in ["rootfs"] + [os.path.basename(d) for d in built if d]:
            copy(name)
        self.rootfs_layers = [moved(p) for p in self.rootfs_layers]
        self.big, self.dir10k, self.tree100k = (moved(p) if p else None
                                                for p in (self.big, self.dir10k, self.tree100k))
        self.depth_layers = [moved(p) for p in self.depth_layers]
        self.mount_base = root
        # A user cannot create device nodes: the untar workload extracts the rootfs tar
        # without them (for every backend).
        tar = os.path.join(root, "rootfs-nodev.tar")
        if not os.path.exists(tar):
            import tarfile
            with tarfile.open(self.rootfs_tar) as t:
                special = [m.name for m in t.getmembers() if m.ischr() or m.isblk() or m.isfifo()]
            lst = tar + ".list"
            with open(lst, "w") as f:
                f.write("".join(n + "\n" for n in special))
            shutil.copyfile(self.rootfs_tar, tar + ".tmp")
            if special:
                sh(["tar", "--delete", "-f", tar + ".tmp", "--verbatim-files-from", "-T", lst])
            os.unlink(lst)
            os.rename(tar + ".tmp", tar)
        self.untar_src = tar
        self.untar_entries = len(sh(["tar", "-tf", tar]).stdout.splitlines())

    def note_mount_options(self, backend, mnt):
        if backend.key in self.mount_options:
            return
        with open("/proc/self/mountinfo") as f:
            for line in f:
                parts = line.split()
                if parts[4].encode().decode("unicode_escape") == mnt:
                    sep = parts.index("-")
                    self.mount_options[backend.key] = f"{parts[sep + 1]} {parts[sep + 3]}"

    def isdir(self, path):
        if not self.rootless:
            return os.path.isdir(path)
        return subprocess.run(self.user_cmd(["test", "-d", path]), env=self.user_env()).returncode == 0

    def lexists(self, path):
        if not self.rootless:
            return os.path.lexists(path)
        return subprocess.run(self.user_cmd(["test", "-e", path, "-o", "-L", path]),
                              env=self.user_env()).returncode == 0

    def mkdir(self, path):
        if not self.rootless:
            os.mkdir(path)
        else:
            sh(self.user_cmd(["mkdir", path]), env=self.user_env())

    # --- daemons and unmounting ----------------------------------------------------------
    def daemon_pids(self, backend, mnt):
        exe = os.path.realpath(backend.binary)
        pids = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                if os.path.realpath(f"/proc/{d}/exe") != exe:
                    continue
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            if any(os.path.abspath(a.decode(errors="replace")) == mnt for a in args if a):
                pids.append(int(d))
        return pids

    def our_daemons(self):
        """Daemons serving a mountpoint under our work dir (ours by construction)."""
        mroot = os.path.join(self.workdir, "mnt") + "/"
        res = []
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == os.getpid():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    args = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
            except OSError:
                continue
            if args and "-o" in args and any(a.startswith(mroot) for a in args[-1:]):
                res.append(int(d))
        return res

    def abort_fuse(self, mnt):
        for mp, devno, fstype in mountinfo():
            if mp == mnt and fstype.startswith("fuse"):
                minor = devno.split(":")[1]
                conn = "/sys/fs/fuse/connections"
                if not os.path.exists(os.path.join(conn, minor)):
                    subprocess.run(["mount", "-t", "fusectl", "none", conn], check=False,
                                   stderr=subprocess.DEVNULL)
                try:
                    with open(os.path.join(conn, minor, "abort"), "w") as f:
                        f.write("1")
                    log(f"aborted the FUSE connection of {mnt}")
                except OSError:
                    pass

    def umount_path(self, mnt, pids=()):
        for attempt in range(50):
            if not is_mounted(mnt):
                break
            p = subprocess.run(["umount", mnt], stderr=subprocess.PIPE, text=True)
            if p.returncode == 0:
                continue
            time.sleep(0.1)
        else:
            log(f"{mnt} busy; detaching")
            subprocess.run(["umount", "-l", mnt], check=False)
        # The daemon exits by itself once unmounted; wait for it, then insist.
        deadline = time.time() + 15
        for pid in pids:
            while os.path.exists(f"/proc/{pid}") and time.time() < deadline:
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        if f.read().split(")")[-1].split()[0] == "Z":
                            break
                except OSError:
                    break
                time.sleep(0.02)
            if os.path.exists(f"/proc/{pid}") and time.time() >= deadline:
                log(f"daemon {pid} still running after unmount; killing it")
                for s in (signal.SIGTERM, signal.SIGKILL):
                    try:
                        os.kill(pid, s)
                    except ProcessLookupError:
                        break
                    time.sleep(1)
            self.started_pids.discard(pid)

    def cleanup_stale(self):
        """Unmount whatever an earlier, interrupted run left under our work dir."""
        prefix = self.workdir + "/"
        mps = sorted((mp for mp, _, _ in mountinfo() if mp.startswith(prefix)), key=len, reverse=True)
        for mp in mps:
            log(f"unmounting leftover {mp}")
            self.abort_fuse(mp)
            self.umount_path(mp)
        for pid in self.our_daemons():
            log(f"stopping leftover daemon {pid}")
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def cleanup(self):
        if self.fo2_proc is not None and self.fo2_proc.poll() is None:
            self.fo2_proc.terminate()
            self.fo2_proc.wait()
        prefix = self.workdir + "/"
        mps = sorted((mp for mp, _, _ in mountinfo() if mp.startswith(prefix)), key=len, reverse=True)
        for mp in mps:
            self.umount_path(mp)
        for pid in list(self.started_pids):
            if os.path.exists(f"/proc/{pid}"):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        try:
            run = os.path.join(self.workdir, "run")
            if os.path.exists(run):
                rm_tree(run)
        finally:
            self.restore_dev_fuse()
            self.restore_uring()

    # --- datasets (immutable, reused) -------------------------------------------------------
    def build_datasets(self):
        os.makedirs(self.layers_dir, exist_ok=True)
        self.rootfs_layers = self.dataset("rootfs", self.make_rootfs)
        self.rootfs_layers = [os.path.join(self.rootfs_layers, n) for n in ("4", "3", "2", "1")]
        self.rootfs_tar = os.path.join(self.layers_dir, "rootfs.tar")
        self.rootfs_entries = int(open(os.path.join(self.layers_dir, "rootfs", "entries")).read())
        self.untar_src, self.untar_entries = self.rootfs_tar, self.rootfs_entries
        wanted = {name for name, users in DATASET_USERS.items() if users & set(self.workloads)}
        self.big = self.dir10k = self.tree100k = None
        self.depth_layers = []
        if "big" in wanted:
            self.big = self.dataset(f"big-{self.big_mib}", self.make_big)
        if "dir10k" in wanted:
            self.dir10k = self.dataset("dir10k", self.make_dir10k)
        if "depth" in wanted:
            depth = self.dataset("depth", self.make_depth)
            self.depth_layers = [os.path.join(depth, f"{i:03d}") for i in range(100)]
        if "tree100k" in wanted:
            self.tree100k = self.dataset("tree100k", self.make_tree100k)

    def dataset(self, name, maker):
        # The marker sits beside the set, not in it: a layer must hold only its own files.
        d = os.path.join(self.layers_dir, name)
        mark = d + ".complete"
        if os.path.exists(mark) and open(mark).read().strip() == DATASET_VERSION:
            return d
        log(f"building layer set {name} (one time)")
        if os.path.exists(mark):
            os.unlink(mark)
        if os.path.exists(d):
            rm_tree(d)
        tmp = d + ".tmp"
        if os.path.exists(tmp):
            rm_tree(tmp)
        os.makedirs(tmp)
        maker(tmp)
        os.rename(tmp, d)
        with open(mark, "w") as f:
            f.write(DATASET_VERSION + "\n")
        return d

    def make_rootfs(self, d):
        # 1 = base (all but usr/lib, usr/share), 2 = usr/lib, 3 = usr/share,
        # 4 = top: the regular files of /etc again, changed. Merged = the original tree.
        src = self.rootfs_src
        for n in "1234":
            os.makedirs(os.path.join(d, n))
        sh(["cp", "-a", src + "/.", os.path.join(d, "1")])
        rm_tree(os.path.join(d, "1", "usr", "lib"))
        rm_tree(os.path.join(d, "1", "usr", "share"))
        sh(["cp", "-a", "--parents", "usr/lib", os.path.join(d, "2")], cwd=src)
        sh(["cp", "-a", "--parents", "usr/share", os.path.join(d, "3")], cwd=src)
        for ln in ("2", "3"):
            shutil.copystat(os.path.join(src, "usr"), os.path.join(d, ln, "usr"))
        etc = os.path.join(d, "4", "etc")
        os.makedirs(etc)
        for e in os.scandir(os.path.join(src, "etc")):
            if e.is_file(follow_symlinks=False):
                dst = os.path.join(etc, e.name)
                shutil.copy2(e.path, dst)
                with open(dst, "a") as f:
                    f.write("# changed in the top layer\n")
                st = e.stat(follow_symlinks=False)
                os.chown(dst, st.st_uid, st.st_gid)
                os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        shutil.copystat(os.path.join(src, "etc"), etc)
        count = len(sh(["find", src]).stdout.splitlines())
        with open(os.path.join(d, "entries"), "w") as f:
            f.write(f"{count}\n")
        tar = os.path.join(self.layers_dir, "rootfs.tar")
        sh(["tar", "-cf", tar + ".tmp", "-C", src, "."])
        os.rename(tar + ".tmp", tar)

    def make_big(self, d):
        os.makedirs(os.path.join(d, "big"))
        for name, mib in (("file", self.big_mib), ("copyup", self.copyup_mib)):
            with open(os.path.join(d, "big", name), "wb") as f:
                for _ in range(mib):
                    f.write(os.urandom(MiB))

    def make_dir10k(self, d):
        os.makedirs(os.path.join(d, "d"))
        for i in range(10000):
            open(os.path.join(d, "d", f"f{i:05d}"), "w").close()

    def make_depth(self, d):
        # 000 is the bottom: d/t00000.. only there; every layer has d/ and a few own files.
        for i in range(100):
            ld = os.path.join(d, f"{i:03d}", "d")
            os.makedirs(ld)
            for j in range(10):
                with open(os.path.join(ld, f"x{i:03d}_{j}"), "w") as f:
                    f.write("x\n")
            with open(os.path.join(d, f"{i:03d}", f"r{i:03d}"), "w") as f:
                f.write("r\n")
        for k in range(10000):
            open(os.path.join(d, "000", "d", f"t{k:05d}"), "w").close()

    def make_tree100k(self, d):
        for i in range(100):
            sub = os.path.join(d, "t", f"d{i:03d}")
            os.makedirs(sub)
            for j in range(1000):
                open(os.path.join(sub, f"f{j:04d}"), "w").close()

    # --- measurement helpers --------------------------------------------------------------------
    def child(self, m, op, *args, timeout=900):
        cmd = self.user_cmd([sys.executable, self.script, "--child", op] + [str(a) for a in args])
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               timeout=timeout, env=self.user_env())
        except subprocess.TimeoutExpired:
            self.abort_fuse(m.mnt)
            raise BenchError(f"{op} timed out after {timeout}s (FUSE connection aborted)")
        if p.returncode != 0:
            raise BenchError(f"{op} {' '.join(map(str, args))}: {p.stderr.strip()[-600:]}")
        return json.loads(p.stdout.strip().splitlines()[-1])

    def timed(self, m, cmd, timeout=900, **kw):
        cmd = self.user_cmd(cmd)
        if self.rootless:
            kw.setdefault("env", self.user_env())
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                               **kw)
        except subprocess.TimeoutExpired:
            self.abort_fuse(m.mnt)
            raise BenchError(f"{cmd[0]} timed out after {timeout}s (FUSE connection aborted)")
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            raise BenchError(f"{' '.join(map(str, cmd))}: exit {p.returncode}: "
                             f"{p.stderr.decode(errors='replace').strip()[-600:]}")
        return dt, p.stdout

    def walk(self, m, root):
        """find + lstat of every entry; returns (seconds, entries)."""
        dt, out = self.timed(m, ["find", root, "-printf", "%s %m\n"])
        return dt, out.count(b"\n")

    def record(self, metric, backend, value=None, error=None):
        r = self.results.setdefault(metric, {}).setdefault(backend.key, {"samples": [], "errors": []})
        if error is not None:
            r["errors"].append(error)
        else:
            r["samples"].append(value)

    def each(self, title, fn, reps=None, metrics=()):
        """Run fn(backend) for every backend, interleaved, `reps` rounds."""
        reps = reps or self.reps
        self.rounds[title] = reps
        log(f"{title}: {reps} rounds x {', '.join(b.key for b in self.backends)}")
        for rep in range(reps):
            for b in self.backends:
                t0 = time.time()
                try:
                    vals = fn(b)
                    for k, v in vals.items():
                        self.record(k, b, v)
                    desc = " ".join(f"{k}={fmt_num(v)}" for k, v in vals.items())
                except KeyboardInterrupt:
                    raise
                except Exception as e:  # a broken backend must not stop the run
                    msg = f"{type(e).__name__}: {e}" if not isinstance(e, BenchError) else str(e)
                    for k in metrics:
                        self.record(k, b, error=msg)
                    self.failures.append((b.key, title, rep + 1, msg))
                    desc = f"FAIL {msg}"
                log(f"  {title} round {rep + 1} {b.key}: {desc} ({time.time() - t0:.1f}s)")

    def mount(self, b, lowers, cold=False, writable=True, slot=0):
        if cold:
            self.umount_path(os.path.join(self.workdir, "mnt", b.key))
            drop_caches()
        return Mount(self, b, lowers, writable, slot)

    @staticmethod
    def warm_file(path):
        with open(path, "rb") as f:
            while f.read(4 * MiB):
                pass

    # --- workloads --------------------------------------------------------------------------------
    def wl_find(self):
        n_warm = 5

        def fn(b):
            with self.mount(b, self.rootfs_layers, cold=True) as m:
                walks = []
                for _ in range(2 + n_warm):
                    dt, n = self.walk(m, m.mnt)
                    if n != self.rootfs_entries:
                        raise BenchError(f"find saw {n} entries, expected {self.rootfs_entries}")
                    walks.append(dt)
            # The first walk of a fresh mount, the second, and the ones after.
            return {"find_cold": walks[0], "find_second": walks[1],
                    "find_warm": statistics.median(walks[2:])}
        self.each("find+stat", fn, reps=2 * self.reps,
                  metrics=("find_cold", "find_second", "find_warm"))

    def wl_pwalk(self):
        """For each count in `--walkers`: that many walks of the rootfs at once on a fresh
        mount, the layers in the host's caches (a second container of an image; what the
        daemon does with many callers, not the disk), then again on the same mount."""
        def fn(b):
            vals = {}
            for layer in self.rootfs_layers:
                # Every entry stat'ed: the layers' dentries and inodes in the host's caches.
                sh(["find", layer, "-printf", "%s %m\n"])
            for n in self.walkers:
                with self.mount(b, self.rootfs_layers) as m:
                    first = self.child(m, "pwalk", m.mnt, n)
                    warm = self.child(m, "pwalk", m.mnt, n)
                for r in (first, warm):
                    bad = [c for c in r["counts"] if c != self.rootfs_entries]
                    if bad:
                        raise BenchError(f"a walk saw {bad[0]} entries, expected {self.rootfs_entries}")
                vals[f"pwalk_first_{n}"] = first["seconds"]
                vals[f"pwalk_warm_{n}"] = warm["seconds"]
            return vals
        metrics = [f"pwalk_{k}_{n}" for n in self.walkers for k in ("first", "warm")]
        self.each("walks at once, fresh mount", fn, metrics=metrics)

    def wl_du(self):
        def fn(b):
            with self.mount(b, self.rootfs_layers, cold=True) as m:
                dt, out = self.timed(m, ["du", "-s", m.mnt])
                if not out.strip():
                    raise BenchError("du printed nothing")
            return {"du": dt}
        self.each("du -s", fn, metrics=("du",))

    def wl_pagecache(self):
        """Ten read-only mounts of one layer, each reading the same lower file: how much
        the page cache grows (the kernel shares the lower file's pages)."""
        n = 10
        size = self.copyup_mib * MiB

        def cached_mib():
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("Cached:"):
                        return int(line.split()[1]) / 1024
            raise BenchError("no Cached: in /proc/meminfo")

        def fn(b):
            mounts = []
            try:
                for i in range(n):
                    mounts.append(self.mount(b, [self.big], slot=i + 1))
                    mounts[-1].mount()
                drop_caches()
                before = cached_mib()
                for m in mounts:
                    r = self.child(m, "read", m.path("big", "copyup"))
                    if r["bytes"] != size:
                        raise BenchError(f"read {r['bytes']} bytes, expected {size}")
                grown = cached_mib() - before
            finally:
                for m in mounts:
                    m.umount()
            return {"pagecache": max(grown, 1.0)}
        self.each(f"page cache, {n} mounts reading one {self.copyup_mib} MiB lower file", fn,
                  metrics=("pagecache",))

    def wl_readdir(self):
        def fn(b):
            with self.mount(b, [self.dir10k]) as m:
                r = self.child(m, "listdir", m.path("d"), 20)
                if r["count"] != 10000:
                    raise BenchError(f"readdir returned {r['count']} entries, expected 10000")
            return {"readdir_first": r["first"], "readdir_warm": r["warm"]}
        self.each("readdir 10k", fn, reps=2 * self.reps, metrics=("readdir_first", "readdir_warm"))

    def wl_seqread(self):
        size = self.big_mib * MiB

        def fn(b):
            with self.mount(b, [self.big], cold=True) as m:
                f = m.path("big", "file")
                c = self.child(m, "read", f)
                w = self.child(m, "read", f)
                for r in (c, w):
                    if r["bytes"] != size:
                        raise BenchError(f"read {r['bytes']} bytes, expected {size}")
            return {"seqread_cold": size / MiB / c["seconds"], "seqread_warm": size / MiB / w["seconds"]}
        self.each(f"sequential read {self.big_mib} MiB", fn, metrics=("seqread_cold", "seqread_warm"))

    def wl_randread(self):
        lower = os.path.join(self.big, "big", "file")

        def fn(b):
            self.warm_file(lower)
            with self.mount(b, [self.big]) as m:
                iops = self.fio_randread(m, m.path("big", "file"))
            return {"randread": iops}
        self.each("4k random read (fio)", fn, metrics=("randread",))

    def wl_randwarm(self):
        """4k random reads of a file the mount has read once: from the FUSE page cache where
        the daemon serves reads (rootless), from the lower file's where they pass through."""
        size = self.big_mib * MiB

        def fn(b):
            with self.mount(b, [self.big]) as m:
                f = m.path("big", "file")
                r = self.child(m, "read", f)
                if r["bytes"] != size:
                    raise BenchError(f"read {r['bytes']} bytes, expected {size}")
                return {"randread_warm": self.fio_randread(m, f)}
        self.each("4k random read, warm (fio)", fn, metrics=("randread_warm",))

    def fio_randread(self, m, path):
        _, out = self.timed(m, [
            "fio", "--name=randread", f"--filename={path}",
            "--rw=randread", "--bs=4k", "--ioengine=psync", "--numjobs=1",
            f"--size={self.big_mib}m", f"--runtime={self.fio_seconds}", "--time_based",
            "--invalidate=0", "--readonly", "--output-format=json"])
        j = json.loads(out[out.index(b"{"):])
        job = j["jobs"][0]
        if job.get("error"):
            raise BenchError(f"fio error {job['error']}")
        iops = job["read"]["iops"]
        if job["read"]["io_bytes"] <= 0 or iops <= 0:
            raise BenchError("fio read nothing")
        return iops

    def wl_copyup(self):
        size = self.copyup_mib * MiB
        lower = os.path.join(self.big, "big", "copyup")

        def fn(b):
            self.warm_file(lower)
            with self.mount(b, [self.big]) as m:
                r = self.child(m, "append", m.path("big", "copyup"))
                if r["size"] != size + 1:
                    raise BenchError(f"size after append {r['size']}, expected {size + 1}")
                up = os.path.join(m.upper, "big", "copyup")
                if not os.path.exists(up) or os.path.getsize(up) != size + 1:
                    raise BenchError("no complete copy in the upper dir")
                with open(up, "rb") as f:
                    f.seek(size - 1)
                    if f.read() != open(lower, "rb").read()[-1:] + b"x":
                        raise BenchError("copied-up data wrong at the end")
            if os.path.getsize(lower) != size:
                raise BenchError("the lower file changed")
            return {"copyup": r["seconds"]}
        self.each(f"copy-up {self.copyup_mib} MiB", fn, metrics=("copyup",))

    def wl_untar(self):
        def fn(b):
            self.warm_file(self.untar_src)
            with self.mount(b, self.rootfs_layers) as m:
                dest = m.path("untar")
                self.mkdir(dest)
                dt, _ = self.timed(m, ["tar", "-xf", self.untar_src, "-C", dest])
                _, n = self.walk(m, dest)
                if n != self.untar_entries:
                    raise BenchError(f"untar produced {n} entries, expected {self.untar_entries}")
                os.sync()
            return {"untar": dt}
        # Each round also syncs and deletes 200 MB of upper files (untimed): fewer rounds.
        self.each("untar rootfs", fn, reps=min(self.reps, max(3, self.reps - 2)), metrics=("untar",))

    def wl_write(self):
        def fn(b):
            with self.mount(b, self.rootfs_layers) as m:
                r = self.child(m, "write", m.path("bigwrite"), self.write_mib)
                if r["size"] != self.write_mib * MiB:
                    raise BenchError(f"written file has {r['size']} bytes")
                up = os.path.join(m.upper, "bigwrite")
                if os.path.getsize(up) != self.write_mib * MiB:
                    raise BenchError("upper file has the wrong size")
            return {"write": r["seconds"]}
        self.each(f"write {self.write_mib} MiB + fsync", fn, metrics=("write",))

    def wl_rm(self):
        def fn(b):
            with self.mount(b, self.rootfs_layers) as m:
                t = m.path("usr", "share")
                if not self.isdir(t):
                    raise BenchError("usr/share missing before rm")
                dt, _ = self.timed(m, ["rm", "-rf", t])
                if self.lexists(t):
                    raise BenchError("usr/share still visible after rm -rf")
                if not self.isdir(m.path("usr", "lib")):
                    raise BenchError("usr/lib vanished")
                os.sync()
            if not os.path.isdir(os.path.join(self.rootfs_layers[1], "usr", "share", "doc")):
                raise BenchError("the lower layer was modified")
            return {"rm": dt}
        self.each("rm -rf usr/share", fn, metrics=("rm",))

    def wl_tarc(self):
        expect = os.path.getsize(self.rootfs_tar)

        def fn(b):
            with self.mount(b, self.rootfs_layers) as m:
                t0 = time.perf_counter()
                p = subprocess.Popen(self.user_cmd(["tar", "-C", m.mnt, "-cf", "-", "."]),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.user_env())
                total = 0
                while True:
                    chunk = p.stdout.read(MiB)
                    if not chunk:
                        break
                    total += len(chunk)
                err = p.stderr.read()
                rc = p.wait()
                dt = time.perf_counter() - t0
                if rc != 0:
                    raise BenchError(f"tar exit {rc}: {err.decode(errors='replace').strip()[-400:]}")
                if total < expect * 0.99:
                    raise BenchError(f"tar wrote {total} bytes, expected about {expect}")
            return {"tarc": dt}
        self.each("tar c of the mount", fn, metrics=("tarc",))

    def wl_depth(self):
        n = self.stat_names

        def fn(b):
            vals = {}
            for depth in self.depths:
                # Top first: depth-1 ... 1, then the bottom layer 000 holding the targets.
                lowers = [self.depth_layers[i] for i in range(depth - 1, 0, -1)] + [self.depth_layers[0]]
                with self.mount(b, lowers) as m:
                    r = self.child(m, "stat", m.path("d"), "t", n)
                vals[f"stat_first_{depth}"] = r["first_us"]
                vals[f"stat_warm_{depth}"] = r["warm_us"]
            return vals
        metrics = [f"stat_{k}_{d}" for d in self.depths for k in ("first", "warm")]
        self.each("stat through N layers", fn, reps=self.reps + (self.reps + 1) // 2, metrics=metrics)

    def wl_rss(self):
        def fn(b):
            vals = {}
            for tag, lowers, expect in (("rootfs", self.rootfs_layers, self.rootfs_entries),
                                        ("100k", [self.tree100k], 100102)):
                with self.mount(b, lowers, cold=True) as m:
                    for walk in (1, 2):
                        dt, k = self.walk(m, m.mnt)
                        if k != expect:
                            raise BenchError(f"walk of {tag} saw {k} entries, expected {expect}")
                        vals[f"walk_{tag}_{walk}"] = dt
                        if b.is_fuse:
                            hwm, _, anon = m.rss_kib()
                            vals[f"rss_{tag}_{walk}"] = hwm / 1024
                            # The daemon's own memory: VmHWM also counts the pages of
                            # its executable it has mapped, which every daemon shares.
                            vals[f"anon_{tag}_{walk}"] = anon / 1024
            return vals
        metrics = [f"{k}_{t}_{w}" for k in ("walk", "rss", "anon") for t in ("rootfs", "100k") for w in (1, 2)]
        self.each("daemon RSS over two walks", fn, reps=1 if not self.args.rss_reps else self.args.rss_reps,
                  metrics=metrics)

    def run(self):
        for w in self.workloads:
            getattr(self, "wl_" + w)()

    # --- report -------------------------------------------------------------------------------------
    def summary(self, metric, key):
        r = self.results.get(metric, {}).get(key)
        if not r:
            return None
        s = r["samples"]
        if not s:
            return {"error": r["errors"][0] if r["errors"] else "no result"}
        return {"median": statistics.median(s), "min": min(s), "max": max(s), "n": len(s),
                "errors": r["errors"]}


def parse_user(spec):
    """"UID:GID" (or "UID": the same GID) of an ordinary user, as numbers."""
    try:
        parts = [int(x) for x in spec.split(":")]
    except ValueError:
        raise SystemExit(f"--user {spec!r}: want UID:GID (numbers)")
    uid, gid = (parts + parts[:1])[:2]
    if uid == 0 or gid == 0 or len(parts) > 2:
        raise SystemExit(f"--user {spec!r}: want a non-root UID:GID")
    return uid, gid


def fmt_num(v):
    if v is None:
        return "—"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def git_rev():
    p = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"], stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, text=True)
    return p.stdout.strip() or "?"


def machine_description(path):
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) / 1024 / 1024
    fs = "?"
    best = ""
    for mp, _, t in mountinfo():
        if (path + "/").startswith(mp.rstrip("/") + "/") and len(mp) >= len(best):
            best, fs = mp, t
    distro = "?"
    try:
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                distro = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {distro}, "
            f"Linux {platform.release()}, layers on {fs}")


# Rows of the table: (metric, label, unit, kind, target)
# kind "time": lower is better, ratio = backend/kernel; "thr": higher is better,
# ratio = backend/kernel throughput; "abs": no kernel ratio.
def table_rows(b):
    big = f"{b.big_mib} MiB" if b.big_mib < 1024 else "1 GiB"
    rows = [
        ("find_cold", f"find+stat, cold ({b.rootfs_entries:,} entries)", "s", "time", 1.5),
        ("find_second", "find+stat, second walk of a fresh mount", "s", "time", 1.0),
        ("find_warm", "find+stat, warm", "s", "time", 1.0),
        ("du", "du -s, cold", "s", "time", 1.2),
        ("readdir_first", "readdir 10k entries, first after mount", "s", "time", 1.3),
        ("readdir_warm", "readdir 10k entries, warm", "s", "time", 1.3),
        ("seqread_cold", f"sequential read {big}, cold", "MiB/s", "thr", 0.95),
        ("seqread_warm", f"sequential read {big}, warm", "MiB/s", "thr", 0.95),
        ("randread", "4k random read (fio, psync, FUSE cache cold)", "IOPS", "thr", 0.8),
        ("randread_warm", "4k random read (fio, psync, file read through the mount first)", "IOPS", "thr",
         None),
        ("pagecache", f"page cache: 10 mounts read one {b.copyup_mib} MiB lower file", "MiB", "time",
         1.1),
        ("copyup", f"copy-up: append 1 byte to a {b.copyup_mib} MiB lower file", "s", "time", 1.0),
        ("untar", "untar the 206 MB rootfs into the mount", "s", "time", 3.0),
        ("write", f"write {b.write_mib} MiB + fsync", "s", "time", 1.1),
        ("rm", "rm -rf usr/share (lower tree)", "s", "time", 1.5),
        ("tarc", "tar c of the whole mount", "s", "time", 1.2),
    ]
    for n in b.walkers:
        what = "1 find+stat walk" if n == 1 else f"{n} find+stat walks at once"
        rows.append((f"pwalk_first_{n}", f"{what}, fresh mount, layers in the host's caches", "s", "time",
                     2.0 if n == 16 else None))
        rows.append((f"pwalk_warm_{n}", f"{what}, again on that mount", "s", "time", None))
    for d in b.depths:
        rows.append((f"stat_first_{d}", f"stat, first lookup, {d} layer{'s' if d > 1 else ''}", "µs/op",
                     "time", 2.0 if d == 1 else None))
    for d in b.depths:
        rows.append((f"stat_warm_{d}", f"stat, warm, {d} layer{'s' if d > 1 else ''}", "µs/op", "time", None))
    if b.rootless:
        rows = [(m, l, u, k, ROOTLESS_TARGETS.get(m)) for m, l, u, k, _ in rows]
    return rows


def bname(b, key):
    """A backend's name in the tables; rootless daemons say so."""
    n = BACKEND_NAMES[key]
    return n + ", rootless" if b.rootless and key != "kernel" else n


def versus_fo(lm, fms, kind):
    """Is layerfs faster than every fuse-overlayfs? Within 5% of one counts as a tie."""
    if lm is None:
        return "FAIL"
    if not fms or any(x is None for x in fms):
        return "n/a"
    if kind == "time":
        rel = [lm / x for x in fms]  # < 1: layerfs faster
    else:
        rel = [x / lm for x in fms]
    worst = max(rel)
    if worst < 0.95:
        return "yes"
    if worst <= 1.05:
        return "tie (±5%)"
    return "**no**"


def build_report(b):
    keys = [x.key for x in b.backends]
    others = [k for k in keys if k != "kernel"]
    fo = [k for k in keys if k in ("fo1", "fo2")]
    lines = []
    verdicts = []

    def med(metric, key):
        s = b.summary(metric, key)
        return s.get("median") if s else None

    def cell_ratio(metric, key, kind):
        s = b.summary(metric, key)
        if s is None:
            return "—"
        if "error" in s:
            return "FAIL"
        k = med(metric, "kernel")
        if not k:
            return fmt_num(s["median"])
        return f"{s['median'] / k:.2f}x"

    head = ["Workload"] + [("kernel" if k == "kernel" else bname(b, k)) for k in keys]
    if "layerfs" in keys:
        head += ["target (layerfs)", "met", "faster than fuse-overlayfs"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for metric, label, unit, kind, target in table_rows(b):
        if metric not in b.results:
            continue
        arrow = "↓" if kind == "time" else "↑"
        row = [f"{label} ({unit} {arrow})"]
        for k in keys:
            if k == "kernel":
                s = b.summary(metric, k)
                row.append("FAIL" if s and "error" in s else ("1.00x" if s else "—"))
            else:
                row.append(cell_ratio(metric, k, kind))
        if "layerfs" in keys:
            lm, km = med(metric, "layerfs"), med(metric, "kernel")
            if target is None:
                row.append("—")
                row.append("")
            else:
                row.append(("≤ " if kind == "time" else "≥ ") + f"{target}x")
                if lm is None or km is None:
                    row.append("n/a" if lm is not None else "FAIL")
                else:
                    ok = (lm / km <= target) if kind == "time" else (lm / km >= target)
                    row.append("met" if ok else "**missed**")
                    verdicts.append((label, ok))
            row.append(versus_fo(lm, [med(metric, k) for k in fo], kind))
        lines.append("| " + " | ".join(row) + " |")

    # Own-depth ratios: 100-layer lookup cost over the 1-layer cost of the same backend.
    extra = []
    if "stat_first_1" in b.results and "stat_first_100" in b.results:
        for kind in ("first", "warm"):
            row = [f"stat {kind}: 100 layers / 1 layer (same backend)"]
            for k in keys:
                a, c = med(f"stat_{kind}_100", k), med(f"stat_{kind}_1", k)
                row.append(f"{a / c:.2f}x" if a and c else "FAIL")
            if "layerfs" in keys and b.rootless:
                row += ["—", "", ""]
            elif "layerfs" in keys:
                a, c = med(f"stat_{kind}_100", "layerfs"), med(f"stat_{kind}_1", "layerfs")
                row.append("≤ 1.5x")
                if a and c:
                    ok = a / c <= 1.5
                    row.append("met" if ok else "**missed**")
                    verdicts.append((f"stat {kind} 100/1 layers", ok))
                else:
                    row.append("FAIL")
                row.append("")
            extra.append("| " + " | ".join(row) + " |")
    lines += extra

    # RSS (absolute, MiB): VmHWM after walk 1 and walk 2.
    def smaller_than_fo(metric, mine):
        """The last column of a memory row: is layerfs's `mine` below every fuse-overlayfs?"""
        others = [med(metric, k) for k in fo]
        if mine is None:
            return "FAIL"
        if not fo or any(x is None for x in others):
            return "n/a"
        return "yes (smaller)" if all(mine < x for x in others) else "**no**"

    mem_trees = (("rootfs", f"rootfs ({b.rootfs_entries:,} entries)"), ("100k", "100,000-entry tree"))
    if "rss_rootfs_1" in b.results:
        for tag, label in mem_trees:
            row = [f"daemon peak RSS, {label}: walk 1 → walk 2 (MiB)"]
            for k in keys:
                if k == "kernel":
                    row.append("—")
                    continue
                r1, r2 = med(f"rss_{tag}_1", k), med(f"rss_{tag}_2", k)
                row.append(f"{r1:.1f} → {r2:.1f}" if r1 is not None and r2 is not None else "FAIL")
            if "layerfs" in keys:
                r1, r2 = med(f"rss_{tag}_1", "layerfs"), med(f"rss_{tag}_2", "layerfs")
                if b.rootless:
                    row += ["—", ""]
                elif tag == "100k":
                    row.append("flat, < 64 MiB")
                    ok = r1 is not None and r2 is not None and r2 <= r1 * 1.1 + 1 and r2 < 64
                else:
                    row.append("flat")
                    ok = r1 is not None and r2 is not None and r2 <= r1 * 1.1 + 1
                if not b.rootless:
                    row.append("met" if ok else "**missed**")
                    verdicts.append((f"RSS {tag}", ok))
                row.append(smaller_than_fo(f"rss_{tag}_2", r2))
            lines.append("| " + " | ".join(row) + " |")
        # Private memory (RssAnon) after walk 2: what each further daemon costs; the
        # executable's mapped pages in VmHWM are shared by every daemon of the machine.
        for tag, label in mem_trees:
            if f"anon_{tag}_2" not in b.results:
                continue
            row = [f"daemon private memory (RssAnon), {label}, after walk 2 (MiB)"]
            for k in keys:
                a = med(f"anon_{tag}_2", k) if k != "kernel" else None
                row.append("—" if k == "kernel" else (f"{a:.1f}" if a is not None else "FAIL"))
            if "layerfs" in keys:
                row += ["—", "", smaller_than_fo(f"anon_{tag}_2", med(f"anon_{tag}_2", "layerfs"))]
            lines.append("| " + " | ".join(row) + " |")
        for tag in ("rootfs", "100k"):
            if f"walk_{tag}_1" in b.results:
                for w, wl in ((1, "first"), (2, "second")):
                    row = [f"walk of the {tag} tree during the RSS test, {wl} (s ↓)"]
                    for k in keys:
                        row.append(cell_ratio(f"walk_{tag}_{w}", k, "time"))
                    if "layerfs" in keys:
                        row += ["—", "", ""]
                    lines.append("| " + " | ".join(row) + " |")

    ratio_table = "\n".join(lines)

    # Absolute figures.
    abs_lines = ["| Workload | " + " | ".join(bname(b, k) for k in keys) + " |",
                 "|" + "---|" * (len(keys) + 1)]
    allrows = table_rows(b) + [(f"rss_{t}_{w}", f"daemon peak RSS {t}, walk {w}", "MiB", "abs", None)
                               for t in ("rootfs", "100k") for w in (1, 2)] \
        + [(f"anon_{t}_2", f"daemon RssAnon {t}, after walk 2", "MiB", "abs", None)
           for t in ("rootfs", "100k")] \
        + [(f"walk_{t}_{w}", f"walk {t}, {'first' if w == 1 else 'second'} (RSS test)", "s", "time", None)
           for t in ("rootfs", "100k") for w in (1, 2)]
    for metric, label, unit, kind, target in allrows:
        if metric not in b.results:
            continue
        row = [f"{label} ({unit})"]
        for k in keys:
            s = b.summary(metric, k)
            if s is None:
                row.append("—")
            elif "error" in s:
                row.append("FAIL")
            else:
                row.append(f"{fmt_num(s['median'])} ({fmt_num(s['min'])}–{fmt_num(s['max'])})")
        abs_lines.append("| " + " | ".join(row) + " |")
    abs_table = "\n".join(abs_lines)

    grouped = {}
    for k, title, rnd, msg in b.failures:
        grouped.setdefault((k, title, msg), []).append(rnd)
    failures = [f"- {bname(b, k)}, {title} (round {', '.join(map(str, r))}): {msg}"
                for (k, title, msg), r in grouped.items()]
    return ratio_table, abs_table, failures, verdicts


def rootless_note(b):
    """How the rootless figures were taken, and the mount options each backend got."""
    uid, gid = b.user
    fuse = [x for x in b.backends if x.key != "kernel"]
    perms = []
    for x in fuse:
        o = b.mount_options.get(x.key)
        if o:
            perms.append(f"{BACKEND_NAMES[x.key]} `{o}`")
    lf = b.mount_options.get("layerfs", "")
    why = ""
    if "layerfs" in b.mount_options:
        why = (" layerfs ran with `default_permissions` (the kernel checks permissions): the plain layer "
               "dirs carry no `user.containers.override_stat` record." if "default_permissions" in lf else
               " layerfs ran without `default_permissions` (its layers carry `user.containers.override_stat`: "
               "the daemon answers every permission check).")
    ring = (" Root left the fuse module's `enable_uring` on for the run (`--uring-left-on`): an ordinary "
            "user's layerfs mount then takes FUSE over io_uring (a column with `-o uring=off` reads "
            "`/dev/fuse`); fuse-overlayfs reads `/dev/fuse` either way." if b.args.uring_left_on else "")
    return (f"Rootless: the FUSE daemons ran as uid {uid}, gid {gid} (`setpriv --reuid={uid} --regid={gid} "
            f"--clear-groups`) and mounted through `fusermount3`, so no FUSE passthrough (the kernel lets only "
            f"CAP_SYS_ADMIN register backing files). The kernel overlay was mounted by root; every workload "
            f"command ran as uid {uid} for every backend, the kernel's included (a user cannot enter another "
            f"user's FUSE mount; the same commands with the same credentials everywhere, so `tar x` does not "
            f"chown). All backends mounted user-owned copies of the layer sets; `untar` extracts the rootfs "
            f"tar without its device nodes ({b.untar_entries:,} entries). Root dropped the caches between "
            f"unmount and mount for the cold rows. Mount options (type, super options): "
            + "; ".join(perms) + "." + why + ring)


def render(b, ratio_table, abs_table, failures, verdicts):
    i = b.info
    out = []
    out.append(f"Measured {i['date']} on {i['machine']}; 5-minute load average "
               f"{i.get('load_start', '?')} at the start (1-minute {i.get('load_start_1min', '?')}), "
               f"{i.get('load_end', '?')} at the end "
               f"(other work shares the machine; the benchmark ran at nice {i.get('nice', 0)}).")
    out.append("")
    out.append(f"`{i['command']}` — layerfs {i['layerfs_commit']}"
               + (f" with `-o {i['layerfs_opts']}`" if i['layerfs_opts'] else " (default options)")
               + (f", layerfs (B) with `-o {i['layerfs_b_opts']}`" if "layerfs-b" in i["versions"] else "")
               + (f" built as `{i['layerfs_b_bin']}`" if "layerfs-b" in i["versions"] and i.get("layerfs_b_bin")
                  else "")
               + "; interleaved rounds: "
               + ", ".join(f"{t} {n}" for t, n in b.rounds.items()) + ".")
    out.append("Versions: " + "; ".join(f"{BACKEND_NAMES[k]}: {v}" for k, v in i["versions"].items()) + ".")
    if b.rootless:
        out.append("")
        out.append(rootless_note(b))
    out.append("")
    out.append("Ratios of medians to the kernel overlay in the same run. ↓ rows are times "
               "(below 1.00x is faster than the kernel); ↑ rows are throughputs (above 1.00x "
               "is faster than the kernel).")
    out.append("")
    out.append(ratio_table)
    out.append("")
    if verdicts:
        met = [l for l, ok in verdicts if ok]
        missed = [l for l, ok in verdicts if not ok]
        out.append(f"layerfs targets met: {len(met)} of {len(verdicts)}"
                   + (f"; missed: {', '.join(missed)}." if missed else "."))
        out.append("")
    out.append("<details><summary>Absolute figures: median (min–max)</summary>")
    out.append("")
    out.append(abs_table)
    out.append("")
    out.append("</details>")
    if failures:
        out.append("")
        out.append("Failures:")
        out.extend(failures)
    return "\n".join(out)


def update_readme(text, tag):
    path = os.path.join(REPO, "README.md")
    mark = "bench" + (":" + tag if tag else "")
    start, end = f"<!-- {mark}:start -->", f"<!-- {mark}:end -->"
    src = open(path).read()
    if start not in src or end not in src:
        src = src.rstrip("\n") + f"\n\n{start}\n{end}\n"
    a = src.index(start) + len(start)
    z = src.index(end)
    src = src[:a] + "\n" + text.strip() + "\n" + src[z:]
    with open(path + ".tmp", "w") as f:
        f.write(src)
    os.rename(path + ".tmp", path)
    log(f"updated {path} ({start})")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(prog="benchmark/run mount", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few minutes: 2 rounds, smaller files")
    ap.add_argument("--reps", type=int, help="interleaved rounds per figure (default 5, quick 2)")
    ap.add_argument("--rss-reps", type=int, default=0, help="rounds of the RSS test (default 1)")
    ap.add_argument("--backends", default="kernel,layerfs,fo2,fo1",
                    help="comma list of kernel, layerfs, layerfs-b (layerfs with --layerfs-b-opts), "
                         "fo2 (fuse-overlayfs 2.x), fo1 (1.10)")
    ap.add_argument("--workloads", default="",
                    help="comma list of " + ", ".join(ALL_WORKLOADS) + " (default: all but randwarm; "
                         "all with --rootless)")
    ap.add_argument("--walkers", default="1,16",
                    help="walks at once in the pwalk workload, a comma list (default 1,16)")
    ap.add_argument("--layerfs-opts", default="", help="extra -o options for layerfs, e.g. passthrough=on")
    ap.add_argument("--layerfs-b-opts", default="",
                    help="-o options of the second layerfs backend (layerfs-b), to compare two settings in one run")
    ap.add_argument("--layerfs-bin", help="use this layerfs binary instead of building one")
    ap.add_argument("--layerfs-b-bin", help="binary of the second layerfs backend (layerfs-b), to compare "
                    "two builds (e.g. before and after a change) in one run; default: the same as layerfs")
    ap.add_argument("--fo2-bin", help="fuse-overlayfs 2.x binary (default ~/.cargo/bin/fuse-overlayfs)")
    ap.add_argument("--no-fo2", action="store_true", help="skip fuse-overlayfs 2.x (no cargo install)")
    ap.add_argument("--fo1-bin", help="fuse-overlayfs 1.10 binary (default /usr/bin/fuse-overlayfs)")
    ap.add_argument("--offline", action="store_true",
                    help="install and build nothing (a machine without registries): needs --layerfs-bin "
                         "and LAYERFS_TEST_ROOTFS; fuse-overlayfs only where given or installed")
    ap.add_argument("--make-skeleton", metavar="OUT",
                    help="write the test rootfs as a tar.gz of its metadata (every file sparse, of its "
                         "own size) to carry to such a machine, and exit")
    ap.add_argument("--rootless", action="store_true",
                    help="run the FUSE daemons (layerfs, fuse-overlayfs) as an ordinary user, mounting "
                         "through fusermount3 (no passthrough), and every workload as that user; the "
                         "kernel overlay is mounted by root; layers are user-owned copies")
    ap.add_argument("--uring-left-on", action="store_true",
                    help="with --rootless: the fuse module's enable_uring on for the run (restored "
                         "after), as root may leave it; an ordinary user's layerfs mounts then take "
                         "FUSE over io_uring")
    ap.add_argument("--user", default="65534:65534",
                    help="UID:GID for --rootless (default 65534:65534, nobody)")
    ap.add_argument("--workdir", default="/var/tmp/layerfs-bench", help="all data lives here (reused)")
    ap.add_argument("--nice", type=int, default=-10,
                    help="CPU priority change for the benchmark and the daemons it starts (default -10: "
                         "builds sharing the machine disturb the figures less; 0 leaves it)")
    ap.add_argument("--json", help="write all samples and the table to this file")
    ap.add_argument("--readme", action="store_true", help="put the table into README.md between the bench markers")
    ap.add_argument("--readme-tag", default="", help="use the markers <!-- bench:TAG:start --> and <!-- bench:TAG:end -->")
    args = ap.parse_args()
    if args.make_skeleton:
        make_skeleton(os.environ.get("LAYERFS_TEST_ROOTFS", "/var/cache/layerfs-test/bookworm"),
                      args.make_skeleton)
        return

    def on_signal(sig, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    b = Bench(args)
    t_start = time.time()
    if args.nice:
        os.nice(args.nice)
    try:
        b.setup()
        t_bench = time.time()
        b.run()
        elapsed = time.time() - t_bench
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        b.cleanup()
        sys.exit(130)
    finally:
        b.cleanup()
    b.info["seconds"] = round(elapsed)
    b.info["load_end"] = round(os.getloadavg()[1], 1)
    b.info["seconds_with_setup"] = round(time.time() - t_start)
    ratio_table, abs_table, failures, verdicts = build_report(b)
    text = render(b, ratio_table, abs_table, failures, verdicts)
    text += f"\n\nBenchmark time: {elapsed / 60:.1f} min (plus {(t_bench - t_start) / 60:.1f} min setup).\n"
    print(text)
    if args.json:
        res = {m: {k: {"samples": r["samples"], "errors": r["errors"], **(b.summary(m, k) or {})}
                   for k, r in per.items()} for m, per in b.results.items()}
        with open(args.json, "w") as f:
            json.dump({"info": b.info, "results": res, "table": ratio_table, "absolute": abs_table,
                       "failures": failures, "verdicts": verdicts}, f, indent=1)
    if args.readme:
        update_readme(text, args.readme_tag)


if __name__ == "__main__":
    main()
