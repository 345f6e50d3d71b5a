//! The report of a reliability suite: named checks, one summary line.

use std::fs;
use std::io::Write;

/// Named checks of one suite; prints one summary line (and appends it to
/// `$LAYERFS_REL_REPORT` when set, for `scripts/reliability`) and fails the test if
/// any check failed.
pub struct Report {
    suite: String,
    test: String,
    cases: u64,
    failures: Vec<String>,
}

impl Report {
    pub fn new(suite: &str, test: &str) -> Self {
        Report {
            suite: suite.into(),
            test: test.into(),
            cases: 0,
            failures: Vec::new(),
        }
    }

    /// Record one case.
    pub fn check(&mut self, name: &str, r: Result<(), String>) {
        self.cases += 1;
        if let Err(e) = r {
            eprintln!("FAIL {}::{}: {name}: {e}", self.suite, self.test);
            self.failures.push(format!("{name}: {e}"));
        }
    }

    /// Record `n` cases that passed (e.g. verified operations).
    pub fn passed(&mut self, n: u64) {
        self.cases += n;
    }

    pub fn ok(&mut self, name: &str, cond: bool, detail: impl FnOnce() -> String) {
        self.check(name, if cond { Ok(()) } else { Err(detail()) });
    }

    pub fn failed(&self) -> usize {
        self.failures.len()
    }

    /// Print the summary and fail if anything failed.
    pub fn finish(self) {
        let line = format!(
            "RELIABILITY suite={} test={} cases={} passed={} failed={}",
            self.suite,
            self.test,
            self.cases,
            self.cases - self.failures.len() as u64,
            self.failures.len()
        );
        println!("{line}");
        if let Ok(p) = std::env::var("LAYERFS_REL_REPORT")
            && let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(p)
        {
            let _ = writeln!(f, "{line}");
        }
        assert!(
            self.failures.is_empty(),
            "{}::{}: {} of {} cases failed:\n{}",
            self.suite,
            self.test,
            self.failures.len(),
            self.cases,
            self.failures.join("\n")
        );
    }
}
