#!/usr/bin/env python3
"""How fast a copy-up can be when the copy must be on disk before it shows.

Copies one 256 MiB file (the benchmark's copy-up row) in three ways, in interleaved
rounds, on the filesystem of the directory given (default /var/tmp):
  copy only               what fuse-overlayfs does (nothing waits for the disk)
  copy, then fsync        what the kernel's overlayfs does
  copy, writeback behind  what layerfs does: each 4 MiB chunk's writeback starts as soon
                          as it is copied (sync_file_range WRITE), then one fsync
and times writing the same bytes to disk alone (fsync of a copy already in the page
cache), the floor for any copy that is durable when it returns.
"""
import ctypes
import os
import statistics
import sys
import time

MIB = 1 << 20
SIZE = int(os.environ.get("SIZE_MIB", "256")) * MIB
CHUNK = 4 * MIB
ROUNDS = int(os.environ.get("ROUNDS", "7"))
SYNC_FILE_RANGE_WRITE = 2
libc = ctypes.CDLL(None, use_errno=True)
libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


def copy(src, dst, chunk, writeback):
    s = os.open(src, os.O_RDONLY)
    d = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    pos = 0
    while pos < SIZE:
        n = os.copy_file_range(s, d, min(chunk, SIZE - pos), pos, pos)
        if writeback and libc.sync_file_range(d, pos, n, SYNC_FILE_RANGE_WRITE) != 0:
            sys.exit(f"sync_file_range: {os.strerror(ctypes.get_errno())}")
        pos += n
    os.close(s)
    return d


def run(src, dst, how):
    t0 = time.monotonic()
    if how == "copy only":
        d = copy(src, dst, SIZE, False)
    elif how == "copy, then fsync":
        d = copy(src, dst, SIZE, False)
        os.fsync(d)
    elif how == "copy, writeback behind":
        d = copy(src, dst, CHUNK, True)
        os.fsync(d)
    else:  # the disk alone: the copy is made first, untimed
        d = copy(src, dst, SIZE, False)
        t0 = time.monotonic()
        os.fsync(d)
    t = time.monotonic() - t0
    os.close(d)
    os.unlink(dst)
    return t


def main():
    where = sys.argv[1] if len(sys.argv) > 1 else "/var/tmp"
    src = os.path.join(where, f"durable-copy-src.{os.getpid()}")
    dst = src + ".copy"
    try:
        with open(src, "wb") as f:
            for _ in range(SIZE // MIB):
                f.write(os.urandom(MIB))
            f.flush()
            os.fsync(f.fileno())
        ways = ["copy only", "copy, then fsync", "copy, writeback behind", "disk write alone"]
        times = {w: [] for w in ways}
        for _ in range(ROUNDS):
            for w in ways:
                times[w].append(run(src, dst, w))
        base = statistics.median(times["copy, then fsync"])
        print(f"{SIZE // MIB} MiB on {where}, median of {ROUNDS} interleaved rounds:")
        for w in ways:
            m = statistics.median(times[w])
            print(f"  {w:24} {m:.3f} s  {m / base:.2f}x copy-then-fsync")
    finally:
        for p in (src, dst):
            if os.path.exists(p):
                os.unlink(p)


if __name__ == "__main__":
    main()
