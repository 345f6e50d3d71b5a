//! The store lock: an exclusive `flock` on `ROOT/lock` held by every command that changes
//! the store, so concurrent commands never interleave their changes. Readers take no
//! lock: every record they read is replaced atomically.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;

use crate::error::{Error, Result};
use crate::store::layout::Layout;
use crate::sys::{self, Errno};

/// Held while alive; dropping it releases the lock.
#[derive(Debug)]
pub(crate) struct StoreLock {
    _file: File,
}

fn open(layout: &Layout) -> Result<File> {
    let p = layout.lock_file();
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&p)
        .map_err(|e| Error::io(format!("opening {}", p.display()), e))
}

impl StoreLock {
    /// Wait for the lock; `on_wait` is called once if another command holds it.
    pub(crate) fn acquire(layout: &Layout, on_wait: &dyn Fn()) -> Result<StoreLock> {
        let f = open(layout)?;
        match sys::flock_exclusive(f.as_fd(), false) {
            Ok(()) => return Ok(StoreLock { _file: f }),
            Err(Errno::WOULDBLOCK) => on_wait(),
            Err(e) => {
                return Err(
                    Error::from(e).context(format!("locking {}", layout.lock_file().display()))
                );
            }
        }
        loop {
            match sys::flock_exclusive(f.as_fd(), true) {
                Ok(()) => return Ok(StoreLock { _file: f }),
                Err(Errno::INTR) => continue,
                Err(e) => {
                    return Err(
                        Error::from(e).context(format!("locking {}", layout.lock_file().display()))
                    );
                }
            }
        }
    }

    /// The lock if nobody holds it, else `None`.
    pub(crate) fn try_acquire(layout: &Layout) -> Result<Option<StoreLock>> {
        let f = open(layout)?;
        match sys::flock_exclusive(f.as_fd(), false) {
            Ok(()) => Ok(Some(StoreLock { _file: f })),
            Err(Errno::WOULDBLOCK) => Ok(None),
            Err(e) => {
                Err(Error::from(e).context(format!("locking {}", layout.lock_file().display())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_between_holders() {
        let t = tempfile::tempdir().unwrap();
        let l = Layout::new(t.path());
        let a = StoreLock::try_acquire(&l).unwrap();
        assert!(a.is_some());
        assert!(StoreLock::try_acquire(&l).unwrap().is_none());
        drop(a);
        assert!(StoreLock::try_acquire(&l).unwrap().is_some());
    }
}
