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

/// Write back every dirty page of the filesystem holding `fd`.
pub fn syncfs(fd: BorrowedFd<'_>) -> SysResult<()> {
    rustix::fs::syncfs(fd)
}
