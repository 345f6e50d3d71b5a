//! Cases the differential proptest (`proptest.rs`) found, kept as fixed tests: each
//! runs the same operations on the kernel's overlayfs and on layerfs and compares every
//! result, the tree, the tree after a remount, and the kernel's view of layerfs's upper.

use crate::diff_ops::*;

fn file(data: LData, mode: u32, owner: usize, xattr: bool) -> LEnt {
    LEnt::File {
        data,
        mode,
        owner,
        xattr,
    }
}

fn run(layers: Vec<LayerSpec>, form: Form, ops: Vec<Op>) {
    let c = Case { layers, form, ops };
    if let Err(e) = run_case(&c) {
        panic!("{e}\ncase: {c:?}");
    }
}

/// A 0/0 character device is a whiteout in the upper dir: creating one through the mount
/// must fail (EPERM, as with the kernel) instead of hiding the name.
#[test]
fn mknod_whiteout_device_is_refused() {
    if support::skip_unless_root() {
        return;
    }
    run(
        vec![base_layer()],
        Form::Kernel,
        vec![
            Op::Mknod {
                p: "c",
                kind: NodeKind::Chr00,
                mode: 0o644,
            },
            Op::Mknod {
                p: "a",
                kind: NodeKind::Chr00,
                mode: 0o644,
            },
            Op::Stat("a"),
            Op::List(""),
        ],
    );
}

/// Renaming one name of a lower hard link over another file: the copy-up must link the
/// file's other visible name (`d/a`) too, or it keeps showing the lower file.
#[test]
fn copy_up_links_other_names_of_a_lower_hard_link() {
    if support::skip_unless_root() {
        return;
    }
    run(
        vec![base_layer()],
        Form::Kernel,
        vec![
            Op::Rename {
                from: "e/b",
                to: "a",
                how: RenameHow::Plain,
            },
            Op::Write {
                p: "a",
                off: 0,
                data: Data::Hello,
            },
            Op::Read("d/a"),
        ],
    );
    // The other name hidden by a higher layer: only the visible names are linked.
    run(
        vec![
            vec![("d", file(LData::Empty, 0o644, 0, false))],
            base_layer(),
        ],
        Form::Kernel,
        vec![Op::Rename {
            from: "e/b",
            to: "a",
            how: RenameHow::Plain,
        }],
    );
}

/// Replacing one name of a lower hard link: the other name's link count goes down.
#[test]
fn rename_over_a_lower_hard_link_drops_its_count() {
    if support::skip_unless_root() {
        return;
    }
    run(
        vec![base_layer()],
        Form::Kernel,
        vec![Op::Rename {
            from: "a",
            to: "d/a",
            how: RenameHow::Plain,
        }],
    );
    run(
        vec![base_layer()],
        Form::Oci,
        vec![Op::Unlink("e/b"), Op::Stat("d/a")],
    );
}

/// A renamed lower dir is found again after a remount through its redirect, which must
/// not reach past an OCI whiteout of the old name in a middle layer.
#[test]
fn redirect_stops_at_a_whiteout_on_the_way() {
    if support::skip_unless_root() {
        return;
    }
    for form in [Form::Oci, Form::Kernel] {
        run(
            vec![
                vec![("e/a", file(LData::Empty, 0o644, 0, false))],
                vec![("e", LEnt::Whiteout)],
                base_layer(),
            ],
            form,
            vec![Op::Rename {
                from: "e",
                to: "d/b",
                how: RenameHow::Plain,
            }],
        );
        // Opaque middle dir above the renamed one: nothing below it may merge in.
        run(
            vec![
                vec![("d/e/c", file(LData::Small, 0o644, 0, false))],
                vec![
                    (
                        "d",
                        LEnt::Dir {
                            opaque: true,
                            mode: 0o755,
                        },
                    ),
                    ("d/e/a", file(LData::Empty, 0o600, 1, false)),
                ],
                base_layer(),
            ],
            form,
            vec![
                Op::Rename {
                    from: "d/e",
                    to: "c",
                    how: RenameHow::Plain,
                },
                Op::List("c"),
            ],
        );
    }
}

/// The other name of a lower hard link sits in a renamed lower dir: copy-up must find it
/// at its new path (through the redirect) and link it too.
#[test]
fn copy_up_links_names_in_renamed_dirs() {
    if support::skip_unless_root() {
        return;
    }
    run(
        vec![base_layer()],
        Form::Kernel,
        vec![
            Op::Rename {
                from: "e",
                to: "a",
                how: RenameHow::Exchange,
            },
            Op::Unlink("d/a"),
        ],
    );
    run(
        vec![base_layer()],
        Form::Oci,
        vec![
            Op::Rename {
                from: "d",
                to: "c",
                how: RenameHow::Plain,
            },
            Op::Rename {
                from: "e",
                to: "c/e/e",
                how: RenameHow::Plain,
            },
            Op::Write {
                p: "c/a",
                off: 3,
                data: Data::X,
            },
            Op::Read("c/e/e/b"),
        ],
    );
}

/// The kernel caches attributes of lower-only objects for long; a copy-up that changes
/// them as a side effect (a directory becomes merged when a file in it is written, the
/// names of a lower hard link are relinked) must not leave it showing stale link counts.
#[test]
fn copy_up_side_effects_leave_no_stale_link_counts() {
    if support::skip_unless_root() {
        return;
    }
    run(
        vec![base_layer()],
        Form::Kernel,
        vec![
            Op::List(""),
            Op::Write {
                p: "e/a",
                off: 0,
                data: Data::X,
            },
        ],
    );
    run(
        vec![base_layer()],
        Form::Kernel,
        vec![
            Op::List("d"),
            Op::List("e"),
            Op::Stat("d/a"),
            Op::Write {
                p: "e/b",
                off: 0,
                data: Data::X,
            },
            Op::Unlink("d/a"),
        ],
    );
}
