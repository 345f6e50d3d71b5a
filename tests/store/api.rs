//! The store's Rust API as the mount and container code will use it: layer dirs for a
//! mount (top first), adding a layer from a tar stream and an image from it (commit).

use std::fs;

use layerfs::store::extract::ExtractOptions;
use layerfs::store::import::Quiet;
use layerfs::store::{ContainerUse, Digest, ImportOptions, Store};

use support::images::*;
use support::samples::*;
use support::xattr::*;

#[test]
fn layer_dirs_are_top_first() {
    let t = tempfile::tempdir().unwrap();
    let (a, _) = sample_pair();
    let src = t.path().join("a");
    write_oci_layout(&src, &[(&a, Some("a:1"))], false);
    let store = Store::open(&t.path().join("store")).unwrap();
    let res = store
        .import(&src, &ImportOptions::default(), &Quiet)
        .unwrap();
    assert_eq!(res.layers_extracted, 2);
    let rec = store.image("a:1").unwrap();
    let dirs = store.layer_dirs(&rec).unwrap();
    assert_eq!(dirs.len(), 2);
    assert!(dirs[0].join("app/one").is_file(), "top layer first");
    assert!(dirs[1].join("etc/os-release").is_file());
    // A missing layer is named.
    fs::remove_dir_all(dirs[0].parent().unwrap()).unwrap();
    let err = store.layer_dirs(&rec).unwrap_err().to_string();
    assert!(
        err.contains(&a.layers[1].diff_id) && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn commit_a_layer_and_an_image() {
    let t = tempfile::tempdir().unwrap();
    let (a, _) = sample_pair();
    let src = t.path().join("a");
    write_oci_layout(&src, &[(&a, Some("a:1"))], false);
    let store = Store::open(&t.path().join("store")).unwrap();
    store
        .import(&src, &ImportOptions::default(), &Quiet)
        .unwrap();
    let base = store.image("a:1").unwrap();

    // A container's changes as a tar stream.
    let tar = LayerBuilder::new()
        .dir("app", 0o755)
        .file("app/new", b"committed")
        .build();
    let layer = store
        .add_layer_tar(std::io::Cursor::new(tar.clone()))
        .unwrap();
    assert_eq!(layer.diff_id.to_string(), sha(&tar));
    assert_eq!(layer.blob, layer.diff_id);
    assert_eq!(
        fs::read(store.layer_dir(&layer.diff_id).join("app/new")).unwrap(),
        b"committed"
    );
    // Adding the same layer again writes nothing new.
    let again = store.add_layer_tar(std::io::Cursor::new(tar)).unwrap();
    assert_eq!(again, layer);

    // The new image: the base's config with one more diff-id.
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&store.read_blob(&base.config_digest).unwrap()).unwrap();
    cfg["rootfs"]["diff_ids"]
        .as_array_mut()
        .unwrap()
        .push(layer.diff_id.to_string().into());
    let cfg = serde_json::to_vec(&cfg).unwrap();
    let mut layers: Vec<serde_json::Value> = base
        .layers
        .iter()
        .map(|l| serde_json::json!({"mediaType": l.media_type, "digest": l.blob.to_string(), "size": l.blob_size}))
        .collect();
    layers.push(serde_json::json!({"mediaType": layer.media_type, "digest": layer.blob.to_string(), "size": layer.blob_size}));
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&cfg), "size": cfg.len()},
        "layers": layers,
    }))
    .unwrap();
    let rec = store
        .add_image(&manifest, &cfg, &["committed:1".into()])
        .unwrap();
    assert_eq!(rec.tags, vec!["committed:1".to_string()]);
    assert_eq!(rec.layers.len(), 3);
    let dirs = store
        .layer_dirs(&store.image("committed:1").unwrap())
        .unwrap();
    assert!(dirs[0].join("app/new").is_file());

    // A manifest naming a layer the store lacks is refused.
    let bogus = String::from_utf8(manifest)
        .unwrap()
        .replace(&layer.blob.hex(), &Digest::of(b"nope").hex());
    assert!(store.add_image(bogus.as_bytes(), &cfg, &[]).is_err());

    // rmi keeps what a container still mounts.
    let users = vec![ContainerUse {
        name: "c1".into(),
        image: Some(rec.id),
        layers: rec.layers.iter().map(|l| l.diff_id).collect(),
        size: 0,
    }];
    let err = store
        .remove_images(&["committed:1".into()], false, &users)
        .unwrap_err();
    assert!(err.to_string().contains("used by container c1"), "{err}");
    store
        .remove_images(&["committed:1".into()], true, &users)
        .unwrap();
    assert!(store.layer_dir(&layer.diff_id).exists());
    let df = store.df(&users).unwrap();
    assert_eq!(df.container_totals.total, 1);
    assert_eq!(df.layer_totals.reclaimable, 0, "everything is still in use");
}

#[test]
fn unprivileged_extraction_keeps_oci_whiteouts() {
    let t = tempfile::tempdir().unwrap();
    let tar = LayerBuilder::new()
        .whiteout("gone")
        .dir("opq", 0o755)
        .opaque("opq")
        .file("opq/x", b"x")
        .build();
    let p = t.path().join("l.tar");
    fs::write(&p, &tar).unwrap();
    let mut store = Store::open(&t.path().join("store")).unwrap();
    store.set_extract_options(ExtractOptions::for_store(false));
    store.import(&p, &ImportOptions::default(), &Quiet).unwrap();
    let d = store.layer_dir(&sha(&tar).parse().unwrap());
    assert!(d.join(".wh.gone").is_file());
    assert!(d.join("opq/.wh..wh..opq").is_file());
    assert!(!xattrs(&d.join("opq")).contains_key("trusted.overlay.opaque"));
}
