//! Whole-file locks and filesystem-wide sync (the store's lock and durability).

use super::*;

/// Take an exclusive `flock` on `fd`; with `wait = false`, `Err(WOULDBLOCK)` when another
/// process holds it. The lock goes away with the last fd of the open file description.
pub fn flock_exclusive(fd: BorrowedFd<'_>, wait: bool) -> SysResult<()> {
    let op = if wait {
        rustix::fs::FlockOperation::LockExclusive
    } else {
        rustix::fs::FlockOperation::NonBlockingLockExclusive
    };
    rustix::fs::flock(fd, op)
}

/// Take an `flock` on `fd` (shared or exclusive), trying every millisecond for up to
/// `limit`: `Ok(false)` if another process held it that long, `Err` if it cannot be
/// taken at all (say, a filesystem without `flock`).
pub fn flock_within(
    fd: BorrowedFd<'_>,
    shared: bool,
    limit: std::time::Duration,
) -> SysResult<bool> {
    let op = if shared {
        rustix::fs::FlockOperation::NonBlockingLockShared
    } else {
        rustix::fs::FlockOperation::NonBlockingLockExclusive
    };
    let deadline = std::time::Instant::now() + limit;
    loop {
        match rustix::fs::flock(fd, op) {
            Ok(()) => return Ok(true),
            Err(Errno::WOULDBLOCK) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(Errno::WOULDBLOCK) => return Ok(false),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Write back every dirty page of the filesystem holding `fd`.
pub fn syncfs(fd: BorrowedFd<'_>) -> SysResult<()> {
    rustix::fs::syncfs(fd)
}
