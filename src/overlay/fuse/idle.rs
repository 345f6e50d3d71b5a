//! When a ring thread waits in `SCHED_IDLE`, and when it must not.
//!
//! A ring thread that waits and answers in `SCHED_IDLE` keeps its caller on the CPU: the
//! scheduler counts a CPU whose running task is `SCHED_IDLE` as idle when it places the
//! caller the answer wakes (8–10 µs per first `stat` against 20–30 µs when the caller is
//! moved to the other CPU and back). But the scheduler gives a `SCHED_IDLE` thread next
//! to nothing while other work wants its CPU: with two CPU-bound processes running, a
//! `tar c` of the test rootfs through a mount whose ring threads stayed in `SCHED_IDLE`
//! took 143 s, against 1.7 s over `/dev/fuse` — most of it lost in the yield before each
//! RELEASE, which handed the CPU away for about 27 ms (only a thread in `SCHED_IDLE`
//! yields now). So each ring thread watches how long it waited for a CPU before it could
//! serve (`RunDelay`), and as soon as it waited like a starved thread it serves in normal
//! scheduling for a while — a second, then twice as long each time it finds itself
//! starved again right after going back (up to a minute), since going back costs one
//! starved request.
//!
//! A thread that could not leave `SCHED_IDLE` again (an ordinary user's, without
//! `CAP_SYS_NICE` or a large `RLIMIT_NICE`), or cannot see its own wait, never enters it.

use std::time::{Duration, Instant};

use crate::sys::sched::{self, RunDelay};

/// Looks at the wait at most this often (one `pread`)…
const CHECK_EVERY: Duration = Duration::from_millis(1);
/// …adding it up over windows this long.
const WINDOW: Duration = Duration::from_millis(50);
/// Starved: waited at least this long in all within a window (beside two CPU-bound
/// processes starved requests waited 4–130 ms; a `tar c | cat` alone saw single waits of
/// about a millisecond, when `cat` or the daemon's prefetch threads ran)…
const STARVED_TOTAL: Duration = Duration::from_millis(3);
/// …and this long per request on average (a request's thread normally waits a few
/// microseconds for its caller to go to sleep).
const STARVED_PER_REQUEST: Duration = Duration::from_micros(200);
/// The first stay in normal scheduling, and the longest.
const FIRST_STAY: Duration = Duration::from_secs(1);
const LONGEST_STAY: Duration = Duration::from_secs(64);
/// Starved again within this long after going back: the next stay is twice as long.
const SOON: Duration = Duration::from_secs(10);

/// One ring thread's scheduling policy.
pub struct Scheduling {
    /// `None`: this thread never waits in `SCHED_IDLE` (or could not go back to it).
    delay: Option<RunDelay>,
    /// In normal scheduling until then, after a starved wait; `SCHED_IDLE` otherwise.
    normal_until: Option<Instant>,
    stay: Duration,
    /// When it last went back to `SCHED_IDLE` after a stay.
    back_since: Option<Instant>,
    /// The current window: its start, the wait then, requests since.
    window: Instant,
    waited: u64,
    served: u64,
    checked: Instant,
}

impl Scheduling {
    /// For the calling thread: in `SCHED_IDLE` where it may leave it again and can see
    /// its own wait for a CPU, in normal scheduling otherwise.
    pub fn for_this_thread() -> Scheduling {
        let delay = reversible()
            .then(RunDelay::of_this_thread)
            .and_then(|d| d.map_err(|e| log::debug!("no run delay: {e}")).ok())
            .filter(|_| set(true));
        let now = Instant::now();
        let mut s = Scheduling {
            waited: 0,
            delay,
            normal_until: None,
            stay: FIRST_STAY,
            back_since: None,
            window: now,
            checked: now,
            served: 0,
        };
        s.waited = s.wait_so_far();
        s
    }

    /// Whether the thread waits in `SCHED_IDLE` now.
    pub fn idle(&self) -> bool {
        self.delay.is_some() && self.normal_until.is_none()
    }

    fn wait_so_far(&self) -> u64 {
        self.delay
            .as_ref()
            .and_then(|d| d.nanos().ok())
            .unwrap_or(self.waited)
    }

    /// A request has come (before it is served): leave `SCHED_IDLE` for a while if the
    /// thread waited for a CPU like a starved one, or go back after such a while.
    pub fn request(&mut self) {
        if self.delay.is_none() {
            return;
        }
        self.served += 1;
        let now = Instant::now();
        if let Some(until) = self.normal_until {
            if now >= until {
                self.normal_until = None;
                if !set(true) {
                    self.delay = None;
                    return;
                }
                self.back_since = Some(now);
                let waited = self.wait_so_far();
                self.rebase(now, waited);
            }
            return;
        }
        if now.duration_since(self.checked) < CHECK_EVERY {
            return;
        }
        self.checked = now;
        let waited = self.wait_so_far();
        let total = waited.saturating_sub(self.waited);
        if starved(total, self.served) {
            self.stay = match self.back_since {
                Some(b) if now.duration_since(b) < SOON => (self.stay * 2).min(LONGEST_STAY),
                _ => FIRST_STAY,
            };
            log::debug!(
                "ring thread waited {} µs for a CPU over {} requests: normal scheduling for {:?}",
                total / 1000,
                self.served,
                self.stay
            );
            set(false);
            self.normal_until = Some(now + self.stay);
        } else if now.duration_since(self.window) >= WINDOW {
            self.rebase(now, waited);
        }
    }

    /// A new window from now, when the thread had waited `waited` in all.
    fn rebase(&mut self, now: Instant, waited: u64) {
        self.window = now;
        self.waited = waited;
        self.served = 0;
    }

    /// Before a request that may take long (a copy, a write, a listing): normal
    /// scheduling for it, so that other work on the CPU cannot starve it.
    pub fn long_request(&mut self) {
        if self.idle() {
            set(false);
        }
    }

    /// After such a request: back to where the thread was.
    pub fn long_request_done(&mut self) {
        if self.idle() {
            set(true);
        }
    }
}

/// Whether a wait of `total` nanoseconds over `served` requests is a starved thread's.
fn starved(total: u64, served: u64) -> bool {
    total >= STARVED_TOTAL.as_nanos() as u64
        && total / served.max(1) >= STARVED_PER_REQUEST.as_nanos() as u64
}

/// Set the calling thread's policy; whether it took.
pub fn set(idle: bool) -> bool {
    match sched::set_thread_sched_idle(idle) {
        Ok(()) => true,
        Err(e) => {
            log::debug!("scheduling policy of a FUSE thread: {e}");
            false
        }
    }
}

/// Whether a thread may leave `SCHED_IDLE` again: root may, an ordinary user's thread
/// (`RLIMIT_NICE` 0) may not, and then never enters it.
pub fn reversible() -> bool {
    static REVERSIBLE: std::sync::LazyLock<bool> =
        std::sync::LazyLock::new(sched::sched_idle_reversible);
    *REVERSIBLE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_microseconds_a_request_is_not_starvation() {
        // A window of 50 ms at 100,000 requests a second, each thread woken while its
        // caller was still going to sleep.
        assert!(!starved(5_000 * 3_000, 5_000));
        // Two requests that each waited 1.5 ms for a CPU-bound process to yield.
        assert!(starved(3_000_000, 2));
        assert!(starved(50 * 200_000, 50));
        // A single wait of a millisecond.
        assert!(!starved(1_100_000, 1));
    }
}
