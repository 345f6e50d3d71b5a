//! The store through its library API and the `layerfs` command: imports of every source
//! form, bad input refused with one line and the store left as it was, and the store's
//! safety under concurrent and killed commands. Most run as a normal user.

mod api;
mod bad_input;
mod file_store;
mod import;
mod safety;
