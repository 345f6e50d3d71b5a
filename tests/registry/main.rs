//! Pull and push against a real registry on 127.0.0.1, through a counting and
//! fault-injecting proxy.

mod common;
mod estargz;
mod faults;
mod pull_push;
mod zstd_chunked;
