//! Property-based differential test: random lower stacks and random operation sequences
//! run on the kernel's overlayfs and on layerfs; every result, the final tree, the tree
//! after a remount, and the kernel's view of layerfs's upper dir must match.
//!
//! CI runs a fixed number of cases from a fixed seed. More on demand:
//! `LAYERFS_PROPTEST_CASES=5000 cargo test --release --test differential proptest::`, and another
//! seed with `LAYERFS_PROPTEST_SEED=N`.

use crate::diff_ops::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use support::rng::env_u64;

#[test]
fn random_operations_match_kernel() {
    if support::skip_unless_root() {
        return;
    }
    let cases = env_u64("LAYERFS_PROPTEST_CASES", 60) as u32;
    let seed = env_u64("LAYERFS_PROPTEST_SEED", 0x001a_7ef5);
    let config = Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 4000,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&case(), |c| run_case(&c).map_err(TestCaseError::fail));
    if let Err(e) = result {
        panic!("{e}");
    }
}
