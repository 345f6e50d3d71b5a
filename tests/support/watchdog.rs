//! A watchdog that turns a hang into a failure.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::mounts::{abort_fuse, umount};

/// Turns a hang into a failure: after `secs`, aborts the FUSE connections of the given
/// mounts (so stuck calls return) and marks itself fired.
pub struct Watchdog {
    done: Arc<AtomicBool>,
    fired: Arc<AtomicBool>,
    name: String,
}

impl Watchdog {
    pub fn new(name: &str, secs: u64, mounts: Vec<PathBuf>) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let fired = Arc::new(AtomicBool::new(false));
        let (d, f, n) = (done.clone(), fired.clone(), name.to_string());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < deadline {
                if d.load(Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            f.store(true, Ordering::Release);
            eprintln!("WATCHDOG {n}: still running after {secs} s: aborting {mounts:?}");
            for m in &mounts {
                abort_fuse(m);
            }
            // If even that did not unblock the test, end the process rather than hang.
            std::thread::sleep(Duration::from_secs(60));
            if !d.load(Ordering::Acquire) {
                eprintln!("WATCHDOG {n}: test still stuck 60 s after abort: exiting");
                for m in &mounts {
                    let _ = umount(m, true);
                }
                std::process::exit(124);
            }
        });
        Watchdog {
            done,
            fired,
            name: name.into(),
        }
    }

    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Stop the watchdog; `Err` if it fired.
    pub fn disarm(&self) -> Result<(), String> {
        self.done.store(true, Ordering::Release);
        if self.fired() {
            Err(format!("{}: watchdog fired (deadlock or hang)", self.name))
        } else {
            Ok(())
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
    }
}
