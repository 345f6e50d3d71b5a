//! The differential tests: random lower stacks and random operation sequences applied to
//! the kernel's overlayfs and to layerfs, which must agree on every result and on the
//! trees they leave (`diff_ops` is the operation model), and the cases they once found.

mod core_driver;
mod diff_ops;
mod proptest;
mod regressions;

use ::proptest::strategy::Strategy;
use ::proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use support::rng::env_u64;

/// Check `cases` random cases of `strategy` from a fixed seed, both read from the
/// environment (`CASES_VAR`, `SEED_VAR`) so that a failure reruns exactly; a failure is
/// shrunk before it is reported.
fn run_fixed<S: Strategy>(
    (cases_var, cases): (&str, u64),
    (seed_var, seed): (&str, u64),
    strategy: S,
    check: impl Fn(&S::Value) -> Result<(), String>,
) {
    let config = Config {
        cases: env_u64(cases_var, cases) as u32,
        rng_seed: RngSeed::Fixed(env_u64(seed_var, seed)),
        failure_persistence: None,
        max_shrink_iters: 4000,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    if let Err(e) = runner.run(&strategy, |c| check(&c).map_err(TestCaseError::fail)) {
        panic!("{e}");
    }
}
