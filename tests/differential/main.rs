//! The differential tests: random lower stacks and random operation sequences applied to
//! the kernel's overlayfs and to layerfs, which must agree on every result and on the
//! trees they leave (`diff_ops` is the operation model), and the cases they once found.

mod core_driver;
mod diff_ops;
mod proptest;
mod regressions;
