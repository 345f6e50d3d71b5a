//! The snapshots API straight on `layerfs snapshotter`'s socket, with no containerd in
//! between (containerd answers most bad requests from its own records before a
//! snapshotter sees them): every refusal carries the gRPC code containerd turns back
//! into its own errors and changes nothing, and a `Prepare` that names a chain the store
//! has (`containerd.io/snapshot.ref`, as CRI sends it) is answered "already exists" with
//! a committed snapshot on the store's layer, found by a walk as containerd looks for it.
//! The kernel overlay mount type needs no mount of the snapshotter's own, so this runs
//! unprivileged too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use containerd_snapshots::api::snapshots::v1::snapshots_client::SnapshotsClient;
use containerd_snapshots::api::snapshots::v1::*;
use containerd_snapshots::tonic::transport::{Channel, Endpoint, Uri};
use containerd_snapshots::tonic::{Code, Request, Response, Status};
use support::cli;
use support::containerd::Snapshotter;
use support::images::{Comp, Layer, LayerBuilder, hex_of, image, sha, write_docker_archive};

const REF: &str = "containerd.io/snapshot.ref";
/// The snapshotter name requests carry (a proxy plugin's own name; ignored by it).
const SN: &str = "layerfs";

/// A snapshot as a walk shows it: name, kind, parent, labels (sorted).
type Listed = (String, i32, String, Vec<(String, String)>);

struct Api {
    rt: tokio::runtime::Runtime,
    client: SnapshotsClient<Channel>,
}

impl Api {
    fn connect(socket: &Path) -> Api {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let socket: PathBuf = socket.to_path_buf();
        let client = rt.block_on(async move {
            let ch = Endpoint::try_from("http://[::1]:1")
                .unwrap()
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    tokio::net::UnixStream::connect(socket.clone())
                }))
                .await
                .expect("connecting to the snapshotter");
            SnapshotsClient::new(ch)
        });
        Api { rt, client }
    }

    /// One call: the answer, or the gRPC code of the refusal.
    fn call<T, F>(&mut self, f: impl FnOnce(SnapshotsClient<Channel>) -> F) -> Result<T, Code>
    where
        F: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        self.rt
            .block_on(f(self.client.clone()))
            .map(Response::into_inner)
            .map_err(|s| s.code())
    }

    fn prepare(
        &mut self,
        key: &str,
        parent: &str,
        labels: &[(&str, &str)],
    ) -> Result<Vec<containerd_snapshots::api::types::Mount>, Code> {
        let req = PrepareSnapshotRequest {
            snapshotter: SN.into(),
            key: key.into(),
            parent: parent.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        self.call(|mut c| async move { c.prepare(req).await })
            .map(|r| r.mounts)
    }

    fn view(&mut self, key: &str, parent: &str) -> Result<(), Code> {
        let (key, parent) = (key.into(), parent.into());
        let req = ViewSnapshotRequest {
            snapshotter: SN.into(),
            key,
            parent,
            labels: HashMap::new(),
        };
        self.call(|mut c| async move { c.view(req).await })
            .map(drop)
    }

    fn commit(&mut self, name: &str, key: &str) -> Result<(), Code> {
        let (name, key) = (name.into(), key.into());
        let req = CommitSnapshotRequest {
            snapshotter: SN.into(),
            name,
            key,
            labels: HashMap::new(),
        };
        self.call(|mut c| async move { c.commit(req).await })
    }

    fn remove(&mut self, key: &str) -> Result<(), Code> {
        let req = RemoveSnapshotRequest {
            snapshotter: SN.into(),
            key: key.into(),
        };
        self.call(|mut c| async move { c.remove(req).await })
    }

    fn stat(&mut self, key: &str) -> Result<Info, Code> {
        let req = StatSnapshotRequest {
            snapshotter: SN.into(),
            key: key.into(),
        };
        self.call(|mut c| async move { c.stat(req).await })
            .map(|r| r.info.expect("stat answers an info"))
    }

    fn mounts(&mut self, key: &str) -> Result<(), Code> {
        let req = MountsRequest {
            snapshotter: SN.into(),
            key: key.into(),
        };
        self.call(|mut c| async move { c.mounts(req).await })
            .map(drop)
    }

    fn usage(&mut self, key: &str) -> Result<UsageResponse, Code> {
        let req = UsageRequest {
            snapshotter: SN.into(),
            key: key.into(),
        };
        self.call(|mut c| async move { c.usage(req).await })
    }

    fn update_field(&mut self, key: &str, path: &str) -> Result<(), Code> {
        let req = UpdateSnapshotRequest {
            snapshotter: SN.into(),
            info: Some(Info {
                name: key.into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![path.into()],
            }),
        };
        self.call(|mut c| async move { c.update(req).await })
            .map(drop)
    }

    /// Every snapshot (a walk), by name, with kind, parent and labels.
    fn list(&mut self) -> Vec<Listed> {
        let req = ListSnapshotsRequest {
            snapshotter: SN.into(),
            filters: Vec::new(),
        };
        let c = &mut self.client;
        self.rt.block_on(async {
            let mut stream = c.list(Request::new(req)).await.unwrap().into_inner();
            let mut out = Vec::new();
            while let Some(m) = stream.message().await.unwrap() {
                for i in m.info {
                    let mut labels: Vec<(String, String)> = i.labels.into_iter().collect();
                    labels.sort();
                    out.push((i.name, i.kind, i.parent, labels));
                }
            }
            out.sort();
            out
        })
    }

    fn cleanup(&mut self) {
        let req = CleanupRequest {
            snapshotter: SN.into(),
        };
        self.call(|mut c| async move { c.cleanup(req).await })
            .unwrap();
    }
}

