//! Containers as users drive them: create, mount, `ps`, `rm`, isolation between
//! containers of one image, `diff`, `commit`, `save`/`export`, `shell`, and fifty at once.

mod commit;
mod diff;
mod image_mount;
mod isolation;
mod lifecycle;
mod many;
mod save;
mod shell;
