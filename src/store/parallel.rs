//! A bounded set of worker threads over a list of jobs, as a pull fetches layers and a
//! push uploads blobs: jobs are taken in order, several at once, and the first failure
//! stops the rest.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::error::{Error, Result};

/// Most threads one call runs.
const MAX_WORKERS: usize = 16;

/// Run `work(i, cancel)` for every `i` in `0..jobs` on up to `parallel` threads (at least
/// one, at most 16), jobs taken in order. The first error stops the others: no job starts
/// after it, and `cancel` is set so that a job under way can give up early. Returns the
/// results in job order, or the first error.
pub(crate) fn run_bounded<T, F>(jobs: usize, parallel: usize, work: F) -> Result<Vec<T>>
where
    T: Send,
    F: Fn(usize, &AtomicBool) -> Result<T> + Sync,
{
    let next = AtomicUsize::new(0);
    let cancel = AtomicBool::new(false);
    let results: Mutex<Vec<Option<T>>> = Mutex::new((0..jobs).map(|_| None).collect());
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let workers = parallel.clamp(1, MAX_WORKERS).min(jobs.max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    if cancel.load(Ordering::Relaxed) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= jobs {
                        return;
                    }
                    match work(i, &cancel) {
                        Ok(r) => results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r),
                        Err(e) => {
                            let mut first = first_error.lock().unwrap_or_else(|e| e.into_inner());
                            if first.is_none() {
                                *first = Some(e);
                            }
                            cancel.store(true, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    // Without an error every job ran (a panicking worker panics the scope).
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.ok_or_else(|| Error::new("a job of a parallel run did not finish")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_in_order() {
        let out = run_bounded(50, 4, |i, _| Ok(i * 2)).unwrap();
        assert_eq!(out, (0..50).map(|i| i * 2).collect::<Vec<_>>());
        assert!(run_bounded(0, 4, |i, _| Ok(i)).unwrap().is_empty());
    }

    #[test]
    fn first_error_stops_the_rest() {
        let ran = AtomicUsize::new(0);
        let err = run_bounded(1000, 2, |i, cancel| {
            ran.fetch_add(1, Ordering::Relaxed);
            if i == 3 {
                return Err(Error::new("job 3 failed"));
            }
            // A job under way sees the cancel flag.
            while i == 4 && !cancel.load(Ordering::Relaxed) {
                std::thread::yield_now();
            }
            Ok(i)
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "job 3 failed");
        assert!(ran.load(Ordering::Relaxed) < 1000);
    }
}
