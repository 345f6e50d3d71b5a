//! Containers as users drive them: create, mount, `ps`, `rm`, isolation between
//! containers of one image, `diff`, `commit`, `save`/`export`, `shell`, fifty at once, and
//! podman running containers on layerfs as its `mount_program`.

mod commit;
mod diff;
mod file_store;
mod image_mount;
mod isolation;
mod lifecycle;
mod many;
mod podman;
mod save;
mod shell;
