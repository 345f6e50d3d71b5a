//! The scheduler's side of a serving thread: its CPU, its policy (`SCHED_IDLE` or
//! `SCHED_OTHER`), whether it may leave `SCHED_IDLE` again, and how long it has waited
//! for a CPU.

use std::io;
use std::os::unix::fs::FileExt;

/// Put the calling thread in `SCHED_IDLE` (or back in `SCHED_OTHER`).
///
/// A ring thread waits and answers in `SCHED_IDLE`: the kernel then counts its CPU as
/// idle when the answer wakes the caller (`sched_idle_cpu`), and leaves the caller on
/// that CPU instead of moving it to another idle one — whose next request would go to
/// that CPU's queue and move it back, a cross-CPU wake-up per request.
pub fn set_thread_sched_idle(idle: bool) -> io::Result<()> {
    let policy = if idle {
        libc::SCHED_IDLE
    } else {
        libc::SCHED_OTHER
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a live sched_param.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether a thread put in `SCHED_IDLE` may go back to `SCHED_OTHER`: the kernel treats
/// that as raising the thread to its nice value, allowed with `CAP_SYS_NICE` (root here)
/// or an `RLIMIT_NICE` of at least 20 - nice (0 for ordinary users unless root gave
/// more, e.g. pam_limits' `nice`).
pub fn sched_idle_reversible() -> bool {
    if super::is_privileged() {
        return true;
    }
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nice).current;
    let nice = rustix::process::getpriority_process(None).unwrap_or(0);
    may_raise_to(limit, nice)
}

/// The kernel's `can_nice`: nice `n` is allowed under an `RLIMIT_NICE` of at least 20 - n.
fn may_raise_to(limit: Option<u64>, nice: i32) -> bool {
    limit.is_none_or(|l| l as i64 >= 20 - i64::from(nice))
}

/// Run the calling thread on `cpu` only.
pub fn pin_thread_to(cpu: usize) -> io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).map_err(io::Error::from)
}

/// The CPU the calling thread runs on now.
pub fn current_cpu() -> usize {
    rustix::thread::sched_getcpu()
}

/// The CPUs the calling thread may run on.
pub fn thread_cpus() -> io::Result<rustix::thread::CpuSet> {
    rustix::thread::sched_getaffinity(None).map_err(io::Error::from)
}

/// Run the calling thread on the CPUs of `cpus` but `cpu`; `false` (and nothing
/// changed) where that leaves none.
pub fn keep_thread_off(cpus: &rustix::thread::CpuSet, cpu: usize) -> io::Result<bool> {
    let mut set = *cpus;
    set.unset(cpu);
    if set.count() == 0 {
        return Ok(false);
    }
    rustix::thread::sched_setaffinity(None, &set).map_err(io::Error::from)?;
    Ok(true)
}

/// The time the thread that opened it has spent runnable but waiting for a CPU, from
/// `/proc/thread-self/schedstat` (its second field, in nanoseconds): one `pread` a look.
pub struct RunDelay(std::fs::File);

impl RunDelay {
    /// For the calling thread (the file names the thread that opens it).
    pub fn of_this_thread() -> io::Result<RunDelay> {
        let f = std::fs::File::open("/proc/thread-self/schedstat")?;
        let r = RunDelay(f);
        r.nanos()?;
        Ok(r)
    }

    /// Nanoseconds waited so far.
    pub fn nanos(&self) -> io::Result<u64> {
        let mut buf = [0u8; 96];
        let n = self.0.read_at(&mut buf, 0)?;
        parse_run_delay(&buf[..n]).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))
    }
}

/// `schedstat`'s "time on CPU, time waiting, time slices" → time waiting.
fn parse_run_delay(b: &[u8]) -> Option<u64> {
    std::str::from_utf8(b)
        .ok()?
        .split_ascii_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaving_the_idle_class_needs_the_nice_limit_the_kernel_asks() {
        assert!(!may_raise_to(Some(0), 0), "the usual user limit");
        assert!(may_raise_to(Some(20), 0));
        assert!(!may_raise_to(Some(20), -10), "a daemon started at nice -10");
        assert!(may_raise_to(Some(30), -10));
        assert!(may_raise_to(None, -20), "unlimited");
    }

    #[test]
    fn run_delay_is_schedstats_second_field() {
        assert_eq!(parse_run_delay(b"1534004 272911 12\n"), Some(272_911));
        assert_eq!(parse_run_delay(b"1534004\n"), None);
        assert_eq!(parse_run_delay(b""), None);
    }

    #[test]
    fn a_thread_that_waits_for_a_busy_cpu_sees_its_run_delay_grow() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU8, Ordering};
        use std::time::{Duration, Instant};
        // Two threads pinned to one CPU, both always runnable: each waits for the other
        // about half the time.
        let cpu = rustix::thread::sched_getcpu();
        // 0 starting, 1 spinning on the CPU, 2 stop.
        let state = Arc::new(AtomicU8::new(0));
        let s = state.clone();
        let spinner = std::thread::spawn(move || {
            pin_thread_to(cpu).unwrap();
            s.store(1, Ordering::Release);
            while s.load(Ordering::Acquire) != 2 {}
        });
        while state.load(Ordering::Acquire) != 1 {
            std::thread::yield_now();
        }
        let waited = std::thread::spawn(move || {
            pin_thread_to(cpu).unwrap();
            let d = RunDelay::of_this_thread().unwrap();
            let before = d.nanos().unwrap();
            let t = Instant::now();
            while t.elapsed() < Duration::from_millis(100) {}
            d.nanos().unwrap() - before
        })
        .join()
        .unwrap();
        state.store(2, Ordering::Release);
        spinner.join().unwrap();
        assert!(waited > 5_000_000, "run delay grew by {waited} ns only");
    }
}