#[test]
fn refusals_carry_containerds_codes_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let snap = Snapshotter::start(
        &dir.path().join("s"),
        &dir.path().join("store"),
        Some("overlay"),
    );
    let mut api = Api::connect(&snap.socket);

    let m = api.prepare("a", "", &[]).unwrap();
    assert_eq!(m[0].r#type, "bind");
    std::fs::write(Path::new(&m[0].source).join("f"), b"x").unwrap();
    api.commit("A", "a").unwrap();
    api.view("v", "A").unwrap();
    api.prepare("w", "A", &[]).unwrap();
    let before = api.list();
    assert_eq!(before.len(), 3, "{before:?}");

    let refusals: Vec<(&str, Result<(), Code>, Code)> = vec![
        (
            "prepare of a taken key",
            api.prepare("w", "A", &[]).map(|_| ()),
            Code::AlreadyExists,
        ),
        (
            "view of a taken key",
            api.view("v", "A"),
            Code::AlreadyExists,
        ),
        (
            "prepare on a missing parent",
            api.prepare("x", "nope", &[]).map(|_| ()),
            Code::NotFound,
        ),
        (
            "prepare on an active parent",
            api.prepare("x", "w", &[]).map(|_| ()),
            Code::InvalidArgument,
        ),
        (
            "prepare with no key",
            api.prepare("", "A", &[]).map(|_| ()),
            Code::InvalidArgument,
        ),
        (
            "commit of a view",
            api.commit("V", "v"),
            Code::FailedPrecondition,
        ),
        (
            "commit of a committed snapshot",
            api.commit("A2", "A"),
            Code::FailedPrecondition,
        ),
        (
            "commit to a taken name",
            api.commit("A", "w"),
            Code::AlreadyExists,
        ),
        (
            "commit of a missing key",
            api.commit("N", "nope"),
            Code::NotFound,
        ),
        (
            "remove of a snapshot with children",
            api.remove("A"),
            Code::FailedPrecondition,
        ),
        (
            "remove of a missing key",
            api.remove("nope"),
            Code::NotFound,
        ),
        (
            "stat of a missing key",
            api.stat("nope").map(|_| ()),
            Code::NotFound,
        ),
        (
            "mounts of a committed snapshot",
            api.mounts("A"),
            Code::FailedPrecondition,
        ),
        (
            "mounts of a missing key",
            api.mounts("nope"),
            Code::NotFound,
        ),
        (
            "usage of a missing key",
            api.usage("nope").map(|_| ()),
            Code::NotFound,
        ),
        (
            "update of the parent",
            api.update_field("w", "parent"),
            Code::InvalidArgument,
        ),
        (
            "update of a missing key",
            api.update_field("nope", "labels.x"),
            Code::NotFound,
        ),
    ];
    let wrong: Vec<String> = refusals
        .into_iter()
        .filter(|(_, got, want)| *got != Err(*want))
        .map(|(what, got, want)| format!("{what}: got {got:?}, want {want:?}"))
        .collect();
    assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
    assert_eq!(api.list(), before, "a refused request changed something");

    // And in order, everything goes.
    api.remove("w").unwrap();
    api.remove("v").unwrap();
    api.remove("A").unwrap();
    assert!(api.list().is_empty());
    api.cleanup();
    let left: Vec<_> = std::fs::read_dir(dir.path().join("store/snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<u64>().is_ok())
        .collect();
    assert!(left.is_empty(), "snapshot dirs left: {left:?}");
}

#[test]
fn a_chain_the_store_has_is_not_unpacked() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // An image with two layers in the layerfs store.
    let l1 = LayerBuilder::new()
        .dir("etc", 0o755)
        .file("etc/one", b"first layer\n")
        .build();
    let l2 = LayerBuilder::new()
        .file("etc/two", b"second layer\n")
        .build();
    let (d1, d2) = (sha(&l1), sha(&l2));
    let img = image(vec![Layer::new(l1, Comp::Gzip), Layer::new(l2, Comp::Gzip)]);
    let archive = dir.path().join("img.tar");
    write_docker_archive(&archive, &[(&img, &["two:1"])]);
    cli::ok(&store, &["import", archive.to_str().unwrap()]);
    let c1 = d1.clone();
    let c2 = sha(format!("{c1} {d2}").as_bytes());

    let snap = Snapshotter::start(&dir.path().join("s"), &store, Some("overlay"));
    let mut api = Api::connect(&snap.socket);
    // As containerd's unpacker asks: a fresh key, the chain id as the target.
    let got = api.prepare("ns/1/extract-1 x", "", &[(REF, &c1)]);
    assert_eq!(got.map(|_| ()), Err(Code::AlreadyExists));
    // containerd then walks for a committed snapshot with that label and parent "".
    let l = api.list();
    let first = l
        .iter()
        .find(|(_, kind, parent, labels)| {
            *kind == Kind::Committed as i32
                && parent.is_empty()
                && labels.iter().any(|(k, v)| k == REF && *v == c1)
        })
        .unwrap_or_else(|| panic!("no committed snapshot for {c1}: {l:?}"))
        .0
        .clone();
    // The next layer, on the name containerd then records for the first.
    let got = api.prepare("ns/3/extract-2 y", &first, &[(REF, &c2)]);
    assert_eq!(got.map(|_| ()), Err(Code::AlreadyExists));
    let top = api
        .list()
        .into_iter()
        .find(|(_, _, parent, _)| *parent == first)
        .expect("the second layer's snapshot")
        .0;
    assert!(
        api.stat("ns/1/extract-1 x").is_err(),
        "no active snapshot was left"
    );

    // A container on it stands on the store's layer dirs; nothing was unpacked.
    let m = api.prepare("c", &top, &[]).unwrap();
    let opts = m[0].options.join(",");
    let layers = store.join("layers/sha256");
    let want = format!(
        "lowerdir={}:{}",
        layers.join(hex_of(&d2)).join("diff").display(),
        layers.join(hex_of(&d1)).join("diff").display()
    );
    assert!(opts.contains(&want), "{opts}\nwant {want}");
    assert!(api.usage(&top).unwrap().size > 0);
    // The store keeps those layers while the snapshots stand on them.
    cli::ok(&store, &["rmi", "two:1"]);
    assert!(layers.join(hex_of(&d1)).join("diff/etc/one").exists());
    assert!(layers.join(hex_of(&d2)).join("diff/etc/two").exists());
}
