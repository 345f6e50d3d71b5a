//! The reliability suites at their CI size (`scripts/reliability` runs them at full
//! size, one module at a time): fsx, concurrency, crashes of the daemon (at random
//! moments, and at each system call of one request) and of store commands, resource
//! exhaustion, security, unmounting, hostile images, pjdfstest.
//! Sizes come from the `LAYERFS_*` variables each module names.

mod concurrency;
mod crash;
mod crash_points;
mod exhaustion;
mod fsx;
mod hostile;
mod pjdfstest;
mod security;
mod store_crash;
mod unmount;
