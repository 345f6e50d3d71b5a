//! Property-based differential test: random lower stacks and random operation sequences
//! run on the kernel's overlayfs and on layerfs; every result, the final tree, the tree
//! after a remount, and the kernel's view of layerfs's upper dir must match.
//!
//! CI runs a fixed number of cases from a fixed seed. More on demand:
//! `LAYERFS_PROPTEST_CASES=5000 cargo test --release --test differential proptest::`, and another
//! seed with `LAYERFS_PROPTEST_SEED=N`.

use crate::diff_ops::*;

#[test]
fn random_operations_match_kernel() {
    if support::skip_unless_root() {
        return;
    }
    crate::run_fixed(
        ("LAYERFS_PROPTEST_CASES", 60),
        ("LAYERFS_PROPTEST_SEED", 0x001a_7ef5),
        case(),
        run_case,
    );
}
